"""Unit tests of vklib.aesthetics (personalised aesthetics with residual adapters): shapes, small readable
references or autograd, determinism under a seed, and the error cases. Fast: tiny inputs only."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from vklib import aesthetics as A
from vklib import course, data, models, results


def _imgs(n=4, size=8, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    model = A.build_model("small", widths=(4, 6, 8, 10), hidden=5).eval()
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.3, generator=g)
            mod.running_var.uniform_(0.5, 2.0, generator=g)
    return model


# ------------------------------------------------------------------------------------------------ image properties
def test_colourfulness_matches_numpy_reference():
    x = _imgs(3, 5)
    got = A.colourfulness(x)
    for i in range(3):
        r, g, b = (x[i, c].numpy().astype(np.float64).ravel() for c in range(3))
        rg, yb = r - g, 0.5 * (r + g) - b
        ref = np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
        assert abs(got[i].item() - ref) < 1e-5
    assert A.colourfulness(torch.full((2, 3, 4, 4), 0.5)).abs().max() < 1e-6   # grey has no colour


def test_colourfulness_gradcheck():
    x = _imgs(2, 4).double().requires_grad_(True)
    assert torch.autograd.gradcheck(A.colourfulness, (x,))


def test_laplacian_variance_reference_and_errors():
    x = _imgs(2, 6)
    y = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).numpy().astype(np.float64)
    for i in range(2):
        lap = (y[i, :-2, 1:-1] + y[i, 2:, 1:-1] + y[i, 1:-1, :-2] + y[i, 1:-1, 2:] - 4 * y[i, 1:-1, 1:-1])
        assert abs(A.laplacian_variance(x)[i].item() - lap.var()) < 1e-5
    assert A.laplacian_variance(torch.full((1, 3, 5, 5), 0.3)).item() < 1e-10
    with pytest.raises(ValueError, match="3x3"):
        A.laplacian_variance(torch.rand(1, 3, 2, 8))


def test_image_properties_shapes_and_values():
    x = _imgs(5, 8)
    p = A.image_properties(x)
    assert p.shape == (5, len(A.PROPERTIES))
    grey = torch.full((1, 3, 6, 6), 0.4)
    pg = A.image_properties(grey)[0]
    assert abs(pg[0] - 0.4) < 1e-6 and pg[1] < 1e-6 and pg[4] == 0 and abs(pg[5]) < 1e-7
    black = torch.zeros(1, 3, 4, 4)
    assert A.image_properties(black)[0, 4] == 0                       # saturation defined as 0 at max = 0
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    pr = A.image_properties(red)[0]
    assert abs(pr[4] - 1.0) < 1e-6 and abs(pr[5] - 1.0) < 1e-6       # fully saturated, warm
    for bad in (torch.rand(2, 1, 8, 8), torch.rand(3, 8, 8)):
        with pytest.raises(ValueError, match="RGB"):
            A.image_properties(bad)


# ------------------------------------------------------------------------------------------------ simulated raters
def test_draw_users_shapes_determinism_and_errors():
    u1 = A.draw_users(7, spread=0.5, ideal_spread=0.3, generator=torch.Generator().manual_seed(1))
    u2 = A.draw_users(7, spread=0.5, ideal_spread=0.3, generator=torch.Generator().manual_seed(1))
    assert u1.weights.shape == (7, len(A.PROPERTIES)) and u1.ideal.shape == (7, len(A.POPULATION["peaked"]))
    assert torch.equal(u1.weights, u2.weights) and torch.equal(u1.ideal, u2.ideal)
    u0 = A.draw_users(3, spread=0.0, ideal_spread=0.0)
    assert torch.allclose(u0.weights, torch.tensor(A.POPULATION["weights"]).expand(3, -1))
    assert len(u1[[0, 2]]) == 2 and len(u1[1]) == 1
    assert u1.content.shape == (7, 0)
    uc = A.draw_users(7, spread=0.5, ideal_spread=0.3, content_spread=2.0, n_classes=3,
                      generator=torch.Generator().manual_seed(1))
    assert uc.content.shape == (7, 3) and torch.equal(uc.weights, u1.weights)   # content drawn after the rest
    z, cls = torch.randn(5, len(A.PROPERTIES)), torch.tensor([0, 2, 1, 1, 0])
    assert torch.allclose(uc.latent(z, cls) - u1.latent(z), uc.content[:, cls], atol=1e-6)
    with pytest.raises(ValueError, match="classes"):
        uc.latent(z)
    with pytest.raises(ValueError, match="n must be"):
        A.draw_users(0, spread=0.1, ideal_spread=0.1)
    with pytest.raises(ValueError, match="spread"):
        A.draw_users(2, spread=-1, ideal_spread=0.1)


def test_latent_and_rate_reference():
    users = A.draw_users(2, spread=0.5, ideal_spread=0.5, generator=torch.Generator().manual_seed(0))
    z = torch.randn(4, len(A.PROPERTIES), generator=torch.Generator().manual_seed(1))
    lat = users.latent(z)
    assert lat.shape == (2, 4)
    b, s = A.PROPERTIES.index("brightness"), A.PROPERTIES.index("saturation")
    for u in range(2):
        for i in range(4):
            ref = float(users.weights[u] @ z[i]) - 0.5 * users.curvature * (
                (z[i, b] - users.ideal[u, 0]) ** 2 + (z[i, s] - users.ideal[u, 1]) ** 2)
            assert abs(lat[u, i].item() - ref) < 1e-5
    exact = A.rate(users, z, noise=0.0, stars=False)
    assert torch.allclose(exact, 3 + lat)
    stars = A.rate(users, z, noise=1.0, generator=torch.Generator().manual_seed(2))
    assert stars.shape == (2, 4) and stars.min() >= 1 and stars.max() <= 5 and torch.equal(stars, stars.round())
    again = A.rate(users, z, noise=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(stars, again)
    with pytest.raises(ValueError, match="z must be"):
        A.rate(users, z[:, :3], noise=0.1)
    with pytest.raises(ValueError, match="noise"):
        A.rate(users, z, noise=-0.1)


# ------------------------------------------------------------------------------------------------ metrics, protocol
def test_spearman_matches_scipy_and_edge_cases():
    a = torch.tensor([1.0, 2.0, 2.0, 5.0, 3.0])
    b = torch.tensor([2.0, 1.0, 4.0, 5.0, 3.0])
    assert abs(A.spearman(a, b) - spearmanr(a.numpy(), b.numpy()).statistic) < 1e-12
    assert A.spearman(a, a) == pytest.approx(1.0)
    assert A.spearman(torch.ones(5), b) == 0.0
    rows = A.spearman_rows(torch.stack([a, a]), torch.stack([b, a]), torch.tensor([[True] * 5, [True] * 4 + [False]]))
    assert torch.allclose(rows, torch.tensor([A.spearman(a, b), A.spearman(a[:4], a[:4])], dtype=rows.dtype))
    with pytest.raises(ValueError, match="equal length"):
        A.spearman(a, b[:3])


def test_kshot_draws_disjoint_and_deterministic():
    tr, te = A.kshot_draws(30, 10, draws=4, test_size=12, generator=torch.Generator().manual_seed(0))
    tr2, te2 = A.kshot_draws(30, 10, draws=4, test_size=12, generator=torch.Generator().manual_seed(0))
    assert tr.shape == (4, 10) and te.shape == (4, 12)
    assert torch.equal(tr, tr2) and torch.equal(te, te2)
    for d in range(4):
        assert not set(tr[d].tolist()) & set(te[d].tolist())
    tr, te = A.kshot_draws(30, 10, draws=1)
    assert te.shape == (1, 20)
    with pytest.raises(ValueError, match="cannot give"):
        A.kshot_draws(10, 9, draws=1)
    with pytest.raises(ValueError, match="k and draws"):
        A.kshot_draws(10, 0, draws=1)


def test_user_draws_uses_only_rated_images():
    r = torch.full((3, 20), float("nan"))
    r[0, :12] = 1.0
    r[1, 5:20] = 2.0
    r[2, ::2] = 3.0
    tr, te, rows = A.user_draws(r, 4, draws=2, generator=torch.Generator().manual_seed(0))
    assert tr.shape == (6, 4) and te.shape == (6, 11) and rows.tolist() == [0, 0, 1, 1, 2, 2]   # 15 rated - 4
    assert (te >= 0).sum(1).tolist() == [8, 8, 11, 11, 6, 6]                                # padded with -1
    for m in range(6):
        u, t = rows[m], te[m][te[m] >= 0]
        assert not torch.isnan(r[u, tr[m]]).any() and not torch.isnan(r[u, t]).any()
        assert not set(tr[m].tolist()) & set(t.tolist())
    tr, te, rows = A.user_draws(r, 4, draws=1, test_size=5)
    assert te.shape == (3, 5) and (te >= 0).all()
    with pytest.raises(ValueError, match=r"\(U, R\)"):
        A.user_draws(r[0], 4, draws=1)


# ------------------------------------------------------------------------------------------------ model
def test_build_model_shapes_and_errors(tmp_path):
    m = A.build_model("small", widths=(4, 6, 8, 10), hidden=5)
    x = _imgs(2, 32)
    assert m(x).shape == (2,) and m.features(x).shape == (2, 6, 8, 8)
    with pytest.raises(ValueError, match="backbone"):
        A.build_model("vgg")
    with pytest.raises(ValueError, match="4 widths"):
        A.build_model("small", widths=(4, 6))
    with pytest.raises(ValueError, match="weights"):
        A.build_model("small", weights="IMAGENET1K_V1")
    r = A.build_model("resnet18", hidden=8, weights=None)
    assert r.eval()(_imgs(1, 32)).shape == (1,) and len(r.tail) == 2
    with pytest.raises(models.WeightsNotFoundError, match="not found"):   # never a silent random start
        A.build_model("resnet18", weights=str(tmp_path / "missing.pth"))
    import torchvision
    plain = torchvision.models.resnet18(weights=None)
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    loaded = A.build_model("resnet18", weights=str(tmp_path / "plain.pth"))
    assert torch.equal(loaded.tail[0].conv1.weight, plain.layer4[0].conv1.weight)
    conv1_to_layer3 = torch.nn.Sequential(models.ImageNetNormalize(), *list(plain.children())[:7]).eval()
    with torch.no_grad():                                                  # the trunk: normalisation, conv1 .. layer3
        assert torch.allclose(loaded.eval().features(_imgs(1, 32)), conv1_to_layer3(_imgs(1, 32)))


def test_paper_backbone_without_imagenet_weights_is_an_error(tmp_path, monkeypatch):
    # the paper profile's ResNet-18 with no checkpoint in the torch hub cache: an error naming the file and the
    # folder it goes in, never a warning and a random start
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    with pytest.raises(models.WeightsNotFoundError) as err:
        A.build_model("resnet18", widths=None, hidden=256, weights="IMAGENET1K_V1")
    message = str(err.value)
    assert "resnet18: ImageNet weights not found at " + str(folder / "resnet18-") in message
    assert f"in {folder}" in message and "weights=None trains from random weights" in message


def test_init_user_params_and_count():
    m = _tiny_model()
    p = A.init_user_params(m, 3)
    assert p["tail.0.conv1.adapter"].shape == (3, 8, 6) and p["tail.0.conv2.adapter"].shape == (3, 8, 8)
    assert p["tail.1.conv1.adapter"].shape == (3, 10, 8) and p["head.0.weight"].shape == (3, 5, 10)
    assert p["head.2.weight"].shape == (3, 1, 5) and p["tail.1.bn2.bias"].shape == (3, 10)
    assert p["tail.0.downsample.1.weight"].shape == (3, 8)
    assert all(not t.requires_grad for t in p.values()) and p["tail.0.conv1.adapter"].abs().sum() == 0
    assert torch.equal(p["head.0.weight"][2], m.head[0].weight)
    norm = 3 * 2 * (8 + 10)                                             # bn1, bn2, downsample BN of two blocks
    expected = 8 * 6 + 8 * 8 + 10 * 8 + 10 * 10 + norm + 5 * 10 + 5 + 5 + 1
    assert A.user_parameter_count(m) == expected
    assert A.user_parameter_count(m, parts=("head",)) == 5 * 10 + 5 + 5 + 1
    assert {A.param_part(n) for n in p} == set(A.PARTS)
    pa = A.init_user_params(m, 2, stages="all")
    assert pa["trunk.1.adapter"].shape == (2, 4, 3) and pa["trunk.4.adapter"].shape == (2, 6, 4)
    assert pa["trunk.2.weight"].shape == (2, 4) and set(p) < set(pa)
    assert A.user_parameter_count(m, stages="all") == expected + 4 * 3 + 6 * 4 + 2 * (4 + 6)
    with pytest.raises(ValueError, match="n must be"):
        A.init_user_params(m, 0)
    with pytest.raises(ValueError, match="stages"):
        A.init_user_params(m, 1, stages="first")


def test_adapter_conv_against_loop_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 7, 7, generator=g)
    w = torch.randn(5, 4, 3, 3, generator=g)
    a = torch.randn(3, 5, 4, generator=g)
    for stride in (1, 2):
        y = A.adapter_conv(x, w, a, stride=stride)
        for m in range(3):
            ref = F.conv2d(x[m], w, stride=stride, padding=1) + F.conv2d(x[m], a[m][:, :, None, None], stride=stride)
            assert y.shape[:3] == (3, 2, 5) and (y[m] - ref).abs().max() < 1e-5
    with pytest.raises(ValueError, match="adapter_conv"):
        A.adapter_conv(x, w, a[:2])
    with pytest.raises(ValueError, match="adapter_conv"):
        A.adapter_conv(x[0], w, a)


def _copy_with(model, p, i):
    """A copy of ``model`` whose weights carry model ``i``'s user-specific parameters (adapters folded into the 3x3
    kernels' centres, affines and head copied)."""
    net = copy.deepcopy(model)
    with torch.no_grad():
        for name, t in p.items():
            if name.endswith(".adapter"):
                net.get_submodule(name[:-len(".adapter")]).weight += F.pad(t[i][:, :, None, None], (1, 1, 1, 1))
            else:
                net.get_parameter(name).copy_(t[i])
    return net


