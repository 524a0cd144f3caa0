"""vklib.deconv: forward model, Levin alignment, metrics, baselines, the two priors and the terms (tiny inputs); the
worked solution of notebook 03's exercise."""

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
def _align_reference(est, ref, max_shift, step, border):
    """Levin et al.'s comp_upto_shift for one (H, W) image, written as in their MATLAB code: scipy's bilinear
    map_coordinates (MATLAB's interp2) at every shift of the grid, the smallest sum of squared differences."""
    from scipy.ndimage import map_coordinates
    e, r = est.double().clamp(0, 1).numpy(), ref.double().numpy()
    H, W = r.shape
    rw = r[border:H - border, border:W - border]
    gy, gx = np.mgrid[border:H - border, border:W - border].astype(np.float64)
    best = None
    for dy in np.arange(-max_shift, max_shift + step / 2, step):
        for dx in np.arange(-max_shift, max_shift + step / 2, step):
            t = map_coordinates(e, [gy + dy, gx + dx], order=1)
            ssd = ((t - rw) ** 2).sum()
            if best is None or ssd < best[0] - 1e-12:
                best = (ssd, (dy, dx), t)
    return best


def test_align_levin_matches_a_loop_and_recovers_subpixel_shifts():
    from scipy.ndimage import gaussian_filter, shift as nd_shift
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 1, 24, 24, generator=g)
    est = (ref + 0.1 * torch.randn(ref.shape, generator=g))
    aligned, rw, shift = deconv.align_levin(est, ref, max_shift=2, step=0.5, border=3)
    assert aligned.shape == rw.shape == (2, 1, 18, 18) and shift.shape == (2, 2)
    for i in range(2):
        ssd, sh, t = _align_reference(est[i, 0], ref[i, 0], 2, 0.5, 3)
        assert tuple(shift[i].tolist()) == sh and np.allclose(aligned[i, 0].numpy(), t, atol=1e-5)
        assert torch.equal(rw[i, 0], ref[i, 0, 3:21, 3:21])
    # a smooth image moved by a sub-pixel amount is found at that shift (Levin's grid: +-5 px, 0.25 px, 15 px border)
    smooth = np.stack([gaussian_filter(np.random.RandomState(i).rand(48, 48), 4) for i in range(2)])
    smooth = torch.from_numpy((smooth - smooth.min()) / (smooth.max() - smooth.min())).float()[:, None]
    moved = torch.from_numpy(np.stack([nd_shift(m[0].numpy(), (1.25, -2.5), order=3) for m in smooth]))[:, None]
    aligned, rw, shift = deconv.align_levin(moved, smooth)
    assert shift.tolist() == [[1.25, -2.5]] * 2 and (deconv.psnr(aligned, rw) > 45).all()
    with pytest.raises(ValueError, match="one shape"):
        deconv.align_levin(ref[:1], ref)
    with pytest.raises(ValueError, match="ceil\\(max_shift\\) <= border"):
        deconv.align_levin(ref, ref, max_shift=5, border=3)


def test_psnr_and_ssim_on_aligned_windows():
    from skimage.metrics import structural_similarity
    ref = _image(2, 24)
    est = (ref + 0.05 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    mse = ((est - ref) ** 2).flatten(1).mean(1)
    assert torch.allclose(deconv.psnr(est, ref), 10 * torch.log10(1 / mse))
    want = structural_similarity(est[1, 0].double().numpy(), ref[1, 0].double().numpy(), data_range=1.0)
    assert abs(deconv.ssim(est, ref)[1].item() - want) < 1e-6
    assert torch.allclose(deconv.ssim(ref, ref), torch.ones(2))
    with pytest.raises(ValueError, match=r"\(N, 1, h, w\)"):
        deconv.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


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
    score = lambda e: deconv.psnr(*deconv.align_levin(e, p.sharp, max_shift=2, step=1, border=2)[:2])
    blurred = score(p.y)
    w = deconv.wiener(p.y, p.kernels, balance=0.01)
    r = deconv.richardson_lucy(p.y, p.kernels[0, 0], iterations=20)
    assert w.shape == r.shape == p.y.shape
    assert (score(w) > blurred + 1).all() and (score(r) > blurred + 1).all()
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


# ----------------------------------------------------------------------------------------------- terms
def test_data_term_matches_a_reference_and_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 9, 9, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 1, 7, 7, generator=g, dtype=torch.float64)
    loss = deconv.data_term(x, k, y)
    for i in range(2):
        pred = convolve2d(x[i, 0].detach().numpy(), k[i, 0].detach().numpy(), mode="valid")
        assert abs(loss[i].item() - ((pred - y[i, 0].numpy()) ** 2).mean()) < 1e-12
    assert torch.autograd.gradcheck(lambda a, b: deconv.data_term(a, b, y), (x, k))
    with pytest.raises(ValueError, match="larger than y by the kernel size - 1"):
        deconv.data_term(x, k, torch.rand(2, 1, 9, 9, dtype=torch.float64))


