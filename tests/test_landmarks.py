"""vklib.landmarks: warps, the dense equivariance and DVE losses, SmallNet, the landmark regressor and metrics;
vklib.faces: the full datasets' readers; notebook 04's profiles and the worked solution of its exercise."""
import math

import numpy as np
import pytest
import torch

from nbcheck import run_cell
from vklib import course, data, faces, landmarks as L, models, results, utils


# ----------------------------------------------------------------------------------------------- references
def ref_matching_loss(f1, f2, g, stride=1, gamma=0.5, temperature=1.0, fa=None):
    """Loops over images and source cells: the equations as written."""
    B, C, h, w = f1.shape
    pos = [((j + 0.5) * stride - 0.5, (i + 0.5) * stride - 0.5) for i in range(h) for j in range(w)]
    pos = torch.tensor(pos, dtype=f1.dtype)
    total = 0.0
    for b in range(B):
        tgt = f2[b].reshape(C, -1)
        for i in range(h):
            for j in range(w):
                d = f1[b, :, i, j]
                if fa is not None:
                    aux = fa[b].reshape(C, -1)
                    d = (torch.softmax(d @ aux / temperature, 0)[None] * aux).sum(1)
                p = torch.softmax(d @ tgt / temperature, 0)
                cost = ((pos - g[b, i, j]) ** 2).sum(1).sqrt() ** gamma
                total = total + (p * cost).sum()
    return total / (B * h * w)


