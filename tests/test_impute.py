"""vklib.impute: Mean Teacher and learning to impute (L2I) kernels, networks, views, metrics, readers; the worked
solution of notebook 05's exercise."""
import pytest
import torch
from torch import nn

from vklib import course, data, impute, landmarks, results, train

C, R = "classification", "regression"


def _tiny_net(k=3, d=16, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 5), nn.Tanh(), nn.Linear(5, k)).double()


def _batch(n, seed, d=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, d // 4, generator=g, dtype=torch.float64)


def _params(net):
    return {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}


def _finite_diff(f, x, eps=1e-6):
    out = torch.zeros_like(x)
    for i in range(x.numel()):
        d = torch.zeros_like(x).view(-1)
        d[i] = eps
        d = d.view_as(x)
        out.view(-1)[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return out


# ----------------------------------------------------------------------------------------------- losses
def test_impute_and_losses_match_readable_formulas():
    z = torch.randn(4, 3)
    assert torch.allclose(impute.impute(z, C), torch.exp(z) / torch.exp(z).sum(1, keepdim=True))
    assert impute.impute(z, R) is z
    y = torch.tensor([0, 2, 1, 1])
    assert torch.allclose(impute.supervised_loss(z, y, C), -torch.log_softmax(z, 1)[torch.arange(4), y].mean())
    t = torch.rand(4, 3)
    assert torch.allclose(impute.supervised_loss(z, t, R), ((z - t) ** 2).mean())  # nn.MSELoss, the official
    p = torch.softmax(z, 1)
    assert torch.allclose(impute.consistency_loss(z, t, C), ((p - t) ** 2).mean())  # the official SemiLoss Lu
    assert torch.allclose(impute.consistency_loss(z, t, R), ((z - t) ** 2).mean())
    assert torch.allclose(impute.virtual_loss(z, t, C), ((p - t) ** 2).sum())  # summed over the batch
    assert torch.allclose(impute.virtual_loss(z, t, R), ((torch.tanh(z) - torch.tanh(t)) ** 2).mean())
    with pytest.raises(ValueError, match="task must be one of classification, regression"):
        impute.impute(z, "ranking")
    with pytest.raises(ValueError, match="differ in shape"):
        impute.consistency_loss(z, t[:, :2], C)
    with pytest.raises(ValueError, match="differ in shape"):
        impute.supervised_loss(z, t[:3], R)
    with pytest.raises(ValueError, match="need labels of shape"):
        impute.supervised_loss(z, y[:3], C)


def test_losses_give_one_value_per_member():
    out, t, y = torch.randn(3, 5, 4), torch.rand(3, 5, 4), torch.randint(0, 4, (3, 5))
    for task, target in ((C, y), (R, t)):
        per = impute.supervised_loss(out, target, task)
        assert per.shape == (3,) and torch.allclose(per[1], impute.supervised_loss(out[1], target[1], task))
    for fn in (impute.consistency_loss, impute.virtual_loss):
        for task in (C, R):
            per = fn(out, t, task)
            assert per.shape == (3,) and torch.allclose(per[2], fn(out[2], t[2], task))


def test_rampup_is_the_official_linear_schedule():
    assert impute.rampup(5, 10) == 0.5 and impute.rampup(-1, 10) == 0.0 and impute.rampup(25, 10) == 1.0
    assert impute.rampup(3, 0) == 1.0 and impute.rampup(0, 10) == 0.0


def test_ema_update_is_the_mean_teacher_average():
    torch.manual_seed(0)
    student, teacher = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), nn.Sequential(nn.Linear(3, 2),
                                                                                        nn.BatchNorm1d(2))
    student[1].running_mean.fill_(0.7)
    assert impute.ema_update(teacher, student, 0.99, 0) == 0.0  # first step: a plain copy
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters()))
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)
    before = [p.detach().clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    a = impute.ema_update(teacher, student, 0.9, 50)
    assert a == 0.9
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)
    assert impute.ema_update(teacher, student, 0.99, 3) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="decay must be in"):
        impute.ema_update(teacher, student, 1.0, 0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        impute.ema_update(teacher, student, 0.9, -1)
    with pytest.raises(ValueError, match="same architecture"):
        impute.ema_update(nn.Linear(3, 2), student, 0.9, 1)


# ----------------------------------------------------------------------------------------------- meta step
def test_virtual_step_is_one_sgd_step_on_the_virtual_loss_and_keeps_the_graph():
    net = _tiny_net()
    x, t = _batch(6, 1), torch.softmax(torch.randn(6, 3, dtype=torch.float64), 1).requires_grad_()
    theta = _params(net)
    for task in (C, R):
        new = impute.virtual_step(net, theta, x, t, task, 0.3)
        grads = torch.autograd.grad(impute.virtual_loss(net(x), t.detach(), task), list(net.parameters()))
        for (k, p), g in zip(net.named_parameters(), grads):
            assert torch.allclose(new[k], p - 0.3 * g)
        assert new["1.weight"].grad_fn is not None  # differentiable in t
        assert torch.autograd.grad(new["3.bias"].sum(), t)[0].shape == t.shape
    with pytest.raises(ValueError, match="inner_lr must be > 0"):
        impute.virtual_step(net, theta, x, t, C, 0.0)


def test_meta_grad_classification_closed_form():
    """dL_meta/dy_i = 2 alpha J_i grad L_l(theta') (the notebook's closed form), through the softmax."""
    net = _tiny_net()
    xu, xl, yl = _batch(4, 4), _batch(5, 5), torch.tensor([0, 1, 2, 1, 0])
    z, alpha = torch.randn(4, 3, dtype=torch.float64), 0.5
    theta = _params(net)
    adapted = impute.virtual_step(net, theta, xu, z.softmax(1), C, alpha)
    adapted = {k: v.detach().requires_grad_() for k, v in adapted.items()}
    g_l = torch.autograd.grad(impute.supervised_loss(torch.func.functional_call(net, adapted, (xl,)), yl, C),
                              list(adapted.values()))
    _, jv = torch.func.jvp(lambda prm: torch.func.functional_call(net, prm, (xu,)).softmax(1),
                           ({k: v.detach() for k, v in theta.items()},), (dict(zip(adapted, g_l)),))
    d_y = 2 * alpha * jv
    y = z.softmax(1)
    ref = y * d_y - y * (y * d_y).sum(1, keepdim=True)
    _, grad = impute.meta_grad_targets(net, xu, z, xl, yl, C, alpha)
    assert torch.allclose(grad, ref)


@pytest.mark.parametrize("task", [C, R])
def test_meta_grad_targets_matches_finite_differences(task):
    net = _tiny_net()
    xu, xl = _batch(4, 4), _batch(5, 5)
    yl = torch.tensor([0, 1, 2, 1, 0]) if task == C else torch.randn(5, 3, dtype=torch.float64)
    z = torch.randn(4, 3, dtype=torch.float64)
    loss, grad = impute.meta_grad_targets(net, xu, z, xl, yl, task, 0.5)
    theta = {k: v.detach() for k, v in net.named_parameters()}
    f = lambda zz: impute.meta_loss(net, _params(net), xu, impute.impute(zz, task), xl, yl, task, 0.5).item()
    assert torch.allclose(grad, _finite_diff(f, z), atol=1e-8)
    assert loss.item() == pytest.approx(f(z))
    assert all(torch.equal(v, theta[k]) for k, v in net.named_parameters())  # the model is left untouched
    assert loss.item() > impute.meta_loss(net, _params(net), xu, impute.impute(z - 0.5 * grad, task), xl, yl, task,
                                          0.5).item()  # a step against the meta-gradient lowers the meta loss


def test_meta_grad_labeller_of_stacked_members_equals_each_network_alone():
    """Members trained in one pass: each member's meta-gradient is that of its network alone (losses summed)."""
    seeds = [3, 4]
    ens = impute.build_members("convnet", seeds, 1, 3, 8, width=4, depth=1)
    g = torch.Generator().manual_seed(0)
    xu, xu2, xl = (torch.rand(2, n, 1, 8, 8, generator=g) for n in (6, 6, 5))
    yl = torch.randint(0, 3, (2, 5), generator=g)
    loss, grads = impute.meta_grad_labeller(ens, xu, xu2, xl, yl, C, 0.1)
    for s, sd in enumerate(seeds):
        torch.manual_seed(sd)
        net = impute.build_model("convnet", 1, 3, 8, width=4, depth=1)
        _, alone = impute.meta_grad_labeller(net, xu[s], xu2[s], xl[s], yl[s], C, 0.1)
        for i, (name, _) in enumerate(net.named_parameters()):
            assert torch.allclose(grads[f"stacked.{i}"][s], alone[name], atol=1e-5, rtol=1e-4), name


def test_meta_grad_labeller_matches_finite_differences_and_chain_rule():
    net = _tiny_net()
    xu, xu2, xl, yl = _batch(4, 6), _batch(4, 7), _batch(5, 8), torch.tensor([2, 1, 0, 0, 1])
    loss, grads = impute.meta_grad_labeller(net, xu, xu2, xl, yl, C, 0.5)
    assert set(grads) == {k for k, _ in net.named_parameters()}
    phi = {k: v.detach() for k, v in net.named_parameters()}

    def f(b):
        z = torch.func.functional_call(net, {**phi, "3.bias": b}, (xu2,))
        return impute.meta_loss(net, _params(net), xu, impute.impute(z, C), xl, yl, C, 0.5).item()
    assert torch.allclose(grads["3.bias"], _finite_diff(f, phi["3.bias"]), atol=1e-8)
    # chain rule through the targets variant: dL/dphi = (dz/dphi)^T dL/dz
    z = net(xu2)
    _, gz = impute.meta_grad_targets(net, xu, z.detach(), xl, yl, C, 0.5)
    ref = torch.autograd.grad(z, list(net.parameters()), gz)
    for (k, _), r in zip(net.named_parameters(), ref):
        assert torch.allclose(grads[k], r)
    # the labeller's imputation and dL/dz on request
    *_, z_out, gz_out = impute.meta_grad_labeller(net, xu, xu2, xl, yl, C, 0.5, return_imputation=True)
    assert torch.allclose(z_out, z) and torch.allclose(gz_out, gz)
    # a separate labeller, and an offset on its raw output (regression)
    other = _tiny_net(k=3, seed=1)
    _, g2 = impute.meta_grad_labeller(net, xu, xu2, xl, torch.randn(5, 3, dtype=torch.float64), R, 0.1,
                                      labeller_params=dict(other.named_parameters()),
                                      offset=torch.ones(4, 3, dtype=torch.float64))
    assert g2["1.weight"].shape == other[1].weight.shape and float(g2["1.weight"].abs().sum()) > 0


def test_meta_gradients_are_deterministic_and_leave_batchnorm_statistics_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 16, 3))
    x = torch.randn(6, 1, 4, 4)
    z = torch.randn(6, 3)
    stats = net[1].running_mean.clone()
    a = impute.meta_grad_targets(net, x, z, x[:4], torch.tensor([0, 1, 2, 0]), C, 0.1)
    b = impute.meta_grad_targets(net, x, z, x[:4], torch.tensor([0, 1, 2, 0]), C, 0.1)
    assert torch.equal(a[1], b[1]) and torch.equal(net[1].running_mean, stats)
    c = impute.meta_grad_labeller(net, x, x, x[:4], torch.tensor([0, 1, 2, 0]), C, 0.1)
    assert torch.equal(net[1].running_mean, stats) and c[1]["4.weight"].shape == (3, 64)


