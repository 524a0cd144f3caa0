"""Unit tests of vklib.condensation (Dataset Condensation with gradient matching): shapes, small readable
references and autograd checks on tiny inputs, determinism under a seed, and the error cases."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vklib import condensation as dc
from vklib import course, data, models, results, train


def tiny_net(channels: int = 1, classes: int = 3, size: int = 8, width: int = 4) -> nn.Module:
    return models.ConvNet(channels, classes, size, width=width, depth=2)


def grads_like(net: nn.Module, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(k, *p.shape, generator=g) for n, p in net.named_parameters()}


# ------------------------------------------------------------------------------------------- distances
def reference_layer_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The paper's formula written out: one output unit at a time."""
    if a.ndim == 1:
        return 0.0
    total = 0.0
    for i in range(a.shape[0]):
        x, y = a[i].flatten(), b[i].flatten()
        total += 1 - float(x @ y) / (float(x.norm()) * float(y.norm()) + 1e-6)
    return total


@pytest.mark.parametrize("shape", [(5, 3, 3, 3), (4, 7), (6, 2, 5), (9,)])
def test_layer_distance_matches_reference(shape):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    assert dc.layer_distance(a, b).shape == ()
    assert abs(dc.layer_distance(a, b).item() - reference_layer_distance(a, b)) < 1e-5


def test_layer_distance_batch_dims_sum_and_bounds():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 4, 2, 3, 3, generator=g), torch.randn(3, 4, 2, 3, 3, generator=g)
    batched = dc.layer_distance(a, b, batch_dims=1)
    assert torch.allclose(batched, sum(dc.layer_distance(a[i], b[i]) for i in range(3)))
    assert dc.layer_distance(a[0], a[0]).abs() < 1e-5          # identical gradients: distance 0
    assert abs(dc.layer_distance(a[0], -a[0]).item() - 8) < 1e-4  # opposite: 2 per output unit
    assert 0 <= batched.item() <= 2 * 3 * 4


def test_layer_distance_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        dc.layer_distance(torch.zeros(2, 3), torch.zeros(3, 2))


def test_match_distance_variants_against_reference():
    net = tiny_net()
    gs, gr = grads_like(net, 3, 0), grads_like(net, 3, 1)
    ref_dc = sum(reference_layer_distance(gs[k][c], gr[k][c]) for k in gs for c in range(3))
    assert abs(dc.match_distance(gs, gr, "dc").item() - ref_dc) < 1e-4
    # list input gives the same as a dict
    assert torch.allclose(dc.match_distance(list(gs.values()), list(gr.values()), "dc"), dc.match_distance(gs, gr))
    ref_mse = sum(((gs[k] - gr[k]) ** 2).sum() for k in gs)
    assert torch.allclose(dc.match_distance(gs, gr, "mse"), ref_mse)
    ref_cos = 0.0
    for c in range(3):
        a = torch.cat([gs[k][c].flatten() for k in gs])
        b = torch.cat([gr[k][c].flatten() for k in gr])
        ref_cos += 1 - float(a @ b) / (float(a.norm() * b.norm()) + 1e-6)
    assert abs(dc.match_distance(gs, gr, "cos").item() - ref_cos) < 1e-5


def test_match_distance_ignores_one_dimensional_parameters():
    net = tiny_net()
    gs, gr = grads_like(net, 2, 0), grads_like(net, 2, 1)
    changed = {k: (v * 0 + 7 if v.ndim == 2 else v) for k, v in gr.items()}  # only biases/norm params change
    assert torch.allclose(dc.match_distance(gs, gr), dc.match_distance(gs, changed))
    assert not torch.allclose(dc.match_distance(gs, gr, "mse"), dc.match_distance(gs, changed, "mse"))


def test_match_distance_errors():
    net = tiny_net()
    gs = grads_like(net, 2)
    with pytest.raises(ValueError, match="unknown distance 'l1'"):
        dc.match_distance(gs, gs, "l1")
    with pytest.raises(ValueError, match="same non-zero number"):
        dc.match_distance(list(gs.values())[:2], list(gs.values()))


