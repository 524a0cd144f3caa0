"""vklib.deconv: forward model, metrics, baselines, the two priors, the loss and the two solvers (tiny inputs)."""
import math

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from vklib import deconv


def _kernel(k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(k, k, generator=g) ** 4
    return w / w.sum()


def _image(n=2, side=24, seed=0):
    """Smooth-ish test images in [0, 1] (random blocks, so they have edges)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, side // 4, side // 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="nearest")


# ----------------------------------------------------------------------------------------------- forward model
def test_blur_is_scipy_valid_convolution_shared_and_per_image():
    x = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    k = _kernel(5).double()
    out = deconv.blur(x, k)
    assert out.shape == (2, 3, 8, 6)
    ref = convolve2d(x[1, 2].numpy(), k.numpy(), mode="valid")
    assert np.abs(out[1, 2].numpy() - ref).max() < 1e-12
    ks = torch.stack([_kernel(3, 1), _kernel(3, 2)])[:, None].double()
    per = deconv.blur(x, ks)
    for i in range(2):
        assert np.abs(per[i, 0].numpy() - convolve2d(x[i, 0].numpy(), ks[i, 0].numpy(), mode="valid")).max() < 1e-12


def test_blur_errors():
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\)"):
        deconv.blur(torch.rand(4, 4), _kernel(3))
    with pytest.raises(ValueError, match="larger than the image"):
        deconv.blur(torch.rand(1, 1, 4, 4), _kernel(5))
    with pytest.raises(ValueError, match="does not match the image batch"):
        deconv.blur(torch.rand(2, 1, 8, 8), torch.rand(3, 1, 3, 3))
    with pytest.raises(ValueError, match="kernel must be"):
        deconv.blur(torch.rand(2, 1, 8, 8), torch.rand(2, 2, 3, 3))
    with pytest.raises(TypeError, match="kernel must be a tensor"):
        deconv.blur(torch.rand(1, 1, 8, 8), np.ones((3, 3)))


def test_pad_kernel_and_center_crop():
    k = _kernel(3)[None, None]
    p = deconv.pad_kernel(k, 7)
    assert p.shape == (1, 1, 7, 7) and torch.equal(p[0, 0, 2:5, 2:5], k[0, 0]) and torch.allclose(p.sum(), k.sum())
    x = torch.arange(36.0).view(1, 1, 6, 6)
    assert torch.equal(deconv.center_crop(x, 2), x[..., 2:4, 2:4])
    assert deconv.center_crop(x, 3, 5).shape == (1, 1, 3, 5)
    with pytest.raises(ValueError, match="even number"):
        deconv.pad_kernel(k, 6)
    with pytest.raises(ValueError, match="cannot centre"):
        deconv.pad_kernel(k, 1)
    with pytest.raises(ValueError, match="cannot crop"):
        deconv.center_crop(x, 7)


def test_make_problem_shapes_consistency_determinism_and_errors():
    imgs = _image(2, 32)
    kernels = [_kernel(5, 1)[None], _kernel(3, 2)[None]]
    p = deconv.make_problem(imgs, kernels, crop=16, noise_std=0.01, generator=torch.Generator().manual_seed(3))
    assert len(p) == 4 and p.y.shape == (4, 1, 16, 16) and p.latent.shape == (4, 1, 20, 20)
    assert p.kernels.shape == (4, 1, 5, 5) and p.kernel_sizes == [5, 3, 5, 3] and p.sharp.shape == (4, 1, 16, 16)
    assert torch.allclose(p.kernels.sum(dim=(1, 2, 3)), torch.ones(4))
    assert torch.equal(p.sharp, p.latent[..., 2:18, 2:18])
    noise = p.y - deconv.blur(p.latent, p.kernels)
    assert 0.005 < noise.std() < 0.015
    q = deconv.make_problem(imgs, kernels, crop=16, noise_std=0.01, generator=torch.Generator().manual_seed(3))
    assert torch.equal(p.y, q.y)
    assert deconv.make_problem(imgs, kernels).y.shape[-1] == 28  # crop=None: the largest that fits
    sub = p.subset([3, 0])
    assert sub.names == [p.names[3], p.names[0]] and torch.equal(sub.y[1], p.y[0])
    with pytest.raises(ValueError, match="crop=30 needs images of at least 34"):
        deconv.make_problem(imgs, kernels, crop=30)
    with pytest.raises(ValueError, match="odd side"):
        deconv.make_problem(imgs, [torch.ones(1, 4, 4) / 16])
    with pytest.raises(ValueError, match="noise_std"):
        deconv.make_problem(imgs, kernels, noise_std=-1)
    with pytest.raises(ValueError, match="grey images"):
        deconv.make_problem(torch.rand(2, 3, 32, 32), kernels)
    with pytest.raises(ValueError, match="at least one kernel"):
        deconv.make_problem(imgs, [])


def test_load_problem_uses_the_shipped_images_and_kernels():
    p = deconv.load_problem(["monarch", "cameraman"], ["k5"], crop=40, noise_std=0.01, seed=2)
    assert p.names == ["monarch/k5", "cameraman/k5"] and p.y.shape == (2, 1, 40, 40) and p.kernel_sizes == [13, 13]
    assert torch.equal(p.y, deconv.load_problem(["monarch", "cameraman"], ["k5"], crop=40, noise_std=0.01, seed=2).y)
    with pytest.raises(ValueError, match="unknown or no image name.*'lena'.*allowed: cameraman"):
        deconv.load_problem(["lena"], ["k1"], crop=40, noise_std=0.01)
    with pytest.raises(ValueError, match="unknown or no kernel name.*'k9'"):
        deconv.load_problem(["house"], ["k9"], crop=40, noise_std=0.01)
    with pytest.raises(ValueError, match="sequences of names"):
        deconv.load_problem("house", ["k1"], crop=40, noise_std=0.01)


# ----------------------------------------------------------------------------------------------- metrics
def _psnr_reference(est, ref, s):
    """Readable loop version of psnr_aligned for one image."""
    est = est.clamp(0, 1)
    h, w = ref.shape[-2:]
    r = ref[..., s:h - s, s:w - s]
    best = None
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            e = est[..., s + dy:h - s + dy, s + dx:w - s + dx]
            mse = float(((e - r) ** 2).mean())
            if best is None or mse < best[0]:
                best = (mse, (dy, dx))
    return 10 * math.log10(1 / best[0]), best[1]


def test_psnr_aligned_matches_a_loop_and_recovers_a_shift():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 1, 20, 20, generator=g)
    est = (ref + 0.05 * torch.randn(ref.shape, generator=g))
    psnr, shift = deconv.psnr_aligned(est, ref, max_shift=2)
    assert psnr.shape == (3,) and shift.shape == (3, 2)
    for i in range(3):
        want, sh = _psnr_reference(est[i], ref[i], 2)
        assert abs(psnr[i].item() - want) < 1e-4 and tuple(shift[i].tolist()) == sh
    big = torch.rand(1, 1, 30, 30, generator=g)
    moved = big[..., 3:23, 1:21]          # est[i + dy, j + dx] == ref[i, j] with dy=-1, dx=1
    ref2 = big[..., 2:22, 2:22]
    psnr2, shift2 = deconv.psnr_aligned(moved, ref2, max_shift=2)
    assert shift2.tolist() == [[-1, 1]] and psnr2.item() > 100
    with pytest.raises(ValueError, match="one shape"):
        deconv.psnr_aligned(ref[:2], ref)
    with pytest.raises(ValueError, match="max_shift"):
        deconv.psnr_aligned(ref, ref, max_shift=10)


def test_ssim_aligned_matches_skimage_on_the_aligned_windows():
    from skimage.metrics import structural_similarity
    g = torch.Generator().manual_seed(1)
    ref = _image(2, 24)
    est = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    psnr, shift = deconv.psnr_aligned(est, ref, 2)
    ssim = deconv.ssim_aligned(est, ref, shift, 2)
    dy, dx = shift[1].tolist()
    want = structural_similarity(est[1, 0, 2 + dy:22 + dy, 2 + dx:22 + dx].double().numpy(),
                                 ref[1, 0, 2:22, 2:22].double().numpy(), data_range=1.0)
    assert ssim.shape == (2,) and abs(ssim[1].item() - want) < 1e-6
    assert torch.allclose(deconv.ssim_aligned(ref, ref, torch.zeros(2, 2, dtype=torch.long), 2), torch.ones(2))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        deconv.ssim_aligned(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.zeros(1, 2), 1)


def test_kernel_error_is_shift_invariant_and_matches_a_direct_formula():
    k = _kernel(5)[None, None]
    shifted = torch.zeros(1, 1, 9, 9)
    shifted[..., 1:6, 3:8] = k[0, 0]       # k moved by (-1, +1) inside a larger support
    assert deconv.kernel_error(shifted, k, max_shift=2).item() < 1e-6
    assert deconv.kernel_error(shifted, k, max_shift=0).item() > 0.5  # without alignment it is far off
    flat = torch.full((1, 1, 5, 5), 1 / 25)
    want = ((flat - k).norm() / k.norm()).item()  # centred, no better shift for a flat kernel of equal support
    assert abs(deconv.kernel_error(flat, k, max_shift=0).item() - want) < 1e-6
    assert deconv.kernel_error(flat, k, max_shift=2).item() <= want + 1e-6
    assert deconv.kernel_error(torch.cat([k, flat]), torch.cat([k, k]), 1).shape == (2,)
    with pytest.raises(ValueError, match="batch size"):
        deconv.kernel_error(torch.cat([k, k]), k)
    with pytest.raises(ValueError, match="max_shift"):
        deconv.kernel_error(k, k, max_shift=-1)


# ----------------------------------------------------------------------------------------------- baselines
def test_wiener_and_richardson_lucy_restore_a_blur():
    p = deconv.make_problem(_image(1, 40), [_kernel(5, 3)[None]], noise_std=0.005,
                            generator=torch.Generator().manual_seed(0))
    blurred = deconv.psnr_aligned(p.y, p.sharp, 2)[0]
    w = deconv.wiener(p.y, p.kernels, balance=0.01)
    r = deconv.richardson_lucy(p.y, p.kernels[0, 0], iterations=20)
    assert w.shape == r.shape == p.y.shape
    assert (deconv.psnr_aligned(w, p.sharp, 2)[0] > blurred + 1).all()
    assert (deconv.psnr_aligned(r, p.sharp, 2)[0] > blurred + 1).all()
    assert torch.equal(deconv.wiener(p.y, p.kernels, 0.01), w)  # deterministic
    with pytest.raises(ValueError, match="balance must be > 0"):
        deconv.wiener(p.y, p.kernels, balance=0)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        deconv.richardson_lucy(p.y, p.kernels, iterations=0)
    with pytest.raises(ValueError, match=r"y must be \(N, 1, H, W\)"):
        deconv.wiener(torch.rand(1, 3, 8, 8), p.kernels, 0.1)


# ----------------------------------------------------------------------------------------------- priors
@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (1, 1)])
def test_grouped_conv_equals_separate_convolutions(k, stride):
    torch.manual_seed(0)
    layer = deconv.GroupedConv2d(3, 2, 4, k, stride)
    x = torch.rand(3, 2, 8, 8)
    out = layer(x)
    assert out.shape == (3, 4, 8 // stride, 8 // stride)
    p = (k - 1) // 2
    for i in range(3):
        xi = torch.nn.functional.pad(x[i:i + 1], (p,) * 4, mode="reflect") if p else x[i:i + 1]
        want = torch.nn.functional.conv2d(xi, layer.weight[4 * i:4 * i + 4], layer.bias[4 * i:4 * i + 4], stride)
        assert torch.allclose(out[i:i + 1], want, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected \(3, 2, H, W\)"):
        layer(torch.rand(2, 2, 8, 8))


def test_image_prior_shapes_range_independence_and_errors():
    torch.manual_seed(0)
    net = deconv.ImagePrior(n=2, in_channels=3, channels=8, skip_channels=2, levels=2)
    z = torch.rand(2, 3, 16, 16)
    out = net(z)
    assert out.shape == (2, 1, 16, 16) and out.min() > 0 and out.max() < 1
    z2 = z.clone()
    z2[0] = torch.rand(3, 16, 16)  # changing problem 0's input leaves problem 1's output alone
    out2 = net(z2)
    assert torch.equal(out2[1], out[1]) and not torch.allclose(out2[0], out[0])
    out[1].sum().backward()  # and problem 1's output depends on none of problem 0's parameters
    w = net.head.weight.grad  # (n * out_channels, channels, 1, 1): row i is problem i's head
    assert w[0].abs().sum() == 0 and w[1].abs().sum() > 0
    assert deconv.ImagePrior(1, 2, 4, 0, 1, out_channels=3)(torch.rand(1, 2, 8, 8)).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels = 4"):
        net(torch.rand(2, 3, 18, 18))
    with pytest.raises(ValueError, match="must be >= 1"):
        deconv.ImagePrior(n=0)


def test_kernel_prior_is_a_softmax_mlp_per_problem():
    torch.manual_seed(0)
    net = deconv.KernelPrior(n=2, kernel_size=5, noise_dim=6, hidden=7)
    z = torch.rand(2, 6)
    k = net(z)
    assert k.shape == (2, 1, 5, 5) and (k >= 0).all()
    assert torch.allclose(k.sum(dim=(1, 2, 3)), torch.ones(2))
    for i in range(2):  # a readable per-problem MLP
        h = torch.clamp(z[i] @ net.w1[i] + net.b1[i, 0], 0, 6)
        want = torch.softmax(h @ net.w2[i] + net.b2[i, 0], dim=0).view(1, 5, 5)
        assert torch.allclose(k[i], want, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected z of shape \(2, 6\)"):
        net(torch.rand(2, 5))
    with pytest.raises(ValueError, match="must be >= 1"):
        deconv.KernelPrior(kernel_size=0)


# ----------------------------------------------------------------------------------------------- loss
def test_dikp_loss_matches_a_reference_and_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 9, 9, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 1, 7, 7, generator=g, dtype=torch.float64)
    loss = deconv.dikp_loss(x, k, y)
    for i in range(2):
        pred = convolve2d(x[i, 0].detach().numpy(), k[i, 0].detach().numpy(), mode="valid")
        assert abs(loss[i].item() - ((pred - y[i, 0].numpy()) ** 2).mean()) < 1e-12
    assert torch.autograd.gradcheck(lambda a, b: deconv.dikp_loss(a, b, y), (x, k))
    with pytest.raises(ValueError, match="larger than y by the kernel size - 1"):
        deconv.dikp_loss(x, k, torch.rand(2, 1, 9, 9, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------- solvers
TINY = dict(channels=4, skip_channels=2, levels=2, input_channels=2, eval_every=5, max_shift=1, device="cpu")


def _tiny_problem():
    return deconv.make_problem(_image(1, 24), [_kernel(3, 1)[None], _kernel(5, 2)[None]], crop=12, noise_std=0.01,
                               generator=torch.Generator().manual_seed(0))


def test_deconv_dip_shapes_learning_and_determinism():
    p = _tiny_problem()
    r = deconv.deconv_dip(p.y, p.kernels, x_true=p.sharp, iterations=12, lr_image=0.02, seed=1,
                          keep_snapshots=True, **TINY)
    assert r.image.shape == (2, 1, 16, 16) and r.restored.shape == (2, 1, 12, 12)
    assert torch.equal(r.kernel, p.kernels)
    assert r.loss.shape == (12, 2) and r.psnr.shape == (3, 2) and r.psnr_iters.tolist() == [5, 10, 12]
    assert r.snapshots.shape == (3, 2, 1, 12, 12) and r.kernel_snapshots is None
    assert (r.loss[-1] < r.loss[0]).all()
    again = deconv.deconv_dip(p.y, p.kernels, x_true=p.sharp, iterations=12, lr_image=0.02, seed=1, **TINY)
    assert torch.equal(again.image, r.image) and torch.equal(again.loss, r.loss)
    other = deconv.deconv_dip(p.y, p.kernels, iterations=12, lr_image=0.02, seed=2, **TINY)
    assert not torch.equal(other.image, r.image) and other.psnr.shape == (0, 2)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        deconv.deconv_dip(p.y, p.kernels, iterations=0, **TINY)
    with pytest.raises(ValueError, match="odd side"):
        deconv.deconv_dip(p.y, torch.ones(2, 1, 4, 4) / 16, iterations=1, **TINY)
    with pytest.raises(ValueError, match="x_true must be the sharp image aligned with y"):
        deconv.deconv_dip(p.y, p.kernels, x_true=p.latent, iterations=1, **TINY)
    with pytest.raises(ValueError, match="learning rates must be > 0"):
        deconv.deconv_dip(p.y, p.kernels, iterations=1, lr_image=0, **TINY)


def test_deconv_dikp_shapes_kernel_constraints_and_determinism():
    p = _tiny_problem()
    kw = dict(x_true=p.sharp, iterations=10, lr_image=0.02, lr_kernel=1e-3, kernel_noise_dim=8, kernel_hidden=16,
              seed=0, **TINY)
    r = deconv.deconv_dikp(p.y, 5, keep_snapshots=True, **kw)
    assert r.image.shape == (2, 1, 16, 16) and r.kernel.shape == (2, 1, 5, 5)
    assert (r.kernel >= 0).all() and torch.allclose(r.kernel.sum(dim=(1, 2, 3)), torch.ones(2))
    assert r.kernel_snapshots.shape == (2, 2, 1, 5, 5) and r.loss.shape == (10, 2)
    assert (r.loss[-1] < r.loss[0]).all()
    again = deconv.deconv_dikp(p.y, 5, **kw)
    assert torch.equal(again.kernel, r.kernel) and torch.equal(again.image, r.image)
    for bad in (4, 0, 2.0, True):
        with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
            deconv.deconv_dikp(p.y, bad, iterations=1, **TINY)
    with pytest.raises(ValueError, match="learning rates must be > 0"):
        deconv.deconv_dikp(p.y, 5, iterations=1, lr_kernel=0, **TINY)
    with pytest.raises(ValueError, match=r"y must be an \(N, C, H, W\) tensor"):
        deconv.deconv_dikp(p.y[0], 5, iterations=1, **TINY)


def test_profiles_and_paper_table():
    from vklib import results, utils
    assert set(deconv.PROFILES) == {"quick", "paper", "smoke"}
    assert set(deconv.PROFILES["quick"]) == set(deconv.PROFILES["paper"]) == set(deconv.PROFILES["smoke"])
    smoke, paper = deconv.PROFILES["smoke"], deconv.PROFILES["paper"]
    assert {k for k in paper if smoke[k] != paper[k]} == {"images", "kernels", "crop", "iterations_dip",
                                                          "iterations_dikp", "eval_every", "demo_crop",
                                                          "demo_iterations"}, "smoke only cuts counts and sizes"
    assert set(smoke["images"]) < set(paper["images"]) and set(smoke["kernels"]) < set(paper["kernels"])
    q = deconv.PROFILES["quick"]
    assert len(q["images"]) == 2 and len(q["kernels"]) == 2 and q["noise_std"] == 0.01
    assert "lena" not in deconv.PROFILES["paper"]["images"] and len(deconv.PROFILES["paper"]["kernels"]) == 8
    assert utils.resolve_profile(deconv.PROFILES, "quick", iterations_dip=7)["iterations_dip"] == 7
    # the paper's numbers (none while its tables are unread; notebook 03, section 6) are rows of
    # vklib/paper_numbers.csv on the scale the notebook records them: PSNRs in dB, SSIMs as fractions
    for row in results.paper_table():
        if row["notebook"] == "03_deep_image_kernel_priors":
            assert row["unit"] == ("dB" if row["metric"].startswith("psnr") else "fraction"), row
            if row["unit"] == "dB":
                assert 5.0 < row["value"] < 60.0, f"{row['metric']}={row['value']} is not a PSNR in dB"