# ----------------------------------------------------------------------------------------------- networks, views
def test_wide_resnet_tcdcnn_and_build_model():
    net = impute.WideResNet(10, 3, depth=10, widen=1)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert 1.4e6 < sum(p.numel() for p in impute.WideResNet().parameters()) < 1.6e6  # WRN-28-2: 1.5 M
    with pytest.raises(ValueError, match="6n \\+ 4"):
        impute.WideResNet(depth=27)
    official = impute.TCDCNN()  # grey 60 px: a 3 x 3 x 80 = 720 feature map before the 256-unit layer
    assert official.fc.in_features == 720 and official(torch.zeros(2, 1, 60, 60)).shape == (2, 10)
    assert impute.build_model("tcdcnn", 1, 10, 48, width=0.5)(torch.zeros(1, 1, 48, 48)).shape == (1, 10)
    with pytest.raises(ValueError, match="at least 46 px"):
        impute.TCDCNN(image_size=32)
    assert impute.build_model("convnet", 3, 10, 32, width=8, depth=2)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert isinstance(impute.build_model("wrn28_2", 3, 10, 32), impute.WideResNet)
    with pytest.raises(ValueError, match="model must be"):
        impute.build_model("vit", 3, 10, 32)


def test_build_members_stacks_seeds_and_keeps_batchnorm_networks_to_one():
    ens = impute.build_members("tcdcnn", [0, 1], 1, 10, 48, width=0.25)
    assert isinstance(ens, train.Ensemble) and ens(torch.zeros(2, 3, 1, 48, 48)).shape == (2, 3, 10)
    torch.manual_seed(1)
    alone = impute.build_model("tcdcnn", 1, 10, 48, width=0.25)
    x = torch.rand(3, 1, 48, 48)
    assert torch.allclose(ens(x)[1], alone(x), atol=1e-5)
    one = impute.build_members("wrn28_2", [5], 3, 10, 32)
    assert one(torch.zeros(1, 2, 3, 32, 32)).shape == (1, 2, 10)
    with pytest.raises(ValueError, match="seeds: the BatchNorm network 'wrn28_2' trains one seed per run"):
        impute.build_members("wrn28_2", [0, 1], 3, 10, 32)


