"""Unit tests of vklib.leakage (DLG / iDLG): shapes, autograd and readable references on tiny inputs,
determinism under a seed, and the error cases."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nbcheck import run_cell
from vklib import course, data, leakage as L, models, results


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def tiny():
    """Three victims LeNetSigmoid(1 channel, 4 classes, 8x8) with random images and labels."""
    g = _gen(0)
    model = models.LeNetSigmoid(1, 4, 8)
    params = L.sample_victims(model, 3, generator=g)
    x = torch.rand((3, 1, 8, 8), generator=g)
    y = torch.tensor([0, 3, 1])
    return model, params, x, y, L.victim_gradients(model, params, x, y)


# ----------------------------------------------------------------------------------------------- settings
def _notebook_profiles():
    """The notebook's visible PROFILES dicts (its settings cell, executed up to the profile resolution)."""
    scope = run_cell(course.find("02").path, "# Every setting of each profile", stop="cfg = utils.resolve_profile")
    return scope["PROFILES"]


def test_profiles_and_paper():
    profiles = _notebook_profiles()
    assert set(profiles) == set(course.PROFILE_NAMES)
    assert set(profiles["quick"]) == set(profiles["paper"]) == set(profiles["smoke"])
    quick = profiles["quick"]
    assert quick["seeds"] == 3 and quick["seeds"] * quick["n_recon"] >= 32, "at least 32 attacks per dataset"
    assert all(d in L.ATTACK_SETS for p in profiles.values() for d in p["datasets"])
    # the notebook's grid (its datasets) finds the paper's Table 1 per dataset, under the names it logs
    paper = results.paper_numbers("02_gradient_leakage", grid=profiles["paper"]["datasets"])
    assert paper["dlg_label_acc_mnist"] == pytest.approx(0.899) and paper["idlg_label_acc_lfw"] == 1.0
    assert set(results.paper_numbers("02_gradient_leakage", grid=["mnist", "cifar10"])) == {
        "dlg_label_acc_mnist", "idlg_label_acc_mnist"}


# ----------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("name, shape", [("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32)),
                                         ("lfw_people", (1, 32, 32))])
def test_attack_set_shapes_and_seed(name, shape):
    a = L.attack_set(name, 5, generator=_gen(1))
    b = L.attack_set(name, 5, generator=_gen(1))
    assert a.images.shape == (5, *shape) and a.labels.shape == (5,)
    assert 0 <= a.images.min() and a.images.max() <= 1
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert int(a.labels.max()) < len(a.classes)


