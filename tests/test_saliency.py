"""vklib.saliency: NormGrad, meta-saliency, baselines, deletion/insertion, models and the ImageNet reader."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vklib import data, models, results, saliency

LAYERS = saliency.ARCH_LAYERS["convnet"][0]


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    net = saliency.build_model("convnet", 10, width=4).eval()
    x, y = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 4, 7])
    return net, x, y


def _autograd_maps(net, x, y, layers, target="loss"):
    """Reference: retain_grad on the hooked outputs (cloned, so in-place ReLUs cannot touch them)."""
    acts, mods = {}, dict(net.named_modules())

    def make(n):
        def hook(m, i, o):
            acts[n] = o.clone()
            acts[n].retain_grad()
            return acts[n]
        return hook
    hooks = [mods[n].register_forward_hook(make(n)) for n in layers]
    logits = net(x)
    for h in hooks:
        h.remove()
    obj = F.cross_entropy(logits, y, reduction="sum") if target == "loss" else logits.gather(1, y[:, None]).sum()
    obj.backward()
    net.zero_grad(set_to_none=True)
    return {n: (acts[n].detach(), acts[n].grad) for n in layers}


# ----------------------------------------------------------------------------------------------- normgrad_from
def test_normgrad_from_variants_match_the_outer_product_norms():
    g = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    outer = torch.einsum("nchw,ndhw->nhwcd", g, x).flatten(-2).norm(dim=-1)  # ||g_u x_u^T||_F, written out
    assert torch.allclose(saliency.normgrad_from(x, g), outer, atol=1e-6)
    assert torch.allclose(saliency.normgrad_from(x, g, "bias"), g.norm(dim=1))
    assert torch.allclose(saliency.normgrad_from(x, g, "scaling"), (g * x).norm(dim=1))
    assert saliency.normgrad_from(x, g).shape == (2, 4, 5)


def test_normgrad_from_conv_is_the_norm_of_each_summand_of_the_weight_gradient():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2)
    x = torch.randn(1, 2, 6, 6, requires_grad=False)
    out = conv(x)
    g = torch.randn_like(out)
    out.backward(g)
    patches = F.unfold(x, 3, padding=1, stride=2)[0]                           # (C*9, L)
    summands = torch.einsum("cl,kl->lck", g.flatten(2)[0], patches)            # one matrix per location
    assert torch.allclose(summands.sum(0), conv.weight.grad.flatten(1), atol=1e-5)
    ours = saliency.normgrad_from(x, g, "conv", kernel_size=3, padding=1, stride=2)
    assert ours.shape == (1, 3, 3)
    assert torch.allclose(ours.flatten(), summands.flatten(1).norm(dim=1), atol=1e-5)


def test_normgrad_from_errors():
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="variant must be one of identity, bias, scaling, conv"):
        saliency.normgrad_from(x, x, "selective")
    with pytest.raises(ValueError, match="needs x and g of one shape"):
        saliency.normgrad_from(x, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        saliency.normgrad_from(x[0], x[0])
    with pytest.raises(ValueError, match="locations"):
        saliency.normgrad_from(x, torch.zeros(1, 2, 3, 3), "conv", kernel_size=3, padding=1)


# ----------------------------------------------------------------------------------------------- normgrad_layers
@pytest.mark.parametrize("target", ["loss", "score"])
def test_normgrad_layers_matches_autograd(toy, target):
    net, x, y = toy
    ours = saliency.normgrad_layers(net, x, y, LAYERS, target=target)
    ref = _autograd_maps(net, x, y, LAYERS, target)
    assert [tuple(ours[n].shape) for n in LAYERS] == [(3, 32, 32), (3, 16, 16), (3, 8, 8)]
    for n in LAYERS:
        act, grad = ref[n]
        assert torch.allclose(ours[n], grad.norm(dim=1) * act.norm(dim=1), rtol=1e-4, atol=1e-9)
        assert torch.allclose(saliency.normgrad_layers(net, x, y, [n], variant="scaling", target=target)[n],
                              (grad * act).norm(dim=1), rtol=1e-4, atol=1e-9)


def test_normgrad_layers_is_per_image_deterministic_and_keeps_the_mode(toy):
    net, x, y = toy
    net.train()
    try:
        full = saliency.normgrad_layers(net, x, y, LAYERS)
        assert net.training, "the model's mode is restored"
    finally:
        net.eval()
    again = saliency.normgrad_layers(net, x, y, LAYERS)
    one = saliency.normgrad_layers(net, x[1:2], y[1:2], LAYERS)
    for n in LAYERS:
        assert torch.equal(full[n], again[n])
        assert torch.allclose(full[n][1:2], one[n], rtol=1e-4, atol=1e-9)  # images do not interact (eval mode)
        assert not full[n].requires_grad


def test_normgrad_layers_conv_variant_and_errors(toy):
    net, x, y = toy
    m = saliency.normgrad_layers(net, x, y, ["features.0", "features.8"], variant="conv")
    assert m["features.0"].shape == (3, 32, 32) and m["features.8"].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="needs an nn.Conv2d"):
        saliency.normgrad_layers(net, x, y, ["features.2"], variant="conv")
    with pytest.raises(ValueError, match="unknown layer.*'features.99'.*features.0"):
        saliency.normgrad_layers(net, x, y, ["features.99"])
    with pytest.raises(ValueError, match="non-empty sequence"):
        saliency.normgrad_layers(net, x, y, "features.2")
    with pytest.raises(ValueError, match="target must be one of loss, score"):
        saliency.normgrad_layers(net, x, y, LAYERS, target="logit")
    with pytest.raises(ValueError, match="labels must be"):
        saliency.normgrad_layers(net, x, y[:2], LAYERS)


# ----------------------------------------------------------------------------------------------- meta-saliency
def _meta_reference(net, x, y, lr, adversarial):
    """Readable reference: a deep copy per image, one explicit SGD step, NormGrad by autograd."""
    import copy
    out = {n: [] for n in LAYERS}
    for i in range(len(x)):
        clone = copy.deepcopy(net).eval()
        loss = F.cross_entropy(clone(x[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, list(clone.parameters()))
        with torch.no_grad():
            for p, g in zip(clone.parameters(), grads):
                p -= (-lr if adversarial else lr) * g
        for n, (act, grad) in _autograd_maps(clone, x[i:i + 1], y[i:i + 1], LAYERS).items():
            out[n].append(grad.norm(dim=1) * act.norm(dim=1))
    return {n: torch.cat(v) for n, v in out.items()}


@pytest.mark.parametrize("adversarial", [False, True])
def test_meta_normgrad_matches_a_per_image_step_and_never_writes_the_weights(toy, adversarial):
    net, x, y = toy
    before = [p.detach().clone() for p in net.parameters()]
    ours = saliency.meta_normgrad_layers(net, x, y, LAYERS, lr=0.5, adversarial=adversarial)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    ref = _meta_reference(net, x, y, 0.5, adversarial)
    plain = saliency.normgrad_layers(net, x, y, LAYERS)
    for n in LAYERS:
        assert ours[n].shape == plain[n].shape
        assert torch.allclose(ours[n], ref[n], rtol=1e-3, atol=1e-8 * float(ref[n].abs().max()))
        assert not torch.allclose(ours[n], plain[n], rtol=1e-2)
    chunked = saliency.meta_normgrad_layers(net, x, y, LAYERS, lr=0.5, adversarial=adversarial, chunk_size=2)
    assert all(torch.allclose(chunked[n], ours[n], rtol=1e-5, atol=1e-10) for n in LAYERS)


def test_sgd_step_steps_then_restores_bit_for_bit(toy):
    net, x, y = toy
    before = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        loss0 = F.cross_entropy(net(x[:1]), y[:1]).item()
    with saliency.sgd_step(net, x[:1], y[:1], lr=0.5), torch.no_grad():
        assert not torch.equal(next(net.parameters()), before[0])
        assert F.cross_entropy(net(x[:1]), y[:1]).item() < loss0
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    with saliency.sgd_step(net, x[:1], y[:1], lr=0.5, adversarial=True), torch.no_grad():
        assert F.cross_entropy(net(x[:1]), y[:1]).item() > loss0
    with pytest.raises(RuntimeError, match="boom"):
        with saliency.sgd_step(net, x[:1], y[:1], lr=0.5):
            raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    # the in-place step and the batched kernel agree
    with saliency.sgd_step(net, x[:1], y[:1], lr=0.5):
        stepped = saliency.normgrad_layers(net, x[:1], y[:1], LAYERS)
    batched = saliency.meta_normgrad_layers(net, x, y, LAYERS, lr=0.5)
    assert all(torch.allclose(batched[n][:1], stepped[n], rtol=1e-3, atol=1e-10) for n in LAYERS)


def test_meta_and_sgd_step_errors(toy):
    net, x, y = toy
    with pytest.raises(ValueError, match="lr must be > 0"):
        saliency.meta_normgrad_layers(net, x, y, LAYERS, lr=0.0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        with saliency.sgd_step(net, x, y, lr=-1):
            pass
    with pytest.raises(ValueError, match="variant must be one of"):
        saliency.meta_normgrad_layers(net, x, y, LAYERS, lr=0.1, variant="x")


# ----------------------------------------------------------------------------------------------- combine, baselines
def test_combine_maps_upsamples_then_min_max_normalises_and_multiplies():
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    b = torch.tensor([[[0.0, 1.0, 2.0, 3.0]] * 4])
    out = saliency.combine_maps({"a": a, "b": b}, (4, 4))
    up = F.interpolate(a[:, None], size=(4, 4), mode="bilinear", align_corners=False)[:, 0]
    ref = (up - up.min()) / (up.max() - up.min()) * b / 3      # normalised after upsampling, then multiplied
    assert out.shape == (1, 4, 4) and torch.allclose(out, ref)
    assert out.min() == 0 and out.max() == 1
    assert torch.allclose(saliency.combine_maps([a + 7], (2, 2)), (a - 1) / 3)   # the minimum is subtracted
    assert torch.equal(saliency.combine_maps([torch.full((1, 2, 2), 3.0)], (2, 2)), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="at least one map"):
        saliency.combine_maps({}, (4, 4))
    with pytest.raises(ValueError, match="one N"):
        saliency.combine_maps([a, torch.zeros(2, 2, 2)], (4, 4))


def test_worked_solution_of_the_exercise_matches_combine_maps(toy):
    from vklib import course
    sol = course.solution("07_normgrad_saliency")
    net, x, y = toy
    maps = saliency.normgrad_layers(net, x, y, LAYERS, target="score")
    assert torch.allclose(sol.combine(list(maps.values()), (32, 32)), saliency.combine_maps(maps, (32, 32)),
                          atol=1e-6)


def test_gradient_and_gradcam_match_hand_computed_maps(toy):
    net, x, y = toy
    xr = x.clone().requires_grad_()
    net(xr).gather(1, y[:, None]).sum().backward()
    ref = xr.grad.abs().amax(1)
    assert torch.allclose(saliency.gradient_saliency(net, x, y), ref, atol=1e-7)
    assert not x.requires_grad
    layer = dict(net.named_modules())["features.10"]  # the (in-place) ReLU output of the last block
    kept = {}
    h = layer.register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    logits = net(x)
    h.remove()
    grad = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), kept["a"])[0]
    cam = F.relu((grad.mean((2, 3), keepdim=True) * kept["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(saliency.gradcam_saliency(net, x, y, "features.10"), cam.detach(), atol=1e-6)
    with pytest.raises(ValueError, match="unknown layer"):
        saliency.gradcam_saliency(net, x, y, "nope")


def test_random_saliency_is_seeded(toy):
    _, x, _ = toy
    a = saliency.random_saliency(x, torch.Generator().manual_seed(3))
    b = saliency.random_saliency(x, torch.Generator().manual_seed(3))
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, saliency.random_saliency(x, torch.Generator().manual_seed(4)))
    with pytest.raises(TypeError, match="seeded torch.Generator"):
        saliency.random_saliency(x, 3)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        saliency.random_saliency(x[0], torch.Generator())


def test_compute_maps_batches_any_method(toy):
    net, x, y = toy
    normgrad = lambda xb, yb: saliency.combine_maps(saliency.normgrad_layers(net, xb, yb, LAYERS, target="score"),
                                                    xb.shape[-2:])
    ng = saliency.compute_maps(normgrad, list(x), y, batch_size=2)  # a list of images, two batches
    assert ng.shape == (3, 32, 32) and torch.allclose(ng, normgrad(x, y), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        saliency.compute_maps(normgrad, x, y, batch_size=0)


# ----------------------------------------------------------------------------------------------- evaluation
class _MeanColour(nn.Module):
    """A readable toy classifier: logit k = 10 * mean of channel k (3 classes)."""

    def forward(self, x):
        return 10 * x.mean((2, 3))


def test_perturbation_curves_against_a_loop_reference():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 4, 4, generator=g), torch.tensor([0, 2])
    sal = torch.rand(2, 4, 4, generator=g)
    model = _MeanColour()
    for mode, sub in (("deletion", torch.zeros_like(x)), ("insertion", saliency.blur(x, 3, 1.0))):
        ours = saliency.perturbation_curves(model, x, y, sal, mode=mode, steps=4, substrate=sub, batch_size=3)
        assert ours.shape == (2, 5)
        for i in range(2):
            order = sal[i].flatten().argsort(descending=True, stable=True)
            img = (x[i] if mode == "deletion" else sub[i]).clone().flatten(1)
            new = (sub[i] if mode == "deletion" else x[i]).flatten(1)
            probs = [model(img.view(1, 3, 4, 4)).softmax(1)[0, y[i]]]
            for k in range(4):
                img[:, order[4 * k:4 * k + 4]] = new[:, order[4 * k:4 * k + 4]]
                probs.append(model(img.view(1, 3, 4, 4)).softmax(1)[0, y[i]])
            assert torch.allclose(ours[i], torch.stack(probs), atol=1e-6)
    named = saliency.perturbation_curves(model, x, y, sal, mode="deletion", steps=4, substrate="black")
    assert torch.equal(named, saliency.perturbation_curves(model, x, y, sal, mode="deletion", steps=4))


def test_perturbation_curves_by_cells_and_ends():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 3, 8, 8, generator=g), torch.tensor([0, 1, 2])
    model = _MeanColour()
    sal = torch.rand(3, 8, 8, generator=g)
    cells = saliency.perturbation_curves(model, x, y, sal, steps=16, patch=2)
    pooled = F.avg_pool2d(sal[:, None], 2)[:, 0]
    within = 1e-6 * torch.tensor([[0.0, -1], [-2, -3]]).repeat(4, 4)  # a fixed order inside each cell
    pixel_sal = pooled.repeat_interleave(2, 1).repeat_interleave(2, 2) + within  # cells ranked as the pooled map
    assert torch.allclose(cells, saliency.perturbation_curves(model, x, y, pixel_sal, steps=16), atol=1e-6)
    full = model(x).softmax(1).gather(1, y[:, None])[:, 0]
    black = model(torch.zeros_like(x)).softmax(1).gather(1, y[:, None])[:, 0]
    assert torch.allclose(cells[:, 0], full) and torch.allclose(cells[:, -1], black)
    ins = saliency.perturbation_curves(model, x, y, sal, mode="insertion", steps=16, patch=4)
    assert torch.allclose(ins[:, -1], full, atol=1e-6)


def test_perturbation_curves_errors():
    model, x, y = _MeanColour(), torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="mode must be one of deletion, insertion"):
        saliency.perturbation_curves(model, x, y, torch.rand(2, 4, 4), mode="both")
    with pytest.raises(ValueError, match=r"saliency must be \(N, H, W\)"):
        saliency.perturbation_curves(model, x, y, torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        saliency.perturbation_curves(model, x, y, torch.rand(2, 4, 4), steps=0)
    with pytest.raises(ValueError, match="patch must be >= 1 and divide"):
        saliency.perturbation_curves(model, x, y, torch.rand(2, 4, 4), patch=3)
    with pytest.raises(ValueError, match="substrate must be one of black, blur"):
        saliency.perturbation_curves(model, x, y, torch.rand(2, 4, 4), substrate="grey")
    with pytest.raises(ValueError, match="substrate must have the images' shape"):
        saliency.perturbation_curves(model, x, y, torch.rand(2, 4, 4), substrate=torch.zeros(1, 3, 4, 4))


def test_auc_is_the_trapezoid_rule():
    curves = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.5]])
    assert torch.allclose(saliency.auc(curves), torch.tensor([0.5, 0.5, 1.0, 0.25]))
    c = torch.tensor([[0.0, 0.5, 0.5, 1.0]])
    assert torch.allclose(saliency.auc(c), torch.tensor([(0.25 + 0.5 + 0.75) / 3]))
    with pytest.raises(ValueError, match="curves must be"):
        saliency.auc(torch.zeros(3))
    with pytest.raises(ValueError, match="curves must be"):
        saliency.auc(torch.zeros(3, 1))


def test_blur_keeps_constants_and_checks_the_kernel():
    x = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(saliency.blur(x), x, atol=1e-6)
    noisy = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert saliency.blur(noisy).std() < noisy.std()
    with pytest.raises(ValueError, match="positive odd number"):
        saliency.blur(x, kernel_size=4)


def test_build_model_convnet_and_missing_weights(tmp_path):
    net = saliency.build_model("convnet", 7, width=4, image_size=32)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert isinstance(net.features[1], nn.BatchNorm2d)
    assert set(saliency.ARCH_LAYERS["convnet"][0]) <= set(dict(net.named_modules()))
    with pytest.raises(ValueError, match="arch must be one of convnet, vgg16, resnet50"):
        saliency.build_model("alexnet", 10)
    with pytest.raises(models.WeightsNotFoundError,
                       match="resnet50: ImageNet weights not found.*Put torchvision's checkpoint resnet50-0676ba61"):
        saliency.build_model("resnet50", 10, weights=tmp_path)


def test_build_model_loads_a_torchvision_checkpoint(tmp_path):
    import torchvision
    torch.manual_seed(0)
    ref = torchvision.models.resnet50(weights=None)
    torch.save(ref.state_dict(), tmp_path / "resnet50-0676ba61.pth")
    net = saliency.build_model("resnet50", 20, weights=tmp_path)
    assert isinstance(net.normalize, models.ImageNetNormalize) and net.net.fc.out_features == 20
    assert torch.equal(net.net.conv1.weight, ref.conv1.weight)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # images in [0, 1] go in; the network sees them normalised with ImageNet's statistics
        ref.fc = net.net.fc
        assert torch.allclose(net.eval()(x), ref.eval()(models.ImageNetNormalize()(x)))
    names = dict(net.named_modules())
    layers, cam = saliency.ARCH_LAYERS["resnet50"]
    assert set(layers) | {cam} <= set(names)
    vgg_layers, vgg_cam = saliency.ARCH_LAYERS["vgg16"]
    with torch.device("meta"):  # structure only, no 138M weights to initialise
        vgg = dict(saliency.build_model("vgg16", 20, weights=None).named_modules())
    assert all(isinstance(vgg[n], nn.MaxPool2d) for n in vgg_layers) and isinstance(vgg[vgg_cam], nn.ReLU)


# ----------------------------------------------------------------------------------------------- profiles, loaders
def test_paper_numbers_name_pointing_metrics_of_the_paper_profile():
    """Every paper number of notebook 07 is a pointing accuracy (a fraction) the paper profile records as
    pointing_<dataset>_<arch>_<method>."""
    recorded = {f"pointing_{name}_{arch}_{m}" for name in ("voc07", "coco_instances") for arch in ("vgg16", "resnet50")
                for m in (*saliency.METHODS, "center")}
    rows = [r for r in results.paper_table() if r["notebook"] == "07_normgrad_saliency"]
    assert rows and {r["metric"] for r in rows} <= recorded and all(r["unit"] == "fraction" for r in rows)
    assert saliency.ARCH_LAYERS["vgg16"][0] == tuple(f"net.features.{i}" for i in (9, 16, 23, 30))  # pool outputs


@pytest.mark.parametrize("arch", ["resnet50", "vgg16"])
def test_paper_profile_without_the_imagenet_checkpoint_is_a_hard_error(arch, tmp_path, monkeypatch):
    """The paper profile reads torchvision's checkpoints from the torch hub cache; when one is missing, building the
    network fails with a message naming the file and the folder to put it in (never a silent random start)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    file = {"resnet50": "resnet50-0676ba61.pth", "vgg16": "vgg16-397923af.pth"}[arch]
    with torch.device("meta"), pytest.raises(models.WeightsNotFoundError) as err:  # meta: no weights to initialise
        saliency.build_model(arch, 20, weights="IMAGENET1K_V1")
    assert f"not found at {folder / file}" in str(err.value) and f"checkpoint {file}" in str(err.value)
    assert f"in {folder}" in str(err.value)


def test_imagenet_reader_on_the_official_layout(saliency_mini):
    root, m = saliency_mini
    for split, per_wnid in m.IMAGENET_FILES.items():
        ds = data.load("imagenet", split, full=True, data_dir=root)
        assert ds.classes == list(m.IMAGENET_WNIDS)
        assert ds.labels.tolist() == [k for k, files in enumerate(per_wnid.values()) for _ in files]
        assert [p.rsplit("/", 1)[-1] for p in ds.meta["files"]] == [f for files in per_wnid.values() for f in files]
    train = data.load("imagenet", "train", full=True, data_dir=root, size=16)
    for odd in (m.IMAGENET_CMYK, m.IMAGENET_GREY):   # a CMYK and a greyscale JPEG come out as RGB
        x = train.images[[p.endswith(odd) for p in train.meta["files"]].index(True)]
        assert x.shape == (3, 16, 16) and 0 <= float(x.min()) <= float(x.max()) <= 1
    with pytest.raises(data.DataNotFoundError, match="imagenet.*ImageFolder"):
        data.load("imagenet", "val", full=True, data_dir=root / "nowhere")