def test_views_take_and_grey():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 1, 6, 6, generator=g)
    v, s = impute.views(x, 0, g)
    assert torch.equal(v, x) and s.shape == (2, 3, 2) and not s.any()
    v, s = impute.views(x, 2, g, padding_mode="zeros")
    assert v.shape == x.shape and s.abs().max() <= 2
    dx, dy = int(s[0, 0, 0]), int(s[0, 0, 1])
    assert torch.equal(v[0, 0, 0, max(dy, 0):6 + min(dy, 0), max(dx, 0):6 + min(dx, 0)],
                       x[0, 0, 0, max(-dy, 0):6 + min(-dy, 0), max(-dx, 0):6 + min(-dx, 0)])
    f, _ = impute.views(x, 0, torch.Generator().manual_seed(1), flip=True)
    flipped = (f == x.flip(-1)).flatten(2).all(-1)
    assert bool(((f == x).flatten(2).all(-1) | flipped).all()) and bool(flipped.any())
    idx = torch.tensor([[2, 0], [1, 1]])
    assert torch.equal(impute.take(x, idx)[1, 0], x[1, 1]) and torch.equal(impute.take(x, idx)[0, 0], x[0, 2])
    with pytest.raises(ValueError, match="take needs"):
        impute.take(x, idx[0])
    rgb = torch.rand(4, 3, 5, 5)
    grey = impute.to_grey(rgb)
    assert grey.shape == (4, 1, 5, 5) and torch.allclose(grey[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1]
                                                         + 0.114 * rgb[:, 2])
    with pytest.raises(ValueError, match="needs RGB"):
        impute.to_grey(grey)