def test_attack_set_lfw_people_is_a_centre_crop():
    full = data.load("lfw_people", "all")
    a = L.attack_set("lfw_people", 2, generator=_gen(2))
    i = int(a.meta["index"][0])
    crop = full.images[i:i + 1, :, 7:54, :]                       # 62x47 -> the central 47x47
    ref = F.interpolate(crop, size=(32, 32), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    assert torch.allclose(a.images[:1], ref, atol=1e-6)


def test_attack_set_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        L.attack_set("imagenet", 2, generator=_gen())
    with pytest.raises(ValueError, match="n must be in"):
        L.attack_set("mnist", 0, generator=_gen())
    with pytest.raises(data.DataNotFoundError, match="lfw"):
        L.attack_set("lfw", 2, generator=_gen(), data_dir=tmp_path, full=True)
    assert data.info("lfw").load_subset is None


@pytest.fixture(scope="module")
def lfw_root(tmp_path_factory):
    """The miniature of lfw.tgz (tests/miniatures/leakage.py) in a temporary data root."""
    from miniatures import write_some
    return write_some(tmp_path_factory.mktemp("lfw_miniature"), "leakage")


def test_lfw_full_reader_reads_the_release_layout(lfw_root):
    from miniatures import leakage as mini
    ds = data.load("lfw", "all", full=True, data_dir=lfw_root)
    people = sorted(mini.PEOPLE)
    assert ds.classes == [p for p, _ in people] and len(ds) == mini.SIZES["lfw"]["all"]
    assert torch.bincount(ds.labels).tolist() == [n for _, n in people]  # identities of 1 to 9 images, all read
    files = [f"lfw/{p}/{p}_{k:04d}.jpg" for p, n in people for k in range(1, n + 1)]
    assert [Path(f).relative_to(lfw_root).as_posix() for f in ds.meta["files"]] == files
    for i in (0, len(ds) - 1):
        assert ds.images[i].shape == (3, 250, 250) and 0 <= float(ds.images[i].min()) <= float(ds.images[i].max()) <= 1


def test_attack_set_lfw_is_32px_rgb(lfw_root):
    from miniatures import leakage as mini
    a = L.attack_set("lfw", 5, generator=_gen(), data_dir=lfw_root, full=True)
    b = L.attack_set("lfw", 5, generator=_gen(), data_dir=lfw_root, full=True)
    assert a.images.shape == (5, 3, 32, 32) and a.images.dtype == torch.float32 and torch.equal(a.images, b.images)
    assert len(a.classes) == len(mini.PEOPLE)
    ref = data.load("lfw", "all", full=True, data_dir=lfw_root, size=32).images[int(a.meta["index"][0])]
    assert torch.equal(a.images[0], ref) and torch.equal(a.labels, b.labels)


def test_smoke_profile_is_the_paper_path_on_the_miniatures():
    """smoke shrinks counts only, attacks the paper's datasets, and asks for no more images than the miniatures
    hold; its trials span more than one chunk, as the paper's do."""
    from miniatures import sizes
    profiles = _notebook_profiles()
    paper, smoke = profiles["paper"], profiles["smoke"]
    assert smoke["datasets"] == paper["datasets"] and smoke["full_data"]
    assert {k for k in paper if smoke[k] != paper[k]} <= {
        "seeds", "n_label", "n_recon", "iterations", "snapshot_every", "batch_sizes", "n_batch", "n_public", "ig_n",
        "ig_steps", "relu_iterations", "defence_n", "defence_iterations", "chunk"}
    for name in smoke["datasets"]:
        assert smoke["n_label"] <= sizes()[name][L.ATTACK_SETS[name]["split"]], name
    assert smoke["chunk"] < 2 * smoke["seeds"] * smoke["n_recon"] and smoke["defence_n"] <= smoke["chunk"]
    assert max(smoke["batch_sizes"]) + smoke["n_public"] <= smoke["n_label"]


# ----------------------------------------------------------------------------------------------- victims
def test_sample_victims_shapes_range_seed():
    model = models.LeNetSigmoid(3, 10, 32)
    p = L.sample_victims(model, 4, generator=_gen(3))
    q = L.sample_victims(model, 4, generator=_gen(3))
    assert list(p) == [k for k, _ in model.named_parameters()]
    for (k, v), (_, w) in zip(p.items(), model.named_parameters()):
        assert v.shape == (4, *w.shape) and -0.5 <= v.min() and v.max() <= 0.5
        assert torch.equal(v, q[k])
    with pytest.raises(ValueError, match="n must be"):
        L.sample_victims(model, 0, generator=_gen())


def test_batched_forward_matches_functional_call(tiny):
    model, params, x, _, _ = tiny
    out = L.batched_forward(model, params, x)
    ref = torch.stack([functional_call(model, {k: v[i] for k, v in params.items()}, (x[i:i + 1],))[0]
                       for i in range(3)])
    assert out.shape == (3, 4) and torch.allclose(out, ref, atol=1e-5)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))     # not a LeNet: the generic vmap path
    p = L.sample_victims(other, 3, generator=_gen(4))
    ref = torch.stack([functional_call(other, {k: v[i] for k, v in p.items()}, (x[i:i + 1],))[0] for i in range(3)])
    assert torch.allclose(L.batched_forward(other, p, x), ref, atol=1e-6)


def test_victim_gradients_match_autograd(tiny):
    model, params, x, y, grads = tiny
    assert list(grads) == list(params) and all(grads[k].shape == params[k].shape for k in params)
    for i in range(3):
        net = models.LeNetSigmoid(1, 4, 8)
        net.load_state_dict({k: v[i] for k, v in params.items()})
        ref = torch.autograd.grad(F.cross_entropy(net(x[i:i + 1]), y[i:i + 1]), list(net.parameters()))
        for r, k in zip(ref, grads):
            assert torch.allclose(grads[k][i], r, atol=1e-6)
    with pytest.raises(ValueError, match="one entry per attack"):
        L.victim_gradients(model, params, x[:2], y[:2])


