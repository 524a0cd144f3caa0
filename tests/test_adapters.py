"""vklib.adapters: residual / dynamic residual adapters, gates, style exchange, augmentation, helpers and data."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from vklib import adapters as A
from vklib import data, models


def tiny_backbone(seed=0):
    torch.manual_seed(seed)
    net = models.SmallResNet(3, 5, widths=(4, 8), blocks=1)
    with torch.no_grad():   # non-trivial BatchNorm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net


# ------------------------------------------------------------------------------------------------ sparsemax
def sparsemax_reference(z):
    """Readable per-row sparsemax (sort, find the support, threshold)."""
    out = []
    for row in z.tolist():
        s = sorted(row, reverse=True)
        k = max(j for j in range(1, len(s) + 1) if 1 + j * s[j - 1] > sum(s[:j]))
        tau = (sum(s[:k]) - 1) / k
        out.append([max(v - tau, 0.0) for v in row])
    return torch.tensor(out, dtype=z.dtype)


def test_sparsemax_matches_reference_and_is_sparse():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    p = A.sparsemax(z)
    assert p.shape == (6, 5)
    assert torch.allclose(p, sparsemax_reference(z), atol=1e-12)
    assert torch.allclose(p.sum(-1), torch.ones(6, dtype=torch.float64)) and (p >= 0).all()
    assert torch.equal(A.sparsemax(torch.tensor([[3.0, 0.0, -1.0]])), torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.allclose(A.sparsemax(torch.zeros(1, 4)), torch.full((1, 4), 0.25))
    assert torch.allclose(A.sparsemax(z.T, dim=0), p.T)
    assert torch.autograd.gradcheck(A.sparsemax, (z[:2].clone().requires_grad_(),))


# ------------------------------------------------------------------------------------------------ gates
def test_gate_probs_softmax_reference_noise_and_errors():
    g = torch.Generator().manual_seed(1)
    pooled, w, b = torch.randn(4, 6, generator=g), torch.randn(3, 6, generator=g), torch.randn(3, generator=g)
    p = A.gate_probs(pooled, w, b)
    assert p.shape == (4, 3)
    assert torch.allclose(p, torch.softmax(pooled @ w.T + b, -1), atol=1e-6)
    assert torch.allclose(A.gate_probs(pooled, w, b, kind="sparsemax").sum(-1), torch.ones(4))
    n1 = A.gate_probs(pooled, w, b, noise_std=1.0, generator=torch.Generator().manual_seed(5))
    n2 = A.gate_probs(pooled, w, b, noise_std=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(n1, n2) and not torch.allclose(n1, p)
    eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(n1, torch.softmax(pooled @ w.T + b + eps, -1), atol=1e-6)
    with pytest.raises(ValueError, match="softmax, sparsemax"):
        A.gate_probs(pooled, w, kind="argmax")
    with pytest.raises(ValueError, match="pooled must be"):
        A.gate_probs(pooled, w[:, :5])
    with pytest.raises(ValueError, match="noise_std"):
        A.gate_probs(pooled, w, noise_std=-1)


# ------------------------------------------------------------------------------------------------ adapters
def adapter_reference(x, weight, gate, stride):
    """sum_k g[:, k] * (A_k * x), one 1x1 convolution per adapter."""
    return sum(gate[:, k, None, None, None] * F.conv2d(x, weight[k, :, :, None, None], stride=stride)
               for k in range(weight.shape[0]))


@pytest.mark.parametrize("stride", [1, 2])
def test_dynamic_adapter_matches_the_sum_of_convolutions(stride):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    gate = torch.softmax(torch.randn(3, 3, generator=g, dtype=torch.float64), -1).requires_grad_()
    out = A.dynamic_adapter(x, w, gate, stride)
    ref = adapter_reference(x, w, gate, stride)
    assert out.shape == ref.shape == (3, 5, 4 if stride == 2 else 7, 4 if stride == 2 else 7)
    assert torch.allclose(out, ref, atol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), (x, w, gate))
    grads_ref = torch.autograd.grad(ref.square().sum(), (x, w, gate))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, grads_ref))
    plain = A.dynamic_adapter(x, w[0], None, stride)
    assert torch.allclose(plain, F.conv2d(x, w[0, :, :, None, None], stride=stride))


def test_dynamic_adapter_errors():
    x = torch.zeros(2, 4, 5, 5)
    with pytest.raises(ValueError, match="need a gate"):
        A.dynamic_adapter(x, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="gate must be"):
        A.dynamic_adapter(x, torch.zeros(2, 3, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="weight"):
        A.dynamic_adapter(x, torch.zeros(2, 3, 5), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="stride"):
        A.dynamic_adapter(x, torch.zeros(3, 4), None, 0)


def test_adapted_conv_shapes_gates_and_errors():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
    x = torch.randn(5, 4, 8, 8)
    zero = A.AdaptedConv2d(conv, 1)
    assert torch.allclose(zero(x), conv(x)) and zero.gate is None       # zero-initialised adapter: the backbone
    dyn = A.AdaptedConv2d(conv, 3, init_scale=0.2, noise_std=1.0, generator=torch.Generator().manual_seed(0)).eval()
    y = dyn(x)
    assert y.shape == conv(x).shape == (5, 6, 4, 4)
    assert dyn.last_gate.shape == (5, 3) and torch.allclose(dyn.last_gate.sum(1), torch.ones(5))
    g = torch.softmax(dyn.gate(x.mean((2, 3))), -1)
    assert torch.allclose(dyn.last_gate, g, atol=1e-6)                  # no noise in eval mode
    assert torch.allclose(y, conv(x) + adapter_reference(x, dyn.adapter, g, 2), atol=1e-5)
    assert torch.equal(dyn(x), y)
    dyn.train()
    assert not torch.allclose(dyn(x), y)                                # exploration noise while training
    with pytest.raises(TypeError, match="nn.Conv2d"):
        A.AdaptedConv2d(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="groups"):
        A.AdaptedConv2d(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="num_adapters"):
        A.AdaptedConv2d(conv, 0)
    with pytest.raises(ValueError, match="gate must be"):
        A.AdaptedConv2d(conv, 2, gate="max")
    with pytest.raises(ValueError, match="init_scale must be >= 0"):
        A.AdaptedConv2d(conv, 2, init_scale=-1)
    for k in (1, 2):
        with pytest.raises(ValueError, match="does not match"):
            A.AdaptedConv2d(nn.Conv2d(4, 6, 3, padding=0), k)(x)


# ------------------------------------------------------------------------------------------------ style
def style_reference(a, eta, perm, eps=1e-5):
    out = torch.empty_like(a)
    for i in range(a.shape[0]):
        x, z = a[i], a[perm[i]]
        mx, sx = x.mean((1, 2), keepdim=True), (x.var((1, 2), unbiased=False, keepdim=True) + eps).sqrt()
        mz, sz = z.mean((1, 2), keepdim=True), (z.var((1, 2), unbiased=False, keepdim=True) + eps).sqrt()
        out[i] = eta * (sz * (x - mx) / sx + mz) + (1 - eta) * x
    return out


def test_style_exchange_reference_statistics_and_determinism():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * 2 + 1
    perm = torch.tensor([2, 0, 3, 1])
    out = A.style_exchange(a, 0.7, perm)
    assert out.shape == a.shape and torch.allclose(out, style_reference(a, 0.7, perm), atol=1e-12)
    full = A.style_exchange(a, 1.0, perm, eps=0.0)
    assert torch.allclose(full.mean((2, 3)), a.mean((2, 3))[perm], atol=1e-10)
    assert torch.allclose(full.std((2, 3), unbiased=False), a.std((2, 3), unbiased=False)[perm], atol=1e-10)
    assert torch.equal(A.style_exchange(a, 0.0, perm), a)
    etas = torch.tensor([0.0, 1.0, 0.5, 0.2], dtype=torch.float64)
    per = A.style_exchange(a, etas, perm)
    assert torch.allclose(per[2], style_reference(a, 0.5, perm)[2]) and torch.allclose(per[0], a[0])
    r1 = A.style_exchange(a, 0.5, generator=torch.Generator().manual_seed(9))
    r2 = A.style_exchange(a, 0.5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(r1, r2)
    x = a.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: A.style_exchange(t, 0.6, perm), (x,))


def test_style_exchange_errors_and_module():
    a = torch.randn(3, 2, 4, 4)
    with pytest.raises(ValueError, match="must be \\(N, C, H, W\\)"):
        A.style_exchange(a[0], 0.5)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        A.style_exchange(a, 1.5)
    with pytest.raises(ValueError, match="perm must be"):
        A.style_exchange(a, 0.5, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="eta must be a number"):
        A.style_exchange(a, torch.ones(2))
    layer = A.StyleExchange(eta=1.0, p=1.0)
    assert torch.equal(layer.eval()(a), a)
    assert not torch.allclose(layer.train()(a), a)
    assert torch.equal(A.StyleExchange(1.0, p=0.0).train()(a), a)
    with pytest.raises(ValueError, match="eta and p"):
        A.StyleExchange(eta=2.0)


# ------------------------------------------------------------------------------------------------ metrics
def test_normalized_mutual_info_matches_sklearn():
    from sklearn.metrics import normalized_mutual_info_score
    rng = np.random.default_rng(0)
    for n, ka, kb in [(50, 2, 4), (200, 3, 3), (30, 5, 2)]:
        a, b = rng.integers(0, ka, n), rng.integers(0, kb, n)
        b[: n // 2] = a[: n // 2]
        ours = float(A.normalized_mutual_info(torch.tensor(a), torch.tensor(b)))
        assert ours == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-10)
    a = torch.tensor([0, 0, 1, 1, 2, 2])
    assert float(A.normalized_mutual_info(a, torch.tensor([5, 5, 3, 3, 9, 9]))) == pytest.approx(1.0)
    assert float(A.normalized_mutual_info(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))) == 0.0
    assert float(A.normalized_mutual_info(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))) == 1
    assert float(A.normalized_mutual_info(torch.zeros(4, dtype=torch.long), torch.arange(4))) == 0.0
    with pytest.raises(ValueError, match="one length"):
        A.normalized_mutual_info(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        A.normalized_mutual_info(torch.zeros(3), torch.zeros(3))


def test_per_domain_accuracy():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    domains = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 0, 1, 1, 2])
    acc = A.per_domain_accuracy(pred, labels, domains, 4)
    assert acc.shape == (4,) and torch.allclose(acc[:3], torch.tensor([2 / 3, 0.5, 1.0])) and acc[3].isnan()
    assert torch.equal(A.per_domain_accuracy(F.one_hot(pred, 3).float(), labels, domains)[:3], acc[:3])
    with pytest.raises(ValueError, match="must be \\(N,\\)"):
        A.per_domain_accuracy(pred[:5], labels, domains)
    with pytest.raises(ValueError, match="num_domains"):
        A.per_domain_accuracy(pred, labels, domains, 2)


# ------------------------------------------------------------------------------------------------ model surgery
def test_freeze_backbone_keeps_outputs_and_freezes():
    net = tiny_backbone().eval()
    x = torch.randn(2, 3, 16, 16)
    before = net(x)
    A.freeze_backbone(net, ("head",))
    from torchvision.ops import FrozenBatchNorm2d
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    assert torch.allclose(net.train()(x), before, atol=1e-5)                 # train mode: statistics stay fixed
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    net2 = A.freeze_backbone(tiny_backbone(), ("head",), norm="train")
    assert all(p.requires_grad for m in net2.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert not net2.stem[0].weight.requires_grad
    with pytest.raises(ValueError, match="no submodule"):
        A.freeze_backbone(tiny_backbone(), ("classifier",))
    with pytest.raises(ValueError, match="norm must be"):
        A.freeze_backbone(tiny_backbone(), norm="group")


def test_add_adapters_style_counts_and_gates():
    net = A.freeze_backbone(tiny_backbone().eval(), ("head",))
    x = torch.randn(3, 3, 16, 16)
    before = net(x)
    names = A.add_adapters(net, 2, seed=0)
    # stem conv + two 3x3 convs per block; the 1x1 shortcut projection is not adapted
    assert names == ["stem.0", "stages.0.conv1", "stages.0.conv2", "stages.1.conv1", "stages.1.conv2"]
    assert torch.allclose(net(x), before, atol=1e-5)                  # zero-initialised adapters change nothing
    layer_names, gates = A.read_gates(net)
    assert layer_names == names and gates.shape == (3, 5, 2)
    with pytest.raises(ValueError, match="no convolution"):
        A.add_adapters(net, 2)                                         # already adapted
    counts = A.trainable_parameters(net)
    adapters = sum(m.adapter.numel() for m in net.modules() if isinstance(m, A.AdaptedConv2d))
    assert adapters == 2 * (3 * 4 + 4 * 4 + 4 * 4 + 4 * 8 + 8 * 8)
    assert counts == {"adapters": adapters, "gates": 2 * (3 + 4 + 4 + 4 + 8) + 2 * 5, "norm": 0, "head": 8 * 5 + 5,
                      "other": 0, "total": adapters + 2 * 23 + 10 + 45}
    A.add_style_exchange(net, ["stem"], eta=0.5, p=1.0)
    assert isinstance(net.stem[1], A.StyleExchange)
    with pytest.raises(ValueError, match="no submodule"):
        A.add_style_exchange(net, ["stem.9"])
    assert A.read_gates(tiny_backbone()) == ([], None)


def test_make_variant_parameters_and_backbone_untouched():
    bb = tiny_backbone()
    ref = {k: v.clone() for k, v in bb.state_dict().items()}
    counts = {}
    for v in A.VARIANTS:
        m = A.make_variant(bb, v, 7, num_adapters=3, style_after=("stem",), seed=0)
        assert m(torch.randn(2, 3, 16, 16)).shape == (2, 7)
        counts[v] = A.trainable_parameters(m)
    assert counts["head_only"]["total"] == 8 * 7 + 7
    assert counts["bn_head"]["norm"] == counts["single_adapter"]["norm"] > 0
    assert counts["bn_head"]["total"] == counts["bn_head"]["norm"] + counts["bn_head"]["head"]
    assert counts["single_adapter"]["gates"] == 0
    assert counts["dynamic_adapters"]["adapters"] == 3 * counts["single_adapter"]["adapters"]
    assert counts["dynamic_adapters_style"] == counts["dynamic_adapters"]
    assert all(torch.equal(ref[k], v) for k, v in bb.state_dict().items())
    a, b = A.make_variant(bb, "dynamic_adapters", 7, seed=1), A.make_variant(bb, "dynamic_adapters", 7, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="variant must be one of"):
        A.make_variant(bb, "full_finetune", 7)
    with pytest.raises(ValueError, match="num_adapters >= 2"):
        A.make_variant(bb, "dynamic_adapters", 7, num_adapters=1)
    with pytest.raises(ValueError, match="style_after"):
        A.make_variant(bb, "dynamic_adapters_style", 7)
    with pytest.raises(ValueError, match="linear `head`"):
        A.make_variant(models.ConvNet(3, 7, 16, width=4, depth=2), "head_only", 7)


def test_reestimate_batchnorm_averages_the_pool_and_changes_nothing_else():
    bb = tiny_backbone()
    m = A.make_variant(bb, "dynamic_adapters_style", 7, num_adapters=2, style_after=("stem",), gate_noise=0.5,
                       init_scale=0.1, seed=0)
    params = {k: v.clone() for k, v in m.named_parameters()}
    x = torch.rand(12, 3, 16, 16) * 2 + 0.5                                 # far from the running statistics
    first, bn = m.stem[0][0], m.stem[0][1]                                  # stem: (conv, BatchNorm, ReLU), style
    with torch.no_grad():
        pre = first.eval()(x)                                               # (N, C, H, W) before the first BatchNorm
    rng = torch.get_rng_state()
    out = A.reestimate_batchnorm(m, list(x), batch_size=4)                 # a sequence of images works too
    assert out is m and not m.training and not any(mod.training for mod in m.modules())
    assert torch.equal(rng, torch.get_rng_state()), "no style exchange, no gate noise drawn"
    assert all(torch.equal(v, params[k]) for k, v in m.named_parameters())
    assert torch.allclose(bn.running_mean, pre.mean((0, 2, 3)), atol=1e-5)  # equal batches: the mean of means
    batch_var = torch.stack([c.var((0, 2, 3), unbiased=True) for c in pre.split(4)]).mean(0)
    assert torch.allclose(bn.running_var, batch_var, atol=1e-5) and bn.momentum == 0.1
    with pytest.raises(ValueError, match="batch_size"):
        A.reestimate_batchnorm(m, x, batch_size=1)


def test_build_backbone(tmp_path):
    net = A.build_backbone("small_resnet", 10, widths=(4, 8))
    assert net(torch.zeros(1, 3, 16, 16)).shape == (1, 10)
    with pytest.raises(ValueError, match="backbone must be"):
        A.build_backbone("vgg", 10)
    with pytest.raises(ValueError, match="no published weights"):
        A.build_backbone("small_resnet", 10, weights="IMAGENET1K_V1")
    with pytest.raises(models.WeightsNotFoundError, match="weights not found"):
        A.build_backbone("resnet18", 10, weights=tmp_path / "missing.pth")
    import torchvision
    path = tmp_path / "r18.pth"
    body = torchvision.models.resnet18()
    torch.save(body.state_dict(), path)
    r18 = A.build_backbone("resnet18", 7, weights=path).eval()
    assert r18(torch.rand(1, 3, 32, 32)).shape == (1, 7) and r18.head.in_features == 512
    assert torch.equal(r18.body.conv1.weight, body.conv1.weight)
    # the network takes images in [0, 1]: ImageNet's normalisation comes first, with no buffers of its own
    x = torch.rand(2, 3, 32, 32)
    body.fc = nn.Identity()
    mean, std = torch.tensor(models.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(models.IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(r18(x), r18.head(body.eval()((x - mean) / std)), atol=1e-5)
    assert not [k for k in r18.state_dict() if k.startswith(("mean", "std", "normalize"))]


# ------------------------------------------------------------------------------------------------ data
def test_split_cells_and_subsample_domain():
    labels = torch.arange(7).repeat_interleave(10).repeat(4)                   # 4 domains x 7 classes x 10
    domains = torch.arange(4).repeat_interleave(70)
    tr, te = A.split_cells(labels, domains, 0.3, seed=0)
    assert len(tr) + len(te) == 280 and not set(tr.tolist()) & set(te.tolist())
    cells = torch.bincount(domains[te] * 7 + labels[te], minlength=28)
    assert torch.equal(cells, torch.full((28,), 3))
    assert torch.equal(A.split_cells(labels, domains, 0.3, seed=0)[1], te)
    assert not torch.equal(A.split_cells(labels, domains, 0.3, seed=1)[1], te)
    kept = A.subsample_domain(tr, labels, domains, 2, 0.3, seed=0)
    per_domain = torch.bincount(domains[kept], minlength=4)
    assert per_domain.tolist() == [49, 49, 14, 49]                              # round(0.3 * 7) = 2 per class
    assert torch.equal(torch.bincount(labels[kept][domains[kept] == 2], minlength=7), torch.full((7,), 2))
    assert set(kept.tolist()) <= set(tr.tolist())
    assert torch.equal(A.subsample_domain(tr, labels, domains, 2, 0.3, seed=0), kept)
    assert torch.bincount(domains[A.subsample_domain(tr, labels, domains, 1, 0.01)], minlength=4)[1] == 7
    with pytest.raises(ValueError, match="test_fraction"):
        A.split_cells(labels, domains, 1.0)
    with pytest.raises(ValueError, match="keep_fraction"):
        A.subsample_domain(tr, labels, domains, 2, 0.0)
    with pytest.raises(ValueError, match="no sample"):
        A.subsample_domain(tr, labels, domains, 7, 0.5)


@pytest.fixture(scope="module")
def domain_root(tmp_path_factory):
    """Office-Home and DomainNet written once in their releases' layouts (tests/miniatures/adapters.py)."""
    from miniatures import write_some
    return write_some(tmp_path_factory.mktemp("adapters_miniatures"), "adapters")