# ------------------------------------------------------------------------------------------- gradients
def test_class_gradients_shapes_and_autograd_reference():
    torch.manual_seed(0)
    net = tiny_net()
    x = torch.randn(3, 5, 1, 8, 8)
    out = dc.class_gradients(net, x)
    assert list(out) == [n for n, _ in net.named_parameters()]
    for (n, p) in net.named_parameters():
        assert out[n].shape == (3, *p.shape)
    for c in range(3):  # class c's gradient is that of the mean cross-entropy of its images with label c
        loss = F.cross_entropy(net(x[c]), torch.full((5,), c))
        ref = torch.autograd.grad(loss, list(net.parameters()))
        for r, n in zip(ref, out):
            assert torch.allclose(out[n][c], r, atol=1e-6)
    assert not any(v.requires_grad for v in out.values())


def test_class_gradients_vectorised_equals_loop_and_keeps_graph():
    torch.manual_seed(1)
    net = tiny_net()
    x = torch.randn(3, 2, 1, 8, 8, requires_grad=True)
    a = dc.class_gradients(net, x, create_graph=True)
    b = dc.class_gradients(net, x, create_graph=True, vectorised=False)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6)
    ga, = torch.autograd.grad(sum((v ** 2).sum() for v in a.values()), x)
    gb, = torch.autograd.grad(sum((v ** 2).sum() for v in b.values()), x)
    assert torch.allclose(ga, gb, atol=1e-6) and ga.abs().sum() > 0


@pytest.mark.parametrize("vectorised", [False, True])
def test_class_gradients_weights_only_and_parameters_untouched(vectorised):
    """weights_only gives the >= 2-D parameters' gradients, equal to the full call's; matching_loss's backward
    reaches the images, never the network's .grad."""
    torch.manual_seed(5)
    net = models.ConvNet(1, 3, 8, width=8, depth=2)
    x = torch.randn(3, 4, 1, 8, 8)
    full = dc.class_gradients(net, x, vectorised=vectorised)
    w = dc.class_gradients(net, x, vectorised=vectorised, weights_only=True)
    assert list(w) == [n for n, p in net.named_parameters() if p.ndim > 1]
    assert all(torch.allclose(w[k], full[k], rtol=1e-4, atol=1e-6) and w[k].is_contiguous() for k in w)
    syn = torch.randn(3, 1, 1, 8, 8, requires_grad=True)
    dc.matching_loss(net, x, syn, vectorised=vectorised).backward()
    assert syn.grad.abs().sum() > 0 and all(p.grad is None for p in net.parameters())


def test_class_gradients_errors():
    with pytest.raises(ValueError, match=r"\(K, n, C, H, W\)"):
        dc.class_gradients(tiny_net(), torch.zeros(3, 1, 8, 8))
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 36, 3))
    with pytest.raises(ValueError, match="without BatchNorm"):
        dc.class_gradients(bn, torch.zeros(3, 2, 1, 8, 8))


@pytest.mark.parametrize("metric", dc.DISTANCES)
def test_matching_loss_gradcheck_and_loop_agreement(metric):
    torch.manual_seed(3)
    net = models.ConvNet(1, 2, 4, width=2, depth=1).double()
    real = torch.randn(2, 3, 1, 4, 4, dtype=torch.double)
    syn = torch.randn(2, 1, 1, 4, 4, dtype=torch.double, requires_grad=True)
    f = lambda s: dc.matching_loss(net, real, s, metric)  # noqa: E731
    assert torch.autograd.gradcheck(f, (syn,), eps=1e-6, atol=1e-4)
    assert torch.allclose(f(syn), dc.matching_loss(net, real, syn, metric, vectorised=False))


def test_matching_loss_shape_error():
    with pytest.raises(ValueError, match="must share K, C, H, W"):
        dc.matching_loss(tiny_net(), torch.zeros(3, 2, 1, 8, 8), torch.zeros(2, 1, 1, 8, 8))


# ------------------------------------------------------------------------------------------- condensation kernels
def toy_data(n_per_class: int = 6, classes: int = 3, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 1, size, size, generator=g) + y.view(-1, 1, 1, 1).float()
    return x, y