def test_default_init_and_relu_victims(tiny):
    model, _, x, y, _ = tiny
    p = L.sample_victims(model, 2, generator=_gen(20), init="default")
    assert float(p["body.0.weight"].abs().max()) <= 1 / 5 and float(p["fc.weight"].abs().max()) <= 1 / 48 ** 0.5
    assert float(p["fc.bias"].abs().max()) <= 1 / 48 ** 0.5
    relu = copy.deepcopy(model)
    relu.body = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.Sigmoid) else m for m in relu.body])
    ref = torch.stack([functional_call(relu, {k: v[i] for k, v in p.items()}, (x[i:i + 1],))[0] for i in range(2)])
    assert torch.allclose(L.batched_forward(model, p, x[:2], "relu"), ref, atol=1e-5)
    with pytest.raises(ValueError, match="activation must be"):
        L.batched_forward(model, p, x[:2], "tanh")
    with pytest.raises(ValueError, match="init must be"):
        L.sample_victims(model, 2, generator=_gen(), init="xavier")


def test_victim_gradients_of_a_batch_are_the_mean_loss_gradient(tiny):
    model, params, x, y, _ = tiny
    one = {k: v[:1] for k, v in params.items()}
    g = L.victim_gradients(model, one, x, y, batch=3)
    net = models.LeNetSigmoid(1, 4, 8)
    net.load_state_dict({k: v[0] for k, v in params.items()})
    ref = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    assert all(torch.allclose(g[k][0], r, atol=1e-6) for k, r in zip(g, ref))
    with pytest.raises(ValueError, match="batch=2"):
        L.victim_gradients(model, one, x, y, batch=2)


# ----------------------------------------------------------------------------------------------- the core loss
def test_gradient_distance_against_a_readable_loop(tiny):
    _, params, _, _, grads = tiny
    other = {k: v + 0.01 * torch.randn(v.shape, generator=_gen(5)) for k, v in grads.items()}
    got = L.gradient_distance(other, grads)
    ref = torch.tensor([sum(float(((other[k][i] - grads[k][i]) ** 2).sum()) for k in grads) for i in range(3)])
    assert got.shape == (3,) and torch.allclose(got, ref, rtol=1e-5)
    assert torch.allclose(L.gradient_distance(list(other.values()), list(grads.values())), got)
    assert torch.equal(L.gradient_distance(grads, grads), torch.zeros(3))


def test_gradient_distance_errors(tiny):
    _, _, _, _, grads = tiny
    with pytest.raises(ValueError, match="different layers"):
        L.gradient_distance(grads, {("x" + k): v for k, v in grads.items()})
    with pytest.raises(ValueError, match="same non-zero number"):
        L.gradient_distance(list(grads.values())[:2], list(grads.values()))
    with pytest.raises(ValueError, match="shapes differ"):
        L.gradient_distance([torch.zeros(3, 2)], [torch.zeros(3, 4)])


def test_cosine_distance_and_total_variation_against_readable_code(tiny):
    _, _, x, _, grads = tiny
    other = [v + 0.05 * torch.randn(v.shape, generator=_gen(21)) for v in grads.values()]
    got = L.cosine_distance(other, list(grads.values()))
    for i in range(3):
        u = torch.cat([t[i].flatten() for t in other])
        v = torch.cat([t[i].flatten() for t in grads.values()])
        assert float(got[i]) == pytest.approx(1 - float(F.cosine_similarity(u, v, dim=0)), abs=1e-6)
    assert torch.equal(L.cosine_distance(dict(zip(grads, other)), grads), got)      # dicts, as gradient_distance
    with pytest.raises(ValueError, match="shapes differ"):
        L.cosine_distance([torch.zeros(3, 2)], [torch.zeros(3, 4)])
    assert torch.allclose(L.cosine_distance(list(grads.values()), [2 * v for v in grads.values()]), torch.zeros(3),
                          atol=1e-6)
    tv = L.total_variation(x)
    i = 1
    ref = (x[i, :, :, 1:] - x[i, :, :, :-1]).abs().mean() + (x[i, :, 1:, :] - x[i, :, :-1, :]).abs().mean()
    assert tv.shape == (3,) and float(tv[i]) == pytest.approx(float(ref), rel=1e-6)
    assert torch.equal(L.total_variation(torch.ones(2, 3, 4, 4)), torch.zeros(2))
    with pytest.raises(ValueError, match="same non-zero number"):
        L.cosine_distance([], [])
    with pytest.raises(ValueError, match=r"\(A, C, H, W\)"):
        L.total_variation(x[0])