def tiny(B=2, C=3, h=3, w=4, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    f1, f2, fa = (torch.randn(B, C, h, w, generator=gen, dtype=dtype) for _ in range(3))
    g = torch.rand(B, h, w, 2, generator=gen, dtype=dtype) * torch.tensor([2 * w, 2 * h], dtype=dtype)
    return f1, f2, fa, g


# ----------------------------------------------------------------------------------------------- coordinates
def test_cell_centres():
    c = L.cell_centres(2, 3, 2)
    assert c.shape == (6, 2) and torch.equal(c[:4], torch.tensor([[0.5, 0.5], [2.5, 0.5], [4.5, 0.5], [0.5, 2.5]]))
    assert torch.equal(L.cell_centres(1, 2), torch.tensor([[0.0, 0.0], [1.0, 0.0]]))


def test_crop_border_shapes_landmarks_and_errors():
    x, lm = torch.rand(2, 3, 10, 12), torch.full((2, 5, 2), 4.0)
    out, lm2 = L.crop_border(x, 2, lm)
    assert out.shape == (2, 3, 6, 8) and torch.equal(out, x[..., 2:8, 2:10]) and torch.equal(lm2, lm - 2)
    assert L.crop_border(x, 0) is x
    with pytest.raises(ValueError, match="crop must be in"):
        L.crop_border(x, 5)


# ----------------------------------------------------------------------------------------------- warps
def test_tps_fit_matches_scipys_thin_plate_spline():
    from scipy.interpolate import RBFInterpolator
    gen = torch.Generator().manual_seed(0)
    centers = torch.rand(2, 9, 2, generator=gen, dtype=torch.float64) * 2 - 1
    targets = centers + 0.2 * torch.randn(2, 9, 2, generator=gen, dtype=torch.float64)
    warp = faces.TPSWarp(centers, *faces.tps_fit(centers, targets))
    pts = torch.rand(2, 20, 2, generator=gen, dtype=torch.float64) * 2 - 1
    for b in range(2):
        ref = RBFInterpolator(centers[b].numpy(), targets[b].numpy(), kernel="thin_plate_spline", degree=1)
        assert np.allclose(warp(pts)[b].numpy(), ref(pts[b].numpy()), atol=1e-9)
    assert torch.allclose(warp(centers), targets, atol=1e-9)


def test_random_tps_identity_determinism_and_errors():
    ident = faces.random_tps(2, rotation=0, scale=0, translation=0, tps=0, control=3)
    pts = torch.rand(2, 7, 2) * 2 - 1
    assert torch.allclose(ident(pts), pts, atol=1e-5)
    warp = faces.random_tps(3, generator=torch.Generator().manual_seed(1), control=4, tps=0.1)
    lin = torch.linspace(-1, 1, 4)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    assert torch.equal(warp.centers[0], torch.stack([xx, yy], -1).reshape(-1, 2))  # kernels on the control grid
    assert (warp(warp.centers) - warp.centers).abs().max() > 0.05  # ... which the warp moves
    again = faces.random_tps(3, generator=torch.Generator().manual_seed(1), control=4, tps=0.1)
    assert all(torch.equal(a, b) for a, b in zip(warp, again))
    assert warp.grid(5, 6).shape == (3, 5, 6, 2)
    for bad in (dict(n=0), dict(n=1, control=1), dict(n=1, tps=-0.1)):
        with pytest.raises(ValueError):
            faces.random_tps(**bad)


def test_identity_grid_reproduces_the_image():
    x = torch.rand(1, 3, 6, 5)
    ident = faces.random_tps(1, rotation=0, scale=0, translation=0, tps=0)
    out = torch.nn.functional.grid_sample(x, ident.grid(6, 5), align_corners=False)
    assert torch.allclose(out, x, atol=1e-4)


def ramp(n=2, size=24):
    """Images linear in x and y (bilinear sampling reproduces them exactly)."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    chans = torch.stack([xx / size, yy / size, (xx + yy) / (2 * size)])
    return chans.expand(n, -1, -1, -1).clone()


def test_warp_pair_shapes_identity_and_correspondence():
    x = ramp(3, 24)
    x1, x2, g = faces.warp_pair(x, rotation=0, scale=0, translation=0, tps=0, stride=2, crop=2)
    assert x1.shape == x2.shape == (3, 3, 20, 20) and g.shape == (3, 10, 10, 2)
    assert torch.allclose(x1, x[..., 2:22, 2:22], atol=1e-4) and torch.allclose(x2, x1, atol=1e-4)
    centres = L.cell_centres(10, 10, 2).reshape(10, 10, 2)
    assert torch.allclose(g, centres.expand(3, -1, -1, -1), atol=1e-3)
    # x2 sampled at g(u) shows what x1 shows at u: exactly for an affine warp of a linear image (bilinear
    # sampling is exact there), closely for a thin-plate spline
    for tps, tol in ((0.0, 1e-4), (0.03, 0.02)):
        gen = torch.Generator().manual_seed(0)
        x1, x2, g = faces.warp_pair(x, generator=gen, rotation=5, scale=0.05, translation=0.05, tps=tps)
        back = torch.nn.functional.grid_sample(x2, data.to_normalized(g, 24), align_corners=False)
        inside = ((g > 3) & (g < 20)).all(-1)
        assert inside.float().mean() > 0.3
        assert (back - x1).abs().permute(0, 2, 3, 1)[inside].max() < tol
        assert (x2 - x1).abs().mean() > 1e-3  # the two views differ


def test_warp_pair_is_deterministic_and_jitters_colours():
    x = torch.rand(2, 3, 16, 16)
    a = faces.warp_pair(x, generator=torch.Generator().manual_seed(3), color_jitter=0.3)
    b = faces.warp_pair(x, generator=torch.Generator().manual_seed(3), color_jitter=0.3)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert 0 <= float(a[0].min()) and float(a[0].max()) <= 1
    for bad in (dict(images=torch.rand(3, 8, 8)), dict(images=x, stride=0), dict(images=x, crop=8)):
        with pytest.raises(ValueError):
            faces.warp_pair(**bad)


# ----------------------------------------------------------------------------------------------- losses
def test_correspondence_cost_matches_brute_force():
    g = torch.tensor([[[0.5, 0.5], [3.0, 1.0]]])
    cost = L.correspondence_cost(g, 2, 2, stride=2, gamma=0.5)
    cells = torch.tensor([[0.5, 0.5], [2.5, 0.5], [0.5, 2.5], [2.5, 2.5]])
    want = torch.stack([((cells - p) ** 2).sum(1).sqrt().sqrt() for p in g[0]])[None]
    assert cost.shape == (1, 2, 4) and torch.allclose(cost, want, atol=1e-6)
    assert torch.allclose(L.correspondence_cost(g, 2, 2, stride=2, gamma=2.0), want ** 4, atol=1e-5)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        L.correspondence_cost(g, 2, 2, gamma=0)


@pytest.mark.parametrize("stride,temperature,gamma", [(1, 1.0, 0.5), (2, 0.5, 1.0)])
def test_equivariance_and_dve_losses_match_the_reference(stride, temperature, gamma):
    f1, f2, fa, g = tiny()
    kw = dict(stride=stride, temperature=temperature, gamma=gamma)
    eq = L.dense_equivariance_loss(f1, f2, g, **kw)
    assert eq.shape == () and torch.allclose(eq, ref_matching_loss(f1, f2, g, **kw), atol=1e-5)
    dve = L.dve_loss(f1, f2, fa, g, **kw)
    assert torch.allclose(dve, ref_matching_loss(f1, f2, g, fa=fa, **kw), atol=1e-5)
    rebuilt = L.exchange(f1, fa, temperature=temperature)
    assert torch.allclose(dve, L.dense_equivariance_loss(rebuilt, f2, g, **kw), atol=1e-5)


def test_losses_gradients_by_gradcheck():
    f1, f2, fa, g = tiny(B=1, C=2, h=2, w=3, dtype=torch.float64)
    for t in (f1, f2, fa):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: L.dense_equivariance_loss(a, b, g, stride=2), (f1, f2))
    assert torch.autograd.gradcheck(lambda a, b, c: L.dve_loss(a, b, c, g, stride=2), (f1, f2, fa))
    assert torch.autograd.gradcheck(lambda a, b, c: L.dve_loss(a, b, c, g, stride=2, chunk=4), (f1, f2, fa))


def test_chunked_losses_equal_the_batched_ones_with_gradients():
    f1, f2, fa, g = tiny(B=2, C=4, h=4, w=5)
    for fn, args in ((L.dense_equivariance_loss, (f1, f2)), (L.dve_loss, (f1, f2, fa))):
        leaves = [a.clone().requires_grad_(True) for a in args]
        full = fn(*leaves, g, stride=2)
        grads = torch.autograd.grad(full, leaves)
        leaves2 = [a.clone().requires_grad_(True) for a in args]
        part = fn(*leaves2, g, stride=2, chunk=7)
        grads2 = torch.autograd.grad(part, leaves2)
        assert torch.allclose(full, part, atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads2))


def test_perfect_descriptors_give_a_small_loss():
    # one-hot positional descriptors with a sharp softmax: p(v|u) concentrates on v = u = g(u)
    h = w = 4
    f = torch.eye(h * w).reshape(1, h * w, h, w) * 30
    g = L.cell_centres(h, w, 1).reshape(1, h, w, 2)
    assert L.dense_equivariance_loss(f, f, g).item() < 1e-3
    assert L.dense_equivariance_loss(f, f.flip(-1), g).item() > 0.5


def test_exchange_is_a_convex_combination_and_loss_errors():
    f1, _, fa, g = tiny()
    rebuilt = L.exchange(f1, fa)
    assert rebuilt.shape == f1.shape
    lo, hi = fa.amin(dim=(2, 3), keepdim=True), fa.amax(dim=(2, 3), keepdim=True)
    assert bool(((rebuilt >= lo - 1e-6) & (rebuilt <= hi + 1e-6)).all())
    with pytest.raises(ValueError, match="f1 and fa"):
        L.exchange(f1, fa[:, :2])
    with pytest.raises(ValueError, match="f1 and f2"):
        L.dense_equivariance_loss(f1, f1[:1], g)
    with pytest.raises(ValueError, match="g must be"):
        L.dense_equivariance_loss(f1, f1, g[:, :2])
    with pytest.raises(ValueError, match="fa must have"):
        L.dve_loss(f1, f1, fa[:1], g)
    with pytest.raises(ValueError, match="chunk must be"):
        L.dve_loss(f1, f1, fa, g, chunk=0)


# ----------------------------------------------------------------------------------------------- network
def test_smallnet_shapes_parameters_seed_and_errors():
    net = L.SmallNet(16)
    assert models.count_parameters(net) == 338_216  # DVE's README: 338.2k (SmallNet, 16 dims)
    assert models.count_parameters(L.SmallNet(3)) == 334_875  # and 334.9k at 3 dims
    # the released head: a plain 1x1 convolution (no BN, no activation); Xavier-normal weights, zero biases
    head = net.body[-1][-1]
    assert type(head) is torch.nn.Conv2d and head.kernel_size == (1, 1) and head.out_channels == 16
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 and all(float(c.bias.detach().abs().max()) == 0 for c in convs)
    for c in convs:
        fan_in, fan_out = c.weight[0].numel(), c.weight.shape[0] * c.weight[0, 0].numel()
        assert abs(float(c.weight.detach().std()) / math.sqrt(2 / (fan_in + fan_out)) - 1) < 0.1
    y = L.SmallNet(8, widths=(4, 4, 4, 4, 4), seed=0)(torch.rand(2, 3, 20, 20))
    assert float(y.detach().min()) < -0.05  # no final LeakyReLU: negative components are not shrunk
    small = L.SmallNet(8, widths=(4, 4, 4, 4, 4), seed=1)
    state = torch.get_rng_state()
    again = L.SmallNet(8, widths=(4, 4, 4, 4, 4), seed=1)
    assert torch.equal(state, torch.get_rng_state())  # a seeded net leaves the global RNG alone
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), again.state_dict().values()))
    assert small(torch.rand(2, 3, 20, 20)).shape == (2, 8, 10, 10) and small.stride == 2
    unit = L.SmallNet(8, widths=(4, 4, 4, 4, 4), normalize=3.0, seed=1)(torch.rand(2, 3, 20, 20))
    assert torch.allclose(unit.norm(dim=1), torch.full((2, 10, 10), 3.0), atol=1e-5)
    with pytest.raises(ValueError, match="five positive widths"):
        L.SmallNet(8, widths=(4, 4))
    with pytest.raises(ValueError, match="normalize must be"):
        L.SmallNet(8, normalize=0.0)


def tiny_net(seed=0):
    return L.SmallNet(4, widths=(4, 4, 4, 4, 4), seed=seed)


def test_photometric_jitter_and_pca_lighting():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(faces.photometric(x, 0.0, 0.0), x)
    a = faces.photometric(x, 0.4, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, faces.photometric(x, 0.4, 0.0, torch.Generator().manual_seed(1)))
    assert 0 <= float(a.min()) and float(a.max()) <= 1 and not torch.allclose(a, x)
    grey = x.mean(1, keepdim=True).expand_as(x).contiguous()  # saturation and PCA lighting on a grey image
    shifted = faces.photometric(grey, 0.0, 0.1, torch.Generator().manual_seed(2)) - grey
    per_image = shifted.flatten(2)
    assert torch.allclose(per_image, per_image[..., :1].expand_as(per_image), atol=1e-6)  # one RGB shift per image
    assert float(shifted.abs().max()) > 0


def test_random_tps_released_kernel_weights():
    gen = lambda: torch.Generator().manual_seed(0)
    plain = faces.random_tps(64, generator=gen(), rotation=0, scale=0, translation=0, tps=0, control=10)
    bent = faces.random_tps(64, generator=gen(), rotation=0, scale=0, translation=0, tps=0, control=10,
                        kernel=(0.001, 0.01))
    assert bent.centers.shape == (64, 100, 2) and float(plain.kernel_weights.abs().max()) < 1e-4  # solver noise
    w = bent.kernel_weights.flatten()
    # half of the weights ~ N(0, 0.01), half ~ N(0, 0.001), in kornia's r^2 log r units (x2)
    assert abs(float(w.pow(2).mean().sqrt()) - 2 * math.sqrt((0.01 ** 2 + 0.001 ** 2) / 2)) < 0.002
    p = torch.rand(64, 7, 2) * 2 - 1
    assert not torch.allclose(bent(p), p, atol=1e-3)
    with pytest.raises(ValueError, match="standard deviations"):
        faces.random_tps(2, kernel=(-1.0, 0.0))


def test_batch_stream_with_workers_keeps_the_order():
    images = [torch.full((1, 2, 2), float(i)) for i in range(10)]
    a = [b[:, 0, 0, 0].tolist() for b in faces.batch_stream(images, 3, 5, torch.Generator().manual_seed(0))]
    b = [b[:, 0, 0, 0].tolist() for b in faces.batch_stream(images, 3, 5, torch.Generator().manual_seed(0), workers=2)]
    assert a == b and len(a) == 5
    # full batches only, every index once per pass of 3 batches (the 10th image is left out of each pass)
    idx = list(faces.batch_indices(10, 3, 6, torch.Generator().manual_seed(0)))
    assert [len(i) for i in idx] == [3] * 6 and len(set(torch.cat(idx[:3]).tolist())) == 9


def test_extract_descriptors_and_reset_bn_stats():
    x = torch.rand(5, 3, 12, 12)
    net = tiny_net().train()
    f = L.extract_descriptors(net, x, crop=1, batch_size=2, device="cpu")
    assert f.shape == (5, 4, 5, 5) and net.training
    assert torch.allclose(f, L.extract_descriptors(net, list(x), crop=1, batch_size=5, device="cpu"), atol=1e-6)
    conv, bn = net.body[0][0], net.body[0][1]
    with torch.no_grad():
        y = conv(x[:4])
    L.reset_bn_stats(net, x[:4], batch_size=4, device="cpu")  # one batch: the exact statistics
    assert torch.allclose(bn.running_mean, y.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, y.var(dim=(0, 2, 3)), rtol=1e-4)
    L.reset_bn_stats(net, x[:4], batch_size=2, device="cpu")  # equal batches: mean of the batch statistics
    assert torch.allclose(bn.running_mean, y.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, (y[:2].var(dim=(0, 2, 3)) + y[2:].var(dim=(0, 2, 3))) / 2, rtol=1e-4)
    assert bn.momentum == 0.1 and net.training


# ----------------------------------------------------------------------------------------------- evaluation
def test_soft_argmax_reference_and_limits():
    logits = torch.randn(2, 3, 4, 5)
    p = torch.softmax(logits.flatten(2), -1).reshape(2, 3, 4, 5)
    xs = (2 * torch.arange(5) + 1) / 5 - 1
    ys = (2 * torch.arange(4) + 1) / 4 - 1
    want = torch.stack([(p * xs).sum((2, 3)), (p * ys[:, None]).sum((2, 3))], -1)
    assert torch.allclose(L.soft_argmax(logits), want, atol=1e-6)
    peak = torch.full((1, 1, 4, 5), -1e4)
    peak[0, 0, 1, 3] = 0
    assert torch.allclose(L.soft_argmax(peak), torch.tensor([[[0.4, -0.25]]]), atol=1e-6)
    with pytest.raises(ValueError, match="logits must be"):
        L.soft_argmax(torch.zeros(2, 3, 4))


def test_landmark_regressor_matches_a_reference():
    reg = L.LandmarkRegressor(3, n_landmarks=2, n_intermediate=4, softargmax_mul=5.0, seed=0)
    with torch.no_grad():
        reg.bias.normal_()
    f = torch.randn(2, 3, 5, 6)
    pred, inter = reg(f)
    assert pred.shape == (2, 2, 2) and inter.shape == (2, 2, 4, 2)
    for b in range(2):
        for l in range(2):
            pts = []
            for i in range(4):
                heat = 5.0 * torch.einsum("c,chw->hw", reg.templates[:, l * 4 + i], f[b])
                pts.append(L.soft_argmax(heat[None, None])[0, 0])
            pts = torch.stack(pts)
            assert torch.allclose(inter[b, l], pts, atol=1e-5)
            assert torch.allclose(pred[b, l], pts.flatten() @ reg.weight[l] + reg.bias[l], atol=1e-5)
    again = L.LandmarkRegressor(3, n_landmarks=2, n_intermediate=4, seed=0)
    assert torch.equal(again.templates, reg.templates)
    with pytest.raises(ValueError):
        L.LandmarkRegressor(0)


def positional_features(n, h=6, w=6):
    """One-hot position codes: every image has the same descriptor at the same place."""
    return torch.eye(h * w).reshape(1, h * w, h, w).expand(n, -1, -1, -1).clone()


def test_regression_loss_is_dves_smooth_l1_with_alpha():
    pred, target = torch.randn(3, 5, 2) * 0.2, torch.randn(3, 5, 2) * 0.2
    d = (pred - target).abs() * 10
    want = torch.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()
    assert torch.allclose(L.regression_loss(pred, target), want)
    assert torch.allclose(L.regression_loss(pred, target, alpha=1.0),
                          torch.nn.functional.smooth_l1_loss(pred, target))
    reg = L.LandmarkRegressor(2, n_landmarks=5, n_intermediate=2, seed=0)
    feats = positional_features(3)[:, :2]
    pred = L.predict_landmarks(reg, feats, batch_size=2, device="cpu")
    assert pred.shape == (3, 5, 2) and torch.allclose(pred, reg(feats)[0], atol=1e-6)


def test_iod_error_by_hand_and_errors():
    target = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]]])
    pred = target + torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]])
    assert L.iod_error(pred, target) == pytest.approx(0.1)  # mean(1, 0, 2) / 10: a fraction of the IOD
    assert L.iod_error(pred, target, reduce=False).shape == (1,)
    with pytest.raises(ValueError, match="zero inter-ocular"):
        L.iod_error(pred, torch.zeros_like(pred))
    with pytest.raises(ValueError, match="pred and target"):
        L.iod_error(pred[:, :2], target)


def test_match_points_and_cross_instance_error():
    feats = positional_features(3)
    pts = torch.tensor([[2.5, 4.5], [10.5, 6.5]])  # cell centres of a stride-2 map: (2 j + 0.5, 2 i + 0.5)
    m = L.match_points(feats[0], pts, feats, stride=2)
    assert m.shape == (3, 2, 2) and torch.allclose(m, pts.expand(3, -1, -1))
    lms = torch.tensor([[0.5, 0.5], [6.5, 0.5], [4.5, 6.5]]).expand(3, -1, -1)
    assert L.cross_instance_error(feats, lms, stride=2) == pytest.approx(0.0, abs=1e-6)
    shuffled = feats[:, torch.randperm(36, generator=torch.Generator().manual_seed(0))]
    assert L.cross_instance_error(torch.cat([feats[:1], shuffled[1:]]), lms, stride=2) > 0
    with pytest.raises(ValueError):
        L.match_points(feats[0, :3], pts, feats)
    with pytest.raises(ValueError, match="at least two"):
        L.cross_instance_error(feats[:1], lms[:1])


def test_pca_rgb_range_shape_and_determinism():
    f = torch.randn(3, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    rgb = L.pca_rgb(f)
    assert rgb.shape == (3, 3, 5, 5) and float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    assert torch.equal(rgb, L.pca_rgb(f))
    # descriptors varying mostly along one direction: the red channel follows that pattern
    pattern = torch.linspace(-1, 1, 25).reshape(1, 1, 5, 5).expand(3, 1, 5, 5)
    direction = torch.randn(1, 8, 1, 1, generator=torch.Generator().manual_seed(1))
    red = L.pca_rgb(pattern * direction * 10 + 0.1 * f)[:, 0].flatten()
    assert abs(torch.corrcoef(torch.stack([red, pattern.flatten()]))[0, 1]) > 0.95
    assert L.pca_rgb(f[:, :2]).shape == (3, 3, 5, 5)
    with pytest.raises(ValueError):
        L.pca_rgb(f[0])


# ----------------------------------------------------------------------------------------------- data, profiles
def _notebook_settings():
    """Notebook 04's visible PROFILES and WARPS dicts (its settings cell, executed up to the profile resolution)."""
    scope = run_cell(course.find("04").path, "# Every setting of each profile", stop="cfg = landmarks.check_config")
    return scope["PROFILES"], scope["WARPS"]


def test_profiles_and_paper_numbers():
    profiles, warps = _notebook_settings()
    assert set(profiles["quick"]) == set(profiles["paper"]) == set(profiles["smoke"])
    assert {k for k in profiles["paper"] if profiles["smoke"][k] != profiles["paper"][k]} == {
        "dims", "epochs", "batch_size", "workers", "finetune_epochs", "reg_epochs", "reg_batch_size"}
    quick, paper = profiles["quick"], profiles["paper"]
    assert quick["seeds"] >= 3 and {16, 64} <= set(quick["dims"]) and quick["key_dim"] in quick["dims"]
    # the released configuration: raw descriptors, DVE's Warper and augmentation, the regressor's alpha of 10
    assert paper["normalize"] == 0 and paper["warps"] == "released" and paper["reg_alpha"] == 10.0
    assert warps["released"] == {"rotation": 5.0, "scale": 0.1, "translation": 0.1, "tps": 0.0, "control": 10,
                                 "kernel": (0.001, 0.01), "color_jitter": 0.4, "pca_lighting": 0.1}
    for w in warps.values():  # every warp setting is a valid warp_pair call
        faces.warp_pair(torch.rand(2, 3, 16, 16), generator=torch.Generator().manual_seed(0), **w)
    cfg = L.check_config(utils.resolve_profile(profiles, "quick", epochs=2.0))
    assert cfg["epochs"] == 2.0 and cfg["dims"] == quick["dims"]
    # the paper profile's grid (notebook 04 logs iod_error_{dve,no_dve}_{dim}d_{dataset}) has the paper's numbers,
    # fractions of the inter-ocular distance, DVE ahead everywhere
    grid = [f"{d}d_{name}" for name in paper["eval_data"] for d in paper["dims"]]
    numbers = results.paper_numbers("04_descriptor_vector_exchange", grid=grid)
    for s in grid:
        assert 0 < numbers[f"iod_error_dve_{s}"] < numbers[f"iod_error_no_dve_{s}"] < 0.2, s
    with pytest.raises(ValueError, match="allowed"):
        utils.resolve_profile(profiles, "quick", epoch=2)
    for profile in ("quick", "paper", "smoke"):
        assert L.check_config(profiles[profile])["dims"] == profiles[profile]["dims"]
    assert L.check_config({**cfg, "dims": 32, "key_dim": None})["dims"] == [32]
    for bad, match in ((dict(dims="[16]"), "dims must be"), (dict(dims=[0]), "dims must be"),
                       (dict(epochs=0), "epochs must be"), (dict(batch_size=1), "batch_size must be"),
                       (dict(crop=30), "crop must be"), (dict(finetune_epochs=-1), "finetune_epochs"),
                       (dict(seeds=0), "seeds must be"), (dict(key_dim=3), "key_dim must be"),
                       (dict(normalize=-1.0), "normalize must be"), (dict(reg_alpha=0), "reg_alpha")):
        with pytest.raises(ValueError, match=match):
            L.check_config({**cfg, **bad})


def test_worked_solution_matches_the_exchange_kernel():
    sol = course.solution("04_descriptor_vector_exchange")
    f1, f2, fa, g = tiny(B=3, C=4, h=5, w=6, seed=3)
    mine = sol.exchange_reference(f1, fa)
    assert mine.shape == f1.shape and torch.allclose(mine, L.exchange(f1, fa), atol=1e-5)
    assert torch.allclose(L.dense_equivariance_loss(mine, f2, g, stride=2), L.dve_loss(f1, f2, fa, g, stride=2),
                          atol=1e-5)
    # each exchanged descriptor is a convex combination of the auxiliary image's descriptors
    one = sol.exchange_reference(f1[:1, :, :1, :1], fa[:1, :, :1, :1])
    assert torch.allclose(one, fa[:1, :, :1, :1])


@pytest.mark.parametrize("name", ["celeba", "mafl", "aflw_mtfl"])
def test_full_datasets_are_registered_and_missing_data_is_explained(name, tmp_path):
    assert name in data.names()
    with pytest.raises(data.DataNotFoundError, match=f"dataset '{name}' \\(full\\)"):
        data.load(name, "test", full=True, data_dir=tmp_path)
    with pytest.raises(data.DataNotFoundError, match="no shipped subset"):
        data.load(name, "test")


def test_face_images_crop_then_resize(tmp_path):
    from PIL import Image
    im = Image.new("RGB", (20, 10), (255, 0, 0))
    im.paste((0, 0, 255), (10, 0, 20, 10))  # the right half blue
    im.save(tmp_path / "a.png")
    crops = faces.FaceImages([tmp_path / "a.png"] * 2, (10, 0, 20, 10), 4)
    assert isinstance(crops, data.LazyImages) and len(crops) == 2 and len(crops[1:]) == 1
    assert torch.equal(crops[0], torch.tensor([0.0, 0.0, 1.0])[:, None, None].expand(3, 4, 4))


# ----------------------------------------------------------------------------------------------- full readers
@pytest.fixture(scope="module")
def landmark_root(tmp_path_factory):
    """CelebA (+ MAFL's lists) and AFLW-MTFL written once in their releases' layouts (tests/miniatures/landmarks.py)."""
    from miniatures import write_some
    return write_some(tmp_path_factory.mktemp("landmark_miniatures"), "landmarks")


def _marker_centre(image: torch.Tensor) -> torch.Tensor:
    """``(x, y)`` centroid of the white square the miniatures draw on each face's left eye (the rest is dimmer)."""
    grey = image.mean(0)
    w = (grey - 0.6).clamp_min(0)
    ys, xs = torch.meshgrid(torch.arange(grey.shape[0], dtype=w.dtype), torch.arange(grey.shape[1], dtype=w.dtype),
                            indexing="ij")
    return torch.stack([(w * xs).sum(), (w * ys).sum()]) / w.sum()


@pytest.mark.parametrize("name", ["celeba", "mafl", "aflw_mtfl"])
def test_landmark_readers_read_the_official_layouts(name, landmark_root):
    from miniatures.landmarks import SIZES
    for split, n in SIZES[name].items():
        ds = data.load(name, split, full=True, data_dir=landmark_root)
        assert ds.source == "full" and ds.name == name and len(ds) == n, (split, len(ds))
        assert ds.meta["landmarks"].shape == (n, 5, 2) and len(ds.meta["files"]) == n
        assert ds.meta["_landmark_names"][:2] == ["left eye", "right eye"] and ds.labels is None
        for k in range(n):
            x = ds.images[k]
            assert x.shape == (3, 100, 100) and x.dtype == torch.float32
            assert 0 <= float(x.min()) <= float(x.max()) <= 1
            # the left-eye landmark lands on the marker drawn there, after the reader's crop and resize
            centre = _marker_centre(x)
            assert torch.allclose(centre, ds.meta["landmarks"][k, 0], atol=0.6), (split, k, centre)
        small = data.load(name, split, full=True, data_dir=landmark_root, size=40)
        assert small.images[0].shape == (3, 40, 40)
        assert torch.allclose(small.meta["landmarks"], ds.meta["landmarks"] * 0.4, atol=1e-4)


def test_celeba_and_mafl_splits_and_coordinates(landmark_root):
    from miniatures import landmarks as mini
    for split, files in mini.CELEBA_SPLITS.items():
        assert data.load("celeba", split, full=True, data_dir=landmark_root).meta["files"] == files
    everything = data.load("celeba", "all", full=True, data_dir=landmark_root).meta["files"]
    mafl_faces = set(mini.MAFL["train"]) | set(mini.MAFL["test"])
    # DVE's CelebA leaves out both MAFL lists, whatever their CelebA partition
    assert not mafl_faces & set(everything) and len(everything) == len(mini.CELEBA_PARTITION) - len(mafl_faces)
    for split in ("train", "test"):
        ds = data.load("mafl", split, full=True, data_dir=landmark_root, size=50)
        assert ds.meta["files"] == mini.MAFL[split]  # the list's own order
    # a known point: CelebA pixels (x, y) -> (x, y - 30) in DVE's 178 x 178 crop, then * size / 178
    f = mini.MAFL["test"][0]
    pts = torch.tensor(mini.celeba_landmarks(f), dtype=torch.float32).view(5, 2)
    ds = data.load("mafl", "test", full=True, data_dir=landmark_root, size=50)
    assert torch.allclose(ds.meta["landmarks"][0], (pts - torch.tensor([0.0, 30.0])) * 50 / 178)
    assert faces.CELEBA_BOX == (0, 30, 178, 208)


def test_celeba_reads_the_torchvision_layout_and_warns_without_mafl(landmark_root, tmp_path):
    import shutil
    from miniatures import landmarks as mini
    flat = tmp_path / "celeba"
    shutil.copytree(landmark_root / "celeba" / "Img" / "img_align_celeba", flat / "img_align_celeba")
    for sub in ("Anno/list_landmarks_align_celeba.txt", "Eval/list_eval_partition.txt"):
        shutil.copy(landmark_root / "celeba" / sub, flat / sub.split("/")[1])
    shutil.copytree(landmark_root / "celeba" / "MAFL", flat / "MAFL")
    assert data.load("celeba", "train", full=True, data_dir=tmp_path).meta["files"] == mini.CELEBA_SPLITS["train"]
    shutil.rmtree(flat / "MAFL")
    with pytest.warns(UserWarning, match="MAFL"):
        assert len(data.load("celeba", "train", full=True, data_dir=tmp_path)) == list(
            mini.CELEBA_PARTITION.values()).count(0)
    with pytest.raises(data.DataNotFoundError, match="MAFL/testing.txt"):
        data.load("mafl", "test", full=True, data_dir=tmp_path)


def test_aflw_mtfl_reads_dves_csv_and_mtfl_test_list(landmark_root, tmp_path):
    import shutil
    from miniatures import landmarks as mini
    train = data.load("aflw_mtfl", "train", full=True, data_dir=landmark_root)
    expected = [key for key, _, subset in mini.AFLW_ROWS if subset == 1]  # set == 1, in the CSV's order
    assert [int(f.rsplit("/", 1)[1].split(".")[0]) for f in train.meta["files"]] == expected
    test = data.load("aflw_mtfl", "test", full=True, data_dir=landmark_root, size=60)
    assert [f.split("/MTFL/")[1] for f in test.meta["files"]] == mini.MTFL_TEST
    # known points: 1-based pixels of the 150 x 150 crops -> (p - 1) * size / 150; CSV rows interleave x and y,
    # MTFL rows give x1..x5 then y1..y5
    for ds, key, size in ((train, expected[0], 100), (test, 1, 60)):
        pts = torch.tensor(mini.aflw_landmarks(key), dtype=torch.float32).view(5, 2)
        assert torch.allclose(ds.meta["landmarks"][0], (pts - 1) * size / 150, atol=1e-5)
    # DVE's tarball unpacks to aflw-mtfl/: read too
    shutil.copytree(landmark_root / "aflw_mtfl", tmp_path / "aflw-mtfl")
    assert len(data.load("aflw_mtfl", "test", full=True, data_dir=tmp_path)) == len(mini.MTFL_TEST)
    # a training face from an MTFL test image is an error, as DVE asserts
    csv = tmp_path / "aflw-mtfl" / "aflw_cropped" / "facedata_cropped.csv"
    csv.write_text(csv.read_text().replace("image20056.jpg,3,", "image20056.jpg,1,"))
    with pytest.raises(data.DataError, match="MTFL test images"):
        data.load("aflw_mtfl", "train", full=True, data_dir=tmp_path)
    csv.write_text(csv.read_text().replace("crop_file", "crop"))
    with pytest.raises(data.DataError, match="crop_file"):
        data.load("aflw_mtfl", "train", full=True, data_dir=tmp_path)