def test_evaluate_and_imputation_quality():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    x = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [2.0, 1.0, 0, 0], [0, 3.0, 0, 0]]).view(4, 1, 2, 2)
    assert float(impute.evaluate(net, x, torch.tensor([0, 1, 1, 1]), C, device="cpu")) == 0.75
    reg = nn.Sequential(nn.Flatten(), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        reg[1].weight.copy_(torch.eye(4))
    pts = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    assert float(impute.evaluate(reg, pts.view(1, 1, 2, 2), pts, R, device="cpu")) == 0.0
    # standardised outputs are mapped back before the error
    assert float(impute.evaluate(reg, ((pts - 1) / 2).view(1, 1, 2, 2), pts, R, unstandardise=lambda z: z * 2 + 1,
                                 device="cpu")) == pytest.approx(0.0, abs=1e-6)
    px = torch.tensor([[[10.0, 10.0], [20.0, 10.0]]])
    off = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])
    norm = lambda p: data.to_normalized(p, 32).view(1, 4)
    assert float(impute.evaluate(reg, norm(px + off).view(1, 1, 2, 2), norm(px), R, device="cpu")) == \
        pytest.approx(landmarks.iod_error(px + off, px), rel=1e-5)
    # members: one value each
    ens = impute.build_members("convnet", [0, 1, 2], 1, 3, 8, width=4, depth=1)
    xs, ys = torch.rand(10, 1, 8, 8), torch.randint(0, 3, (10,))
    per = impute.evaluate(ens, xs, ys, C, device="cpu")
    assert per.shape == (3,)
    torch.manual_seed(1)
    assert float(per[1]) == float(impute.evaluate(impute.build_model("convnet", 1, 3, 8, width=4, depth=1), xs, ys, C,
                                                  device="cpu"))
    q = impute.imputation_quality(torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.9, 0.1], [0.9, 0.1]]]),
                                  torch.tensor([[0, 1], [0, 1]]), C)
    assert q.tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="differ in length"):
        impute.evaluate(net, x, torch.tensor([0]), C)