def test_office_home_reader_reads_the_release_layout(domain_root, tmp_path):
    import shutil
    from miniatures import adapters as mini
    oh = data.load("office_home", "all", full=True, data_dir=domain_root)
    assert oh.images.shape == (4 * 130, 3, 64, 64) and oh.meta["_domains"] == mini.OFFICE_HOME_DOMAINS
    assert oh.classes == mini.OFFICE_HOME_CLASSES and oh.classes.index("TV") < oh.classes.index("Table")
    assert oh.meta["domain"].tolist() == [d for d in range(4) for _ in range(130)]
    assert oh.labels.tolist() == [c for c in range(65) for _ in range(2)] * 4
    assert all(f"/Real World/{c}/0000{k}.jpg" in f
               for c, k, f in zip(np.repeat(oh.classes, 2), [1, 2] * 65, oh.meta["files"][3 * 130:]))
    assert data.load("office_home", "all", full=True, data_dir=domain_root, size=8).images.shape == (520, 3, 8, 8)
    # "Real World" may sit on disk as Real_World
    shutil.copytree(domain_root / "OfficeHomeDataset_10072016", tmp_path / "OfficeHomeDataset_10072016")
    (tmp_path / "OfficeHomeDataset_10072016" / "Real World").rename(tmp_path / "OfficeHomeDataset_10072016" /
                                                                    "Real_World")
    assert torch.equal(data.load("office_home", "all", full=True, data_dir=tmp_path, size=8).meta["domain"],
                       oh.meta["domain"])