def test_class_gradients_default_per_side_on_cpu(monkeypatch):
    """vectorised=None takes the loop for the real side on a CPU (faster there) and vmap for the synthetic side;
    both give what the explicit choices give."""
    torch.manual_seed(2)
    net, x = tiny_net(), torch.randn(3, 2, 1, 8, 8)
    calls = []
    import torch.func as tf
    real_vmap = tf.vmap
    monkeypatch.setattr(tf, "vmap", lambda *a, **k: calls.append(1) or real_vmap(*a, **k))
    auto = dc.class_gradients(net, x)
    assert not calls
    vec = dc.class_gradients(net, x, vectorised=True)
    assert calls and all(torch.allclose(auto[k], vec[k], atol=1e-6) for k in auto)
    calls.clear()  # the synthetic side (create_graph) takes the vmap pass by default, on a CPU too
    syn = dc.class_gradients(net, x.requires_grad_(), create_graph=True)
    loop = dc.class_gradients(net, x, create_graph=True, vectorised=False)
    assert calls and all(torch.allclose(syn[k], loop[k], atol=1e-6) for k in syn)


def reference_dm_loss(net, real, syn):
    """DM's loss written out one class and one image at a time."""
    total = 0.0
    for c in range(len(real)):
        mu_r = torch.stack([net.embed(x[None])[0] for x in real[c]]).mean(0).detach()
        mu_s = torch.stack([net.embed(x[None])[0] for x in syn[c]]).mean(0)
        total = total + ((mu_r - mu_s) ** 2).sum()
    return total


def test_dm_loss_reference_gradcheck_and_real_side_detached():
    torch.manual_seed(4)
    net = tiny_net().double()
    real = torch.randn(3, 4, 1, 8, 8, dtype=torch.double, requires_grad=True)
    syn = torch.randn(3, 2, 1, 8, 8, dtype=torch.double, requires_grad=True)
    loss = dc.dm_loss(net, real, syn)
    assert loss.ndim == 0 and torch.allclose(loss, reference_dm_loss(net, real, syn))
    assert torch.autograd.gradcheck(lambda s: dc.dm_loss(net, real, s), (syn,), eps=1e-6, atol=1e-5)
    g_real, = torch.autograd.grad(loss, real, allow_unused=True)
    assert g_real is None  # the real side is a fixed target
    assert float(dc.dm_loss(net, real, real[:, :2]).detach()) >= 0


def test_dm_loss_errors():
    with pytest.raises(ValueError, match="must be \\(K, n, C, H, W\\)"):
        dc.dm_loss(tiny_net(), torch.zeros(3, 2, 1, 8, 8), torch.zeros(2, 1, 1, 8, 8))
    with pytest.raises(ValueError, match="no embed"):
        dc.dm_loss(dc.MLP(1, 3, 8), torch.zeros(3, 2, 1, 8, 8), torch.zeros(3, 1, 1, 8, 8))


def test_worked_solution_equals_dm_loss():
    sol = course.solution("01_dataset_condensation")
    torch.manual_seed(5)
    net = tiny_net()
    real = torch.randn(3, 6, 1, 8, 8)
    syn = torch.randn(3, 2, 1, 8, 8, requires_grad=True)
    want, got = dc.dm_loss(net, real, syn), sol.dm_loss(net, real, syn)
    assert torch.allclose(got, want, rtol=1e-5)
    g_want, = torch.autograd.grad(want, syn)
    g_got, = torch.autograd.grad(got, syn)
    assert torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-7)


def test_loops_for_ipc():
    assert dc.loops_for_ipc(1) == (1, 1) and dc.loops_for_ipc(10) == (10, 50) and dc.loops_for_ipc(50) == (50, 10)
    with pytest.raises(ValueError, match=r"ipc 5: defined for ipc in \[1, 10, 20, 30, 40, 50\]"):
        dc.loops_for_ipc(5)
    assert dc.loops_for_ipc(10, {1: (1, 1), 10: (2, 1)}) == (2, 1)
    with pytest.raises(ValueError, match=r"ipc 10: defined for ipc in \[1\]"):
        dc.loops_for_ipc(10, {1: (1, 1)})