def test_worked_solution_matches_the_meta_loss_kernel():
    sol = course.solution("05_learning_to_impute")
    for task in (C, R):
        net = _tiny_net()
        xu, xl = _batch(4, 4), _batch(5, 5)
        yl = torch.tensor([0, 1, 2, 1, 0]) if task == C else torch.randn(5, 3, dtype=torch.float64)
        z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        mine = sol.meta_loss_reference(net, _params(net), xu, impute.impute(z, task), xl, yl, task, 0.5)
        assert torch.allclose(mine, impute.meta_loss(net, _params(net), xu, impute.impute(z, task), xl, yl, task, 0.5))
        assert torch.allclose(torch.autograd.grad(mine, z)[0], impute.meta_grad_targets(net, xu, z, xl, yl, task,
                                                                                        0.5)[1])


def test_paper_numbers_sit_under_the_paper_setting():
    # the notebook asks results.start for setting f"{cls_dataset}_{10 * labels_per_class}": cifar10_250 for the paper
    recorded = {"acc_supervised", "acc_mean_teacher", "acc_l2i", "iod_error_supervised", "iod_error_mean_teacher",
                "iod_error_l2i"}
    numbers = results.paper_numbers("05_learning_to_impute", "cifar10_250")
    assert numbers and set(numbers) <= recorded
    assert results.paper_numbers("05_learning_to_impute", "mnist_50") == {}  # the quick profile's setting: none


# ----------------------------------------------------------------------------------------------- data
def test_labeled_split_per_class_and_fraction():
    labels = torch.arange(10).repeat(8)
    lab, unl = impute.labeled_split(labels, per_class=3, seed=1)
    assert len(lab) == 30 and len(unl) == 50 and torch.bincount(labels[lab]).tolist() == [3] * 10
    assert sorted(torch.cat([lab, unl]).tolist()) == list(range(80))
    assert torch.equal(lab, impute.labeled_split(labels, per_class=3, seed=1)[0])
    lab2, unl2 = impute.labeled_split(200, fraction=0.05, seed=0)
    assert len(lab2) == 10 and len(unl2) == 190 and not set(lab2.tolist()) & set(unl2.tolist())
    with pytest.raises(ValueError, match="exactly one of"):
        impute.labeled_split(labels)
    with pytest.raises(ValueError, match="leaves none"):
        impute.labeled_split(labels, per_class=8)
    with pytest.raises(ValueError, match="fraction must be in"):
        impute.labeled_split(100, fraction=1.0)
    with pytest.raises(ValueError, match="per_class must be >= 1"):
        impute.labeled_split(labels, per_class=0)