def test_domainnet_reader_reads_the_release_layout(domain_root):
    from miniatures import adapters as mini
    dn = data.load("domainnet", "all", full=True, data_dir=domain_root, size=6)
    assert isinstance(dn.images, data.LazyImages) and len(dn) == 12 and dn.images[0].shape == (3, 6, 6)
    assert dn.classes == [c for _, c in mini.DOMAINNET_CLASSES] and dn.meta["_domains"] == mini.DOMAINNET_DOMAINS
    assert dn.meta["domain"].tolist() == [d for d in range(6) for _ in range(2)] and dn.labels.tolist() == [0, 1] * 6
    quickdraw = [f for f, d in zip(dn.meta["files"], dn.meta["domain"].tolist()) if d == 3]
    assert [f.rsplit("/", 1)[1] for f in quickdraw] == [mini.domainnet_file("quickdraw", n, 0)
                                                        for n, _ in mini.DOMAINNET_CLASSES]
    assert dn.images[7].shape == (3, 6, 6)  # a quickdraw PNG


def test_full_readers_say_where_the_data_go(tmp_path):
    assert {"office_home", "domainnet"} <= set(data.names())
    with pytest.raises(data.DataNotFoundError, match="OfficeHome"):
        data.load("office_home", "all", full=True, data_dir=tmp_path)
    with pytest.raises(data.DataNotFoundError, match="domainnet"):
        data.load("domainnet", "all", full=True, data_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ training
def toy_problem():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = torch.randn(40, 3, 8, 8, generator=g) * 0.3 + y.view(-1, 1, 1, 1).float().mul(2).sub(1)[:, :, :, :1]
    return x, y


def test_adapter_init_scale_is_he_times_the_factor():
    """init_scale=1 is the official He initialisation of a 1x1 convolution, N(0, 2 / C_out); 0 is exactly the
    pretrained function."""
    conv = nn.Conv2d(64, 128, 3, padding=1, bias=False)
    he = A.AdaptedConv2d(conv, 4, init_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert he.adapter.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.02)
    small = A.AdaptedConv2d(conv, 4, init_scale=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(small.adapter, 0.1 * he.adapter)
    bb = tiny_backbone().eval()
    x = torch.randn(2, 3, 16, 16)
    zero = A.make_variant(bb, "dynamic_adapters", 5, seed=0).eval()
    zero.head.load_state_dict(bb.head.state_dict())
    assert torch.allclose(zero(x), bb(x), atol=1e-5)
    nonzero = A.make_variant(bb, "dynamic_adapters", 5, init_scale=0.1, seed=0)
    assert all(m.adapter.abs().sum() > 0 for m in nonzero.modules() if isinstance(m, A.AdaptedConv2d))


def test_variants_train_only_their_parameters_and_learn():
    """A few SGD steps (the notebook's loop, shortened): the frozen convolutions never change, head_only's BatchNorm
    statistics stay fixed while bn_head re-estimates them, and a dynamic model learns the toy problem."""
    x, y = toy_problem()
    for variant in A.VARIANTS:
        torch.manual_seed(0)
        m = A.make_variant(tiny_backbone(), variant, 2, init_scale=0.1, gate_noise=0.1, style_after=("stem",), seed=0)
        frozen = {n: p.clone() for n, p in m.named_parameters() if not p.requires_grad}
        stats = {n: b.clone() for n, b in m.named_buffers() if n.endswith("running_mean")}
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        m.train()
        for _ in range(30):
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if n in frozen)
        moved = [not torch.equal(b, stats[n]) for n, b in m.named_buffers() if n in stats]
        assert (not any(moved)) if variant == "head_only" else all(moved), variant
        logits, gates = A.logits_and_gates(m, list(x), batch_size=16, device="cpu")   # a sequence works too
        assert logits.shape == (40, 2) and (gates is None) == (not variant.startswith("dynamic"))
        assert (logits.argmax(1) == y).float().mean() > 0.9, variant
        if gates is not None:
            assert gates.shape == (40, 5, 2)
            assert torch.allclose(gates[:16], A.logits_and_gates(m, x[:16], device="cpu")[1])  # eval: no noise


def test_crop_and_jitter():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 20, 20, generator=g)
    assert torch.allclose(A.crop_and_jitter(x, (1.0, 1.0), 0.0, g), x, atol=1e-5)   # no crop, no jitter: identity
    out = A.crop_and_jitter(x, (0.5, 1.0), 0.4, torch.Generator().manual_seed(1))
    again = A.crop_and_jitter(x, (0.5, 1.0), 0.4, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.equal(out, again) and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x, atol=1e-2)
    # a crop of a quarter of the area magnifies: a 2x2 checkerboard of 10-px squares loses its 4-fold balance
    board = torch.zeros(1, 3, 20, 20)
    board[..., :10, :10] = board[..., 10:, 10:] = 1
    crops = A.crop_and_jitter(board.expand(64, -1, -1, -1), (0.25, 0.25), 0.0, torch.Generator().manual_seed(2))
    assert crops.mean((1, 2, 3)).std() > 0.05                            # each crop sees a different share
    for bad in (dict(scale=(0.0, 1.0)), dict(scale=(0.9, 0.8)), dict(jitter=1.0)):
        with pytest.raises(ValueError, match="crop_and_jitter"):
            A.crop_and_jitter(x, **bad)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        A.crop_and_jitter(x[:, :1])