def test_sample_per_class_distinct_and_in_class():
    y = torch.tensor([0, 1, 1, 0, 2, 2, 2, 0, 1, 2])
    index, counts = dc.by_class(y, 3)
    assert counts.tolist() == [3, 3, 4]
    pick = dc.sample_per_class(index, counts, 3, torch.Generator().manual_seed(0))
    assert pick.shape == (3, 3)
    for c in range(3):
        assert (y[pick[c]] == c).all() and len(set(pick[c].tolist())) == 3
    with pytest.raises(ValueError, match="class 0 has only 3 samples, fewer than the 4 asked for"):
        dc.sample_per_class(index, counts, 4, torch.Generator())


# ------------------------------------------------------------------------------------------- augmentation
def test_dsa_siamese_shapes_and_gradients():
    g = torch.Generator().manual_seed(0)
    for op in dc.DSA_OPS:
        p = dc.sample_dsa(op, 3, g)
        assert p["op"] == op and p["u"].shape == (3, 3)
        x = torch.randn(3, 2, 1, 8, 8, requires_grad=True)
        y = dc.apply_dsa(x, p)
        assert y.shape == x.shape
        # siamese: one transformation per class, so two equal images of a class stay equal
        z = dc.apply_dsa(x[:, :1].expand(3, 2, 1, 8, 8), p)
        assert torch.allclose(z[:, 0], z[:, 1])
        y.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_dsa_flip_reference_and_errors():
    x = torch.arange(2 * 1 * 1 * 2 * 3, dtype=torch.float).view(2, 1, 1, 2, 3)
    p = {"op": "flip", "u": torch.tensor([[0.2, 0, 0], [0.8, 0, 0]])}
    y = dc.apply_dsa(x, p)
    assert torch.equal(y[0], x[0].flip(-1)) and torch.equal(y[1], x[1])
    with pytest.raises(ValueError, match="for 2 groups, images have 3"):
        dc.apply_dsa(torch.zeros(3, 1, 1, 4, 4), p)
    with pytest.raises(ValueError, match="unknown DSA operation"):
        dc.sample_dsa("jitter", 2)


def test_dc_augment_shapes_determinism_and_identity():
    x = torch.randn(6, 1, 12, 12)
    assert dc.dc_augment(x, "none") is x
    a = dc.dc_augment(x, generator=torch.Generator().manual_seed(0))
    b = dc.dc_augment(x, generator=torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)
    # a zero shift / unit scale warp reproduces the image (the warp itself is exact)
    assert torch.allclose(dc._affine(x, torch.eye(2, 3).repeat(6, 1, 1)), x, atol=1e-5)
    n = dc.dc_augment(x, "noise", generator=torch.Generator().manual_seed(0))
    assert (n - x).abs().max() < 0.01
    with pytest.raises(ValueError, match="unknown dc_augment operation"):
        dc.dc_augment(x, "crop_blur")