def test_loaders(tmp_path):
    x, pts = impute.load_landmarks("lfw_landmarks5", "test", size=32)
    assert x.shape == (500, 3, 32, 32) and pts.shape == (500, 10) and float(pts.abs().max()) < 1.0
    with pytest.raises(data.DataError, match="has no landmarks"):
        impute.load_landmarks("mnist", "test")


@pytest.fixture(scope="module")
def aflw_root(tmp_path_factory):
    """AFLW written once in the IMM release's layout (tests/miniatures/impute.py)."""
    from miniatures import write_some
    return write_some(tmp_path_factory.mktemp("aflw_imm_miniature"), "impute")


def _marker_centre(image):
    """``(x, y)`` centroid of the white square the miniature draws on each face's left eye (the rest is dimmer)."""
    grey = image.mean(0)
    w = (grey - 0.6).clamp_min(0)
    ys, xs = torch.meshgrid(torch.arange(grey.shape[0], dtype=w.dtype), torch.arange(grey.shape[1], dtype=w.dtype),
                            indexing="ij")
    return torch.stack([(w * xs).sum(), (w * ys).sum()]) / w.sum()


@pytest.mark.parametrize("split", ["train", "test"])
def test_aflw_imm_reader_reads_the_release_layout(split, aflw_root):
    from miniatures import impute as mini
    faces = mini.faces(split)
    ds = data.load("aflw_imm", split, full=True, data_dir=aflw_root)
    assert ds.source == "full" and ds.labels is None and ds.meta["files"] == [name for name, _, _ in faces]
    assert ds.images.shape == (len(faces), 3, 60, 60) and ds.meta["landmarks"].shape == (len(faces), 5, 2)
    for k, (_, (h, w), pts) in enumerate(faces):
        # (y, x) in the .mat -> (x, y), scaled with the image from its own size to 60 x 60
        expected = torch.tensor(pts, dtype=torch.float32) * torch.tensor([60 / w, 60 / h])
        assert torch.allclose(ds.meta["landmarks"][k], expected, atol=1e-4)
        assert torch.allclose(_marker_centre(ds.images[k]), ds.meta["landmarks"][k, 0], atol=0.6)
    x, y = impute.load_landmarks("aflw_imm", split, full=True, data_dir=aflw_root, size=32)
    assert x.shape == (len(faces), 3, 32, 32) and y.shape == (len(faces), 10)
    assert torch.allclose(data.to_pixels(y.view(-1, 5, 2), 32), ds.meta["landmarks"] * 32 / 60, atol=1e-4)


def test_aflw_imm_reader_errors(aflw_root, tmp_path):
    import shutil
    from scipy.io import loadmat, savemat
    with pytest.raises(data.DataNotFoundError, match="aflw_imm.*aflw_release-2"):
        data.load("aflw_imm", "train", full=True, data_dir=tmp_path)
    shutil.copytree(aflw_root / "aflw_release-2", tmp_path / "aflw_release-2")
    mat = tmp_path / "aflw_release-2" / "aflw_test_keypoints.mat"
    savemat(mat, {"gt": loadmat(mat)["gt"][:3], "hw": loadmat(mat)["hw"][:3]})
    with pytest.raises(data.DataError, match=r"shape \(3, 5, 2\), expected \(4, 5, 2\)"):
        data.load("aflw_imm", "test", full=True, data_dir=tmp_path)