def test_worked_solution_matches_the_kernel():
    from vklib import course
    sol = course.solution("06_latent_domain_adapters")
    z = torch.randn(50, 5, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.allclose(sol.sparsemax(z), A.sparsemax(z), atol=1e-6)
    assert torch.allclose(sol.sparsemax(z).sum(1), torch.ones(50)) and (sol.sparsemax(z) == 0).any()


def test_paper_profile_without_imagenet_weights_is_a_hard_error(tmp_path, monkeypatch):
    """The paper profile's backbone reads ImageNet weights from the torch hub cache; a missing file stops the run with
    a message naming the file and the folder to put it in (never a silent random start)."""
    import torchvision
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = {"backbone": "resnet18", "weights": "IMAGENET1K_V1"}           # notebook 06's paper profile
    folder = tmp_path / "hub" / "checkpoints"
    file = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    with pytest.raises(models.WeightsNotFoundError) as error:
        A.build_backbone(cfg["backbone"], 7, weights=cfg["weights"])
    message = str(error.value)
    assert f"ImageNet weights not found at {folder / file}" in message and f"in {folder}," in message
    assert "weights=None trains from random weights" in message
    # the same file in that folder is read
    folder.mkdir(parents=True)
    body = torchvision.models.resnet18()
    torch.save(body.state_dict(), folder / file)
    net = A.build_backbone(cfg["backbone"], 7, weights=cfg["weights"])
    assert torch.equal(net.body.conv1.weight, body.conv1.weight)