def test_dc_augment_crop_is_an_integer_shift():
    x = torch.zeros(4, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    y = dc.dc_augment(x, "crop", generator=torch.Generator().manual_seed(5), crop=2)
    for img in y:  # the bright pixel moved by whole pixels (at most 2), unblurred
        assert abs(float(img.max()) - 1.0) < 1e-5
        peak = (img[0] == img.max()).nonzero()[0]
        assert (peak - 4).abs().max() <= 2


# ------------------------------------------------------------------------------------------- coresets
def brute_force_herding(f: torch.Tensor, n: int) -> list[int]:
    mu, chosen = f.mean(0), []
    for k in range(n):
        best = min((i for i in range(len(f)) if i not in chosen),
                   key=lambda i: float(((mu - (f[chosen + [i]].sum(0)) / (k + 1)) ** 2).sum()))
        chosen.append(best)
    return chosen


def test_herding_and_k_center_against_references():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(12, 3, generator=g)
    assert dc.herding(f, 4).tolist() == brute_force_herding(f, 4)
    kc = dc.k_center(f, 3).tolist()
    assert kc[0] == int(((f - f.mean(0)) ** 2).sum(1).argmin())
    d = torch.cdist(f, f[kc[:2]]).min(1).values
    assert kc[2] == int(d.argmax())
    assert dc.herding(f, 1).tolist() == dc.k_center(f, 1).tolist()  # both start nearest the mean
    with pytest.raises(ValueError, match="n must be in 1..12"):
        dc.herding(f, 13)
    with pytest.raises(ValueError, match="n must be in 1..12"):
        dc.k_center(f, 0)


def test_select_coreset_balanced_deterministic_and_errors():
    x, y = toy_data(n_per_class=5)
    feats = x.flatten(1)
    for method in dc.CORESETS:
        idx = dc.select_coreset(y, 2, method, features=feats, seed=0)
        assert idx.shape == (6,) and y[idx].tolist() == [0, 0, 1, 1, 2, 2]
        assert torch.equal(idx, dc.select_coreset(y, 2, method, features=feats, seed=0))
    assert not torch.equal(dc.select_coreset(y, 2, seed=0), dc.select_coreset(y, 2, seed=1))
    with pytest.raises(ValueError, match="unknown coreset method 'forgetting'"):
        dc.select_coreset(y, 1, "forgetting")
    with pytest.raises(ValueError, match="herding needs features"):
        dc.select_coreset(y, 1, "herding")
    with pytest.raises(ValueError, match="fewer than ipc=6"):
        dc.select_coreset(y, 6)
    with pytest.raises(ValueError, match="ipc must be an int >= 1"):
        dc.select_coreset(y, 0)


def test_embed_shapes_and_error():
    net = tiny_net()
    x = torch.randn(5, 1, 8, 8)
    feats = dc.embed(net, x, batch_size=2, device="cpu")
    assert feats.shape == (5, 4 * 2 * 2) and net.training
    net.eval()
    assert torch.allclose(feats, net.embed(x), atol=1e-6)
    with pytest.raises(ValueError, match="no embed"):
        dc.embed(nn.Linear(2, 2), torch.zeros(1, 2))


# ------------------------------------------------------------------------------------------- evaluation
def test_evaluate_sets_protocol_and_determinism():
    x, y = toy_data(n_per_class=4)
    xt, yt = toy_data(n_per_class=10, seed=1)
    mk = lambda: dc.MLP(1, 3, 8)  # noqa: E731
    sets, labels = torch.stack([x, x.flip(0)]), torch.stack([y, y.flip(0)])
    state = torch.get_rng_state()
    a = dc.evaluate_sets(sets, labels, xt, yt, net_fn=mk, seeds=[0, 1], epochs=4, device="cpu",
                         augment="crop_scale_rotate")
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is left alone
    b = dc.evaluate_sets(sets, labels, xt, yt, net_fn=mk, seeds=[0, 1], epochs=4, device="cpu",
                         augment="crop_scale_rotate")
    assert len(a) == 2 and a == b and all(0 <= v <= 1 for v in a)


def separately_trained_accs(sets, labels, xt, yt, mk, seeds, epochs, batch_size, augment):
    """The protocol written out for one network after the other: network s initialised and trained under seed
    seeds[s] on set s."""
    aug = lambda b, g: dc.dc_augment(b, augment, generator=g)  # noqa: E731
    accs = []
    for x, y, s in zip(sets, labels, seeds):
        torch.manual_seed(s)
        net = mk()
        train.train_classifier(net, x, y, epochs=epochs, batch_size=batch_size, lr=0.01, momentum=0.9,
                               weight_decay=5e-4, augment=aug, seed=s, device="cpu")
        accs.append(train.evaluate(net, xt, yt, device="cpu"))
    return accs


@pytest.mark.parametrize("arch", ["convnet", "lenet", "batchnorm"])
def test_evaluate_sets_equals_separately_trained_networks(arch):
    """All networks in one pass (an Ensemble, member s on set s; networks with BatchNorm one after the other) give
    the accuracies of networks trained separately from the same seeds on the same sets. In float64: in float32 the
    stacked and the separate runs round differently and drift apart by about 1e-3 after a few steps."""
    x, y = (t.double() if t.is_floating_point() else t for t in toy_data(n_per_class=4, size=16))
    xt, yt = (t.double() if t.is_floating_point() else t for t in toy_data(n_per_class=30, size=16, seed=1))
    sets, labels = torch.stack([x, x + 0.5, x.flip(-1)]), torch.stack([y, y, y])
    mk = {"convnet": lambda: tiny_net(size=16),
          "lenet": lambda: dc.LeNet(1, 3, 16),
          "batchnorm": lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                             nn.Linear(4 * 14 * 14, 3))}[arch]
    mk64 = lambda: mk().double()  # noqa: E731
    got = dc.evaluate_sets(sets, labels, xt, yt, net_fn=mk64, seeds=[2000, 2001, 2002], epochs=6, batch_size=8,
                           augment="crop_scale_rotate", device="cpu")
    want = separately_trained_accs(sets, labels, xt, yt, mk64, [2000, 2001, 2002], 6, 8, "crop_scale_rotate")
    assert got == pytest.approx(want, abs=1e-9)
    assert len(set(got)) > 1 or arch == "batchnorm"  # the members differ (different seeds and sets)