def test_adapted_forward_zero_adapters_is_generic_and_matches_reference():
    m = _tiny_model()
    feats = torch.randn(3, 4, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    p0 = A.init_user_params(m, 3)
    with torch.no_grad():
        out = A.adapted_forward(m, p0, feats)
        ref = torch.stack([m.forward_tail(feats[i]) for i in range(3)])
    assert out.shape == (3, 4) and (out - ref).abs().max() < 1e-5
    g = torch.Generator().manual_seed(2)
    for stages, x in (("last", feats), ("all", torch.rand(3, 4, 3, 32, 32, generator=g))):
        p = {n: t + 0.2 * torch.randn(t.shape, generator=g) for n, t in A.init_user_params(m, 3, stages=stages).items()}
        with torch.no_grad():
            out = A.adapted_forward(m, p, x)
            for i in range(3):                               # model i == a copy of the network with its parameters
                net = _copy_with(m, p, i)
                ref = net.forward_tail(x[i]) if stages == "last" else net(x[i])
                assert (out[i] - ref).abs().max() < 1e-4, stages
        with torch.no_grad():
            pooled = m.tail_pooled(feats[0])
        assert torch.allclose(A.head_forward(p0, pooled[None].expand(3, -1, -1)), ref.new_tensor(
            torch.stack([m.forward_tail(feats[0])] * 3)), atol=1e-5)
    with pytest.raises(ValueError, match="adapted_forward"):
        A.adapted_forward(m, p0, feats[0])


def test_batch_norm_re_estimation_matches_train_mode():
    m = _tiny_model()
    x = torch.rand(2, 6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    p = A.init_user_params(m, 2, stages="all")
    stats = A.init_bn_stats(m, p)
    assert stats["trunk.2.running_mean"].shape == (2, 4) and len(stats) == 2 * sum(
        n.endswith(".weight") and A.param_part(n) == "norm" for n in p)
    out = A.adapted_forward(m, p, x, stats=stats, train_bn=True)
    for i in range(2):                                        # nn.BatchNorm2d in training mode, one model at a time
        net = copy.deepcopy(m).train()
        with torch.no_grad():
            ref = net(x[i])
        assert (out[i] - ref).abs().max() < 1e-4
        for name, t in stats.items():
            assert torch.allclose(t[i], net.get_buffer(name), atol=1e-5), name
        with torch.no_grad():                                 # evaluation with the re-estimated statistics
            ev = A.adapted_forward(m, {n: v[i:i + 1] for n, v in p.items()}, x[i:i + 1],
                                   stats={n: v[i:i + 1] for n, v in stats.items()})
        assert (ev[0] - net.eval()(x[i])).abs().max() < 1e-4


def test_personal_loss_reference_autograd_and_errors():
    g = torch.Generator().manual_seed(0)
    init = {"a": torch.zeros(2, 3), "h": torch.ones(2, 4)}
    p = {n: (t + torch.randn(t.shape, generator=g)).requires_grad_(True) for n, t in init.items()}
    pred = torch.randn(2, 5, generator=g, requires_grad=True)
    r = torch.randn(2, 5, generator=g)
    loss = A.personal_loss(pred, r, p, init, 0.1)
    ref = sum(((pred[m] - r[m]) ** 2).mean() + 0.1 * ((p["a"][m] - init["a"][m]) ** 2).sum()
              + 0.1 * ((p["h"][m] - init["h"][m]) ** 2).sum() for m in range(2))
    assert abs(loss.item() - ref.item()) < 1e-5
    gp, ga = torch.autograd.grad(loss, (pred, p["a"]))
    assert torch.allclose(gp, 2 * (pred - r) / 5) and torch.allclose(ga, 0.2 * (p["a"] - init["a"]))
    with pytest.raises(ValueError, match="both be"):
        A.personal_loss(pred[0], r[0], p, init, 0.1)
    with pytest.raises(ValueError, match="offset_decay"):
        A.personal_loss(pred, r, p, init, -1)


# ------------------------------------------------------------------------------------------------ enhancement
def test_adjust_identity_reference_and_errors():
    x = _imgs(2, 6) * 0.8 + 0.1
    assert torch.allclose(A.adjust(x, 0.0, 1.0, 1.0), x, atol=1e-5)
    assert torch.allclose(A.adjust(x, 0.05, 1.0, 1.0), (x + 0.05).clamp(0, 1), atol=1e-6)
    assert torch.allclose(A.adjust(x, 0.0, 1.3, 1.0), (x * 1.3).clamp(0, 1), atol=1e-6)     # kornia: a factor
    grey = A.adjust(x, 0.0, 1.0, 0.0)
    assert (grey.amax(1) - grey.amin(1)).max() < 1e-5                                     # no saturation left
    with pytest.raises(ValueError, match="RGB"):
        A.adjust(x[:, :1], 0.0, 1.0, 1.0)


# ------------------------------------------------------------------------------------------------ data
def _flickr_layout(root, per_worker_csv=False):
    from PIL import Image
    folder = root / "flickr_aes"
    (folder / "40K").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(folder / "40K" / f"im{i}.jpg")
    rows = [("w1", "im0.jpg", 5), ("w1", "im1.jpg", 3), ("w2", "im1.jpg", 4), ("w2", "im2.jpg", 2),
            ("w3", "im3.jpg", 1), ("w3", "im2.jpg", 2)]
    if per_worker_csv:
        (folder / "workers").mkdir()
        for w in ("w1", "w2", "w3"):
            lines = ["image,score"] + [f"{im},{s}" for ww, im, s in rows if ww == w]
            (folder / "workers" / f"{w}.csv").write_text("\n".join(lines) + "\n")
    else:
        lines = [" worker, imagePair, score"] + [f"{w},{im},{s}" for w, im, s in rows]
        (folder / "FLICKR-AES_image_labeled_by_each_worker.csv").write_text("\n".join(lines) + "\n")
    (folder / "test_workers.txt").write_text("w3\n")
    return folder


@pytest.mark.parametrize("per_worker_csv", [False, True])
def test_flickr_loader_layouts(tmp_path, per_worker_csv):
    _flickr_layout(tmp_path, per_worker_csv)
    train = data.load("flickr_aes", "train", full=True, data_dir=tmp_path, size=8)
    test = data.load("flickr_aes", "test", full=True, data_dir=tmp_path)
    # im2, rated by the test worker w3, is held out of the training split (the generic model never sees it)
    assert train.meta["files"] == ["im0.jpg", "im1.jpg"] and test.meta["_workers"] == ["w3"]
    assert torch.allclose(train.meta["mean_score"], torch.tensor([5.0, 3.5]))
    assert train.images[0].shape == (3, 8, 8) and test.images[0].shape == (3, 10, 12)
    idx, sc = test.meta["_ratings"]["w3"]
    assert [test.meta["files"][i] for i in idx] == ["im3.jpg", "im2.jpg"] and sc.tolist() == [1.0, 2.0]


def test_flickr_loader_errors(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="flickr_aes"):
        data.load("flickr_aes", "train", full=True, data_dir=tmp_path)
    with pytest.raises(data.DataNotFoundError, match="no shipped subset"):
        data.load("flickr_aes", "train")
    folder = _flickr_layout(tmp_path)
    (folder / "test_workers.txt").unlink()
    with pytest.raises(data.DataNotFoundError, match="test_workers"):
        data.load("flickr_aes", "test", full=True, data_dir=tmp_path)
    (folder / "test_workers.txt").write_text("w9\n")
    with pytest.raises(data.DataError, match="without ratings"):
        data.load("flickr_aes", "test", full=True, data_dir=tmp_path)


@pytest.fixture(scope="module")
def flickr(tmp_path_factory):
    """The FLICKR-AES miniature (tests/miniatures/aesthetics.py), written once."""
    from miniatures import write_some
    return write_some(tmp_path_factory.mktemp("flickr_aes"), "aesthetics")


def test_flickr_miniature_ratings_workers_and_splits(flickr):
    import csv
    from miniatures import aesthetics as mini
    with open(flickr / "flickr_aes" / "FLICKR-AES_image_labeled_by_each_worker.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["worker", " imagePair", " score"]                     # the release's header, spaces and all
    ratings = {}
    for w, name, score in rows[1:]:
        ratings.setdefault(w, {})[name] = int(score)
    train = data.load("flickr_aes", "train", full=True, data_dir=flickr, size=16)
    test = data.load("flickr_aes", "test", full=True, data_dir=flickr, size=16)
    assert test.meta["_workers"] == mini.TEST_WORKERS and sorted(train.meta["_workers"]) == sorted(mini.TRAIN_WORKERS)
    assert not set(train.meta["files"]) & set(test.meta["files"])         # no test photo trains the generic model
    assert len(train) == 12 and len(test) == 108 and test.images[0].shape == (3, 16, 16)
    for w in mini.TEST_WORKERS:                                             # each test worker's ratings, as written
        idx, sc = test.meta["_ratings"][w]
        assert len(idx) == 105 and {test.meta["files"][i]: int(s) for i, s in zip(idx, sc)} == ratings[w]
    for i, name in enumerate(train.meta["files"]):                          # mean of the training workers' scores
        given = [r[name] for w, r in ratings.items() if w in mini.TRAIN_WORKERS and name in r]
        assert len(given) == 2 and train.meta["mean_score"][i].item() == pytest.approx(sum(given) / 2)
    # the paper profile's protocol on it: both k = 10 and k = 100 leave held-out ratings
    ratings = torch.full((2, len(test)), float("nan"))                      # (workers, photos), as the notebook does
    for u, w in enumerate(mini.TEST_WORKERS[:2]):
        idx, sc = test.meta["_ratings"][w]
        ratings[u, idx] = sc
    assert set(ratings[~torch.isnan(ratings)].tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    for k in (10, 100):
        tr, te, rows_ = A.user_draws(ratings, k, draws=1, test_size=0, generator=torch.Generator().manual_seed(0))
        assert tr.shape == (2, k) and te.shape == (2, 105 - k) and rows_.tolist() == [0, 1]
        for m in range(2):
            assert not set(tr[m].tolist()) & set(te[m].tolist())


def test_paper_numbers_use_the_recorded_scales():
    # the paper's numbers stand beside the run's metrics of the same name: Spearman's rho as a fraction in [-1, 1]
    # (not percent), parameter counts as whole numbers (none transcribed yet; notebook 10 says why)
    for key, value in results.paper_numbers("10_personalised_aesthetics").items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), key
        if key.startswith("spearman_"):
            assert -1.0 <= value <= 1.0, f"{key} must be a fraction in [-1, 1], got {value}"
        if key.endswith("_params"):
            assert value >= 1 and float(value).is_integer(), f"{key} must be a count, got {value}"


def test_worked_solution_matches_adapter_conv():
    sol = course.solution("10_personalised_aesthetics")
    g = torch.Generator().manual_seed(1)
    x, w, a = torch.randn(2, 5, 3, 9, 9, generator=g), torch.randn(4, 3, 3, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    for stride in (1, 2):
        mine = torch.stack([sol.adapter_conv_reference(x[m], w, a[m], stride) for m in range(2)])
        assert torch.allclose(mine, A.adapter_conv(x, w, a, stride=stride), atol=1e-5)