# ----------------------------------------------------------------------------------------------- iDLG's label rule
def test_extract_label_single_and_batched(tiny):
    _, _, _, y, grads = tiny
    w = grads["fc.weight"]
    assert L.extract_label(w).tolist() == y.tolist()
    one = L.extract_label(w[1])
    assert one.shape == () and int(one) == 3
    # the rule by hand: exactly one row of dL/dW = (p - y) a^T sums negative, the true class
    assert [(w[i].sum(1) < 0).nonzero().flatten().tolist() for i in range(3)] == [[0], [3], [1]]


def test_extract_label_is_always_right_on_many_victims():
    g = _gen(6)
    model = models.LeNetSigmoid(3, 100, 32)
    ds = L.attack_set("cifar10", 64, generator=g)
    labels = torch.randint(0, 100, (64,), generator=g)        # any of 100 classes
    grads = L.victim_gradients(model, L.sample_victims(model, 64, generator=g), ds.images, labels)
    assert torch.equal(L.extract_label(grads["fc.weight"]), labels)


def test_extract_label_errors(tiny):
    model, params, x, y, grads = tiny
    with pytest.raises(ValueError, match=r"\(K, F\) or \(A, K, F\)"):
        L.extract_label(torch.zeros(4))
    with pytest.raises(ValueError, match="at least two classes"):
        L.extract_label(torch.ones(1, 5))
    with pytest.raises(ValueError, match="all-zero"):
        L.extract_label(torch.zeros(4, 5))
    # a batch of two samples: the mean gradient is rank two
    net = models.LeNetSigmoid(1, 4, 8)
    net.load_state_dict({k: v[0] for k, v in params.items()})
    loss = F.cross_entropy(net(torch.cat([x[:1], x[1:2]])), torch.tensor([0, 3]))
    gw = torch.autograd.grad(loss, net.fc.weight)[0]
    with pytest.raises(ValueError, match="not rank one.*batch size"):
        L.extract_label(gw)
    assert int(L.extract_label(gw, strict=False)) in (0, 3)
    # features of both signs (e.g. tanh) break the rule
    a = torch.tensor([0.5, -0.2, 0.1])
    with pytest.raises(ValueError, match="both signs"):
        L.extract_label(torch.outer(torch.tensor([0.3, -0.5, 0.2]), a))
    # a soft (smoothed) label: several negative rows
    with pytest.raises(ValueError, match="more than one row"):
        L.extract_label(torch.outer(torch.tensor([0.3, -0.1, -0.2]), a.abs()))
    noisy = grads["fc.weight"] + 1e-3 * torch.randn(grads["fc.weight"].shape, generator=_gen(7))
    with pytest.raises(ValueError, match="not rank one"):
        L.extract_label(noisy)
    assert L.extract_label(noisy, strict=False).shape == (3,)


def test_count_labels_is_exact_with_the_true_mean_prediction():
    g = _gen(22)
    model = models.LeNetSigmoid(1, 10, 28)
    ds = L.attack_set("mnist", 64, generator=g)
    b = 16
    params = L.sample_victims(model, 4, generator=g)
    grads = L.victim_gradients(model, params, ds.images, ds.labels, batch=b)
    rep = {k: v.repeat_interleave(b, 0) for k, v in params.items()}
    pbar = L.batched_forward(model, rep, ds.images).softmax(-1).view(4, b, 10).mean(1).detach()
    counts = L.count_labels(grads["fc.bias"], pbar, b)
    true = F.one_hot(ds.labels, 10).view(4, b, 10).sum(1)
    assert counts.dtype == torch.long and torch.equal(counts.sum(1), torch.full((4,), b))
    assert torch.equal(counts, true)
    with pytest.raises(ValueError, match="both be"):
        L.count_labels(grads["fc.bias"][0], pbar[0], b)
    with pytest.raises(ValueError, match="batch must be"):
        L.count_labels(grads["fc.bias"], pbar, 0)