def test_ssim_loss_matches_a_gaussian_window_reference():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert torch.allclose(deconv.ssim_loss(a, a), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    # reference: the same statistics with scipy's correlate, zero padding, 11 x 11 Gaussian (sigma 1.5)
    from scipy.ndimage import correlate
    t = np.exp(-(np.arange(11) - 5) ** 2 / (2 * 1.5 ** 2))
    w = np.outer(t, t) / t.sum() ** 2
    f = lambda im: correlate(im, w, mode="constant")
    for i in range(2):
        x, y = a[i, 0].numpy(), b[i, 0].numpy()
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        want = 1 - (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean()
        assert abs(deconv.ssim_loss(a, b)[i].item() - want) < 1e-10
    with pytest.raises(ValueError, match="one shape"):
        deconv.ssim_loss(a, b[:1])


def test_total_variation_kernel_sparsity_and_normalisation():
    x = torch.zeros(2, 1, 5, 5, dtype=torch.float64)
    x[1, 0, :, 2:] = 1.0                       # a vertical edge: |dx| = 1 on one column of the 4 x 4 grid
    tv = deconv.total_variation(x, eps=0.0)
    assert tv[0] == 0 and abs(tv[1].item() - 4 / 16) < 1e-12
    delta = torch.zeros(1, 1, 5, 5)
    delta[..., 2, 2] = 1
    flat = torch.full((1, 1, 5, 5), 1 / 25)
    sp = deconv.kernel_sparsity(torch.cat([delta, flat]), eps=0.0)
    assert torch.allclose(sp, torch.tensor([1.0, 25 * 0.2]))   # sum sqrt(k): 1 for a delta, 5 for flat 5 x 5
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\)"):
        deconv.kernel_sparsity(flat, p=1.0)
    k = torch.tensor([[[[-1.0, 1.0], [2.0, 1.0]]], [[[-1.0, -2.0], [0.0, 0.0]]]])
    nk = deconv.normalise_kernel(k)
    assert torch.allclose(nk[0], torch.tensor([[[0.0, 0.25], [0.5, 0.25]]]))
    assert torch.allclose(nk[1], torch.full((1, 2, 2), 0.25))  # no positive tap: uniform


def test_worked_solution_matches_total_variation():
    from vklib import course
    sol = course.solution("03_deep_image_kernel_priors")
    x = torch.rand(3, 2, 9, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.allclose(sol.total_variation(x), deconv.total_variation(x), atol=1e-12)
    assert torch.allclose(sol.total_variation(x, eps=0.1), deconv.total_variation(x, eps=0.1), atol=1e-12)


def test_concat_problems_keeps_the_order_and_checks_sizes():
    a = deconv.load_problem(["cameraman"], ["k5", "k4"], crop=32, noise_std=0.01, seed=0)
    b = deconv.load_problem(["cameraman"], ["k5", "k4"], crop=32, noise_std=0.01, seed=1)
    c = deconv.concat_problems([a, b])
    assert len(c) == 4 and c.names == a.names + b.names and torch.equal(c.y[2:], b.y)
    assert not torch.equal(c.y[:2], c.y[2:]) and torch.equal(c.sharp[:2], c.sharp[2:])  # noise differs per seed
    with pytest.raises(ValueError, match="differ in latent or kernel size"):
        deconv.concat_problems([a, deconv.load_problem(["cameraman"], ["k5"], crop=32, noise_std=0.01)])


def test_centre_kernel_rolls_the_centre_of_mass_to_the_middle_tap():
    k = torch.zeros(2, 1, 9, 9)
    k[0, 0, 1, 6] = 0.75                                     # mass centred at (1.25, 6) -> rolled by (-3, +2)
    k[0, 0, 2, 6] = 0.25
    k[1, 0, 3:6, 3:6] = 1 / 9                                # already centred
    k.requires_grad_(True)
    out = deconv.centre_kernel(k)
    assert out[0, 0, 4, 4] == 0.75 and out[0, 0, 5, 4] == 0.25   # centre of mass (4.25, 4) rounds to (4, 4)
    assert torch.equal(out[1], k[1].detach())
    assert torch.allclose(out.sum((1, 2, 3)), torch.ones(2))
    out[:, 0, 4, 4].sum().backward()                         # a permutation: the gradient lands on the moved taps
    assert k.grad[0, 0, 1, 6] == 1 and k.grad[1, 0, 4, 4] == 1 and k.grad.sum() == 2