def test_evaluate_sets_errors():
    x, y = toy_data()
    mk = lambda: dc.MLP(1, 3, 8)  # noqa: E731
    with pytest.raises(ValueError, match="one seed per set"):
        dc.evaluate_sets(x[None], y[None], x, y, net_fn=mk, seeds=[0, 1])
    with pytest.raises(ValueError, match="epochs >= 1"):
        dc.evaluate_sets(x[None], y[None], x, y, net_fn=mk, seeds=[0], epochs=0)
    with pytest.raises(ValueError, match=r"images must be \(S, M, C, H, W\)"):
        dc.evaluate_sets(x, y, x, y, net_fn=mk, seeds=[0])
    with pytest.raises(ValueError, match="unknown dc_augment operation"):
        dc.evaluate_sets(x[None], y[None], x, y, net_fn=mk, seeds=[0], augment="blur")


# ------------------------------------------------------------------------------------------- data, networks, settings
def test_normalize_roundtrip_and_errors():
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(dc.denormalize(dc.normalize(x, "cifar10"), "cifar10"), x, atol=1e-6)
    assert torch.allclose(dc.normalize(torch.full((1, 1, 2, 2), 0.1307), "mnist"), torch.zeros(1, 1, 2, 2), atol=1e-6)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        dc.normalize(x, "imagenet")
    with pytest.raises(ValueError, match=r"expected images \(\.\.\., 1, H, W\)"):
        dc.normalize(x, "mnist")


@pytest.fixture(scope="module")
def miniature_root(tmp_path_factory):
    """The miniatures of the torchvision releases (tests/miniatures/core.py), the full data of the smoke run."""
    from miniatures import write_some
    return write_some(tmp_path_factory.mktemp("miniatures"), "core")