def test_worked_solution_counts_like_the_kernel():
    sol = course.solution("02_gradient_leakage")
    g = _gen(23)
    bias = torch.randn((5, 7), generator=g) * 0.1
    pbar = torch.rand((5, 7), generator=g).softmax(-1)
    want = L.count_labels(bias, pbar, 9)
    assert torch.equal(torch.stack([sol.count_labels(b, p, 9) for b, p in zip(bias, pbar)]), want)


# ----------------------------------------------------------------------------------------------- batched L-BFGS
def _problems(a=3, d=6, seed=0):
    g = _gen(seed)
    q = torch.randn((a, d, d), generator=g, dtype=torch.float64)
    q = q @ q.transpose(1, 2) + torch.eye(d, dtype=torch.float64)
    c = torch.randn((a, d), generator=g, dtype=torch.float64)
    f = lambda x, i: 0.5 * x @ q[i] @ x + c[i] @ x + 0.1 * (x ** 4).sum()

    def fun(x, idx):
        x = x.detach().requires_grad_(True)
        loss = torch.stack([f(x[j], i) for j, i in enumerate(idx.tolist())])
        return loss.detach(), torch.autograd.grad(loss.sum(), x)[0]
    return f, fun, torch.randn((a, d), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("history", [100, 3])
def test_lbfgs_matches_torch_optim_lbfgs(history):
    f, fun, x0 = _problems()
    res = L.lbfgs(fun, x0, steps=5, max_iter=4, history_size=history)
    assert res["x"].shape == x0.shape and res["losses"].shape == (3, 6)
    for i in range(3):
        xi = x0[i].clone().requires_grad_(True)
        opt = torch.optim.LBFGS([xi], lr=1, max_iter=4, history_size=history)

        def closure():
            opt.zero_grad()
            loss = f(xi, i)
            loss.backward()
            return loss
        losses = [closure().item()]
        for _ in range(5):
            opt.step(closure)
            losses.append(closure().item())
        assert torch.allclose(res["x"][i], xi.detach(), atol=1e-10)
        assert torch.allclose(res["losses"][i], torch.tensor(losses, dtype=torch.float64), atol=1e-10)
        assert int(res["evals"][i]) == opt.state[xi]["func_evals"] + 1   # + the evaluation of the final point


def test_lbfgs_stop_loss_divergence_and_callback():
    f, fun, x0 = _problems(seed=1)
    seen = []
    res = L.lbfgs(fun, x0, steps=8, stop_loss=-1e9, callback=lambda s, x: seen.append(s))
    assert seen == list(range(9)) and not res["converged"].any()
    low = float(res["losses"][:, -1].max())
    res = L.lbfgs(fun, x0, steps=8, stop_loss=low + 1e-3)
    assert res["converged"].all() and (res["evals"] <= 8 * 20 + 1).all()

    def nan_beyond(x, idx):       # problem 1 runs downhill forever and has no finite value beyond |x| = 5
        x = x.detach().requires_grad_(True)
        fs = [(x[j] - 1).pow(2).sum() if i != 1 else -x[j].sum() for j, i in enumerate(idx.tolist())]
        loss = torch.stack(fs)
        g = torch.autograd.grad(loss.sum(), x)[0]
        bad = (idx == 1) & (x.detach().norm(dim=1) > 5)
        return torch.where(bad, float("nan"), loss.detach()), torch.where(bad[:, None], float("nan"), g)
    res = L.lbfgs(nan_beyond, torch.zeros(3, 4, dtype=torch.float64), steps=5)
    assert res["diverged"].tolist() == [False, True, False]
    assert torch.isfinite(res["x"]).all() and torch.isfinite(res["losses"]).all()
    assert float(res["x"][1].norm()) <= 5 and torch.allclose(res["x"][0], torch.ones(4, dtype=torch.float64))


def test_lbfgs_errors():
    _, fun, x0 = _problems()
    with pytest.raises(ValueError, match="x0 must be"):
        L.lbfgs(fun, x0[0], steps=1)
    with pytest.raises(ValueError, match="max_iter"):
        L.lbfgs(fun, x0, steps=1, max_iter=0)


# ----------------------------------------------------------------------------------------------- an attack
def test_idlg_on_the_kernels_reconstructs_a_tiny_image(tiny):
    """The notebook's attack in a few lines: iDLG's label, then L-BFGS on the gradient distance."""
    model, params, x, y, grads = tiny
    labels = L.extract_label(grads["fc.weight"])
    onehot, targets = F.one_hot(labels, 4).float(), list(grads.values())

    def objective(z, idx):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            dummy = L.dummy_gradients(model, {k: v[idx] for k, v in params.items()}, z.view(-1, 1, 8, 8), onehot[idx])
            loss = L.gradient_distance(dummy, [t[idx] for t in targets])
            return loss.detach(), torch.autograd.grad(loss.sum(), z)[0]
    out = L.lbfgs(objective, torch.randn((3, 64), generator=_gen(8)), steps=60, stop_loss=1e-6)
    assert torch.equal(labels, y) and out["losses"].shape == (3, 61)
    assert (L.mse(out["x"].view(3, 1, 8, 8), x) < 1e-3).float().mean() >= 2 / 3
    assert int(out["converged"].sum()) >= 2


# ----------------------------------------------------------------------------------------------- metrics, defences
def test_mse_psnr_ssim_wilson():
    truth = torch.zeros(2, 1, 2, 2)
    recon = torch.stack([torch.full((1, 2, 2), 0.1), torch.full((1, 2, 2), 0.01)])
    assert torch.allclose(L.mse(recon, truth), torch.tensor([1e-2, 1e-4]))
    assert torch.allclose(L.psnr(recon, truth), torch.tensor([20.0, 40.0]))
    with pytest.raises(ValueError, match="shapes differ"):
        L.mse(recon, truth[:1])
    img = torch.rand((3, 3, 16, 16), generator=_gen(24))
    s = L.ssim(img, img)
    assert s.shape == (3,) and torch.allclose(s, torch.ones(3))
    assert (L.ssim(torch.rand((3, 3, 16, 16), generator=_gen(25)), img) < 0.5).all()
    assert (L.ssim(img + 5, img) < 1).all()                      # clamped to [0, 1] first
    with pytest.raises(ValueError, match="one shape"):
        L.ssim(img, img[:2])
    lo, hi = L.wilson(8, 10)                                     # the textbook value: 0.490 to 0.943
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert L.wilson(0, 33)[0] == 0 and L.wilson(33, 33)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="successes"):
        L.wilson(4, 3)