@pytest.mark.parametrize("name", list(dc.BENCHMARKS))
def test_load_real_full_reads_the_miniature_releases(name, miniature_root):
    from miniatures import core
    for split in ("train", "test"):
        x, y, classes = dc.load_real(name, split, full=True, data_dir=miniature_root)
        c, s = (1, 28) if name in ("mnist", "fashion_mnist") else (3, 32)
        assert x.shape == (core.SIZES[name][split], c, s, s) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and torch.bincount(y, minlength=10).tolist() == [len(y) // 10] * 10
        assert len(classes) == 10
        # normalised with the benchmark's constants: denormalize returns the release's pixels in [0, 1]
        raw = data.load(dc.BENCHMARKS[name].registry, split, full=True, data_dir=miniature_root).images
        assert torch.allclose(dc.denormalize(x, name), raw, atol=1e-5)


def test_load_real_subset_and_missing_full(tmp_path):
    x, y, classes = dc.load_real("mnist", "train")
    assert x.shape == (5000, 1, 28, 28) and y.shape == (5000,) and classes[3] == "3"
    assert abs(float(x.mean())) < 0.05  # normalised with DC's MNIST constants
    with pytest.raises(ValueError, match="unknown dataset"):
        dc.load_real("tinyimagenet")
    with pytest.raises(data.DataNotFoundError, match="'cifar10' \\(full\\)"):
        dc.load_real("cifar10", "train", full=True, data_dir=tmp_path)


@pytest.mark.parametrize("name", dc.NETWORKS)
def test_make_network_shapes(name):
    net = dc.make_network(name, 1, 10, 28, width=8)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert dc.make_network(name, 3, 10, 32, width=8)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_convnet_pads_grey_28px_inputs_as_the_official_code():
    """networks.py: one-channel 28 px images get padding 3 in the first conv (28 -> 32 px; width 128: 2048
    features); colour 32 px images padding 1."""
    net = dc.make_network("convnet", 1, 10, 28)
    assert net.features[0].padding == (3, 3) and net.classifier.in_features == 2048
    assert net.embed(torch.zeros(2, 1, 28, 28)).shape == (2, 2048)
    assert dc.make_network("convnet", 3, 10, 32).features[0].padding == (1, 1)


def test_make_network_errors():
    with pytest.raises(ValueError, match="unknown network 'vgg'"):
        dc.make_network("vgg", 1, 10, 28)
    with pytest.raises(ValueError, match="at least 16 px"):
        dc.LeNet(3, 10, 8)


def test_paper_numbers():
    # the notebook's settings (f"{dataset}_ipc{ipc}") find the paper's Table 1 under the metric names it logs
    grid = [f"{d}_ipc{n}" for d in ("mnist", "fashion_mnist", "svhn", "cifar10") for n in (1, 10, 50)]
    paper = results.paper_numbers("01_dataset_condensation", "mnist_ipc1", grid)
    assert {k: paper[k] for k in ("acc_dc", "acc_dc_std", "acc_random", "acc_herding", "acc_kcenter")} == {
        "acc_dc": 0.917, "acc_dc_std": 0.005, "acc_random": 0.649, "acc_herding": 0.892, "acc_kcenter": 0.893}
    assert paper["acc_dc_cifar10_ipc50"] == 0.539 and "acc_dc_mnist_ipc1" not in paper
    assert len([k for k in paper if k.startswith("acc_dc_") and "std" not in k]) == 11  # the grid less mnist ipc1


def notebook_profiles() -> dict:
    """The PROFILES dicts of notebook 01 (its settings cell), evaluated."""
    import nbformat
    book = nbformat.read(str(course.find("01").path), as_version=4)
    src = next(c.source for c in book.cells if c.cell_type == "code" and c.source.startswith("# The settings"))
    scope = {"condensation": dc}
    exec(src[:src.index("cfg = ")], scope)
    return scope["PROFILES"]


def test_smoke_profile_runs_the_paper_path_on_the_miniatures():
    """smoke shrinks counts only: the paper's networks and settings otherwise, every benchmark of the paper's grid
    once, one at more than one image per class (the loop that trains the network between matching steps), and
    counts the miniatures (tests/miniatures/core.py) can serve."""
    from miniatures import core
    profiles = notebook_profiles()
    assert set(profiles) == set(course.PROFILE_NAMES)
    assert set(profiles["quick"]) == set(profiles["paper"]) == set(profiles["smoke"])
    assert profiles["quick"]["seeds"] >= 3 and profiles["quick"]["eval_augment"] == "paper"
    paper, smoke = profiles["paper"], profiles["smoke"]
    shrunk = {"download", "grid", "seeds", "iterations", "batch_real", "dm_iterations", "dm_batch_real", "loops",
              "eval_nets", "eval_epochs", "eval_epochs_augmented", "feature_epochs", "snapshot_every"}
    assert {k for k in paper if smoke[k] != paper[k]} == shrunk
    assert smoke["full"] and not smoke["download"]  # the miniatures are on disk; torchvision would re-fetch them
    assert set(smoke["grid"]) <= set(paper["grid"]) and (smoke["dataset"], smoke["ipc"]) in smoke["grid"]
    assert {d for d, _ in smoke["grid"]} == set(dc.BENCHMARKS)
    assert any(dc.loops_for_ipc(n, smoke["loops"])[0] > 1 for _, n in smoke["grid"])
    for n, (outer, inner) in dc.LOOPS.items():
        assert 1 <= smoke["loops"][n][0] <= outer and 0 <= smoke["loops"][n][1] <= inner
    for d, n in smoke["grid"]:
        per_class = core.SIZES[d]["train"] // 10
        assert n <= per_class and max(smoke["batch_real"], smoke["dm_batch_real"]) <= per_class, \
            f"{d}: the miniature has {per_class} per class"
    assert 2 <= smoke["eval_nets"] < paper["eval_nets"] and smoke["eval_epochs"] >= 2  # a std, and the lr decay
    assert 2 <= smoke["seeds"] <= paper["seeds"]