def test_defend_noise_and_prune(tiny):
    _, _, _, _, grads = tiny
    a = L.defend(grads, "noise", 0.1, generator=_gen(12))
    b = L.defend(grads, "noise", 0.1, generator=_gen(12))
    diff = torch.cat([(a[k] - grads[k]).flatten() for k in grads])
    assert all(torch.equal(a[k], b[k]) for k in grads) and 0.09 < float(diff.std()) < 0.11
    assert all(torch.equal(v, grads[k]) for k, v in L.defend(grads, "noise", 0.0, generator=_gen()).items())
    p = L.defend(grads, "prune", 0.5)
    for k, v in grads.items():
        flat, kept = v.flatten(1), p[k].flatten(1)
        n_cut = int(0.5 * flat.shape[1])
        assert ((kept == 0).sum(1) >= n_cut).all()
        for i in range(3):                           # the kept entries are the largest in magnitude, unchanged
            nz = kept[i] != 0
            assert torch.equal(kept[i][nz], flat[i][nz])
            if nz.any() and n_cut:
                assert flat[i][nz].abs().min() >= flat[i][~nz].abs().max()
    assert all(torch.equal(v, grads[k]) for k, v in L.defend(grads, "prune", 0.0).items())
    with pytest.raises(ValueError, match="kind must be"):
        L.defend(grads, "clip", 0.1)
    with pytest.raises(ValueError, match="prune level"):
        L.defend(grads, "prune", 1.0)
    with pytest.raises(ValueError, match="std"):
        L.defend(grads, "noise", -1.0)
