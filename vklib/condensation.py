"""Dataset Condensation with gradient matching (DC, Zhao, Mopuri and Bilen, ICLR 2021, arXiv:2006.05929) and
distribution matching (DM, Zhao and Bilen, WACV 2023, arXiv:2110.04181): the kernels; notebook 01 writes the loops.

DC learns a few synthetic images per class by matching, class by class, the gradient a random network receives from
real images with the one it receives from the synthetic images; DM matches mean embeddings under random networks.

Kernels: the gradient distances (:func:`layer_distance`, :func:`match_distance`), per-class gradients
(:func:`class_gradients`, :func:`matching_loss`), :func:`dm_loss`, class-balanced sampling (:func:`by_class`,
:func:`sample_per_class`), the coreset baselines (:func:`select_coreset`), the evaluation protocol
(:func:`evaluate_sets`), DC's and DSA's augmentations (:func:`dc_augment`, :func:`sample_dsa`, :func:`apply_dsa`),
the benchmarks' data and networks. Images live in DC's normalised space (the constants of :data:`BENCHMARKS`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data, models, train
from .utils import resolve_device

__all__ = [
    "BENCHMARKS", "CORESETS", "DISTANCES", "DSA_OPS", "LOOPS", "NETWORKS", "LeNet", "MLP", "apply_dsa",
    "by_class", "class_gradients", "dc_augment", "denormalize", "dm_loss", "embed", "evaluate_sets", "herding",
    "k_center", "layer_distance", "load_real", "loops_for_ipc", "make_network", "match_distance", "matching_loss",
    "normalize", "sample_dsa", "sample_per_class", "select_coreset",
]


# ----------------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class _Benchmark:
    registry: str          # name in vklib.data
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eval_augment: str      # DC's evaluation augmentation for this dataset ("none" or a dc_augment strategy)
    dsa_strategy: str      # DSA's strategy for this dataset


#: The four benchmarks of the paper's Table 1, with DC's normalisation constants and augmentations.
BENCHMARKS: dict[str, _Benchmark] = {
    "mnist": _Benchmark("mnist", (0.1307,), (0.3081,), "crop_scale_rotate", "color_crop_cutout_scale_rotate"),
    "fashion_mnist": _Benchmark("fashion_mnist", (0.2861,), (0.3530,), "none", "color_crop_cutout_flip_scale_rotate"),
    "svhn": _Benchmark("svhn", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "none",
                       "color_crop_cutout_scale_rotate"),
    "cifar10": _Benchmark("cifar10", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), "none",
                          "color_crop_cutout_flip_scale_rotate"),
}


def _benchmark(name: str) -> _Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def _stats(dataset: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    info = _benchmark(dataset)
    if x.ndim < 3 or x.shape[-3] != len(info.mean):
        raise ValueError(f"{dataset}: expected images (..., {len(info.mean)}, H, W), got shape {tuple(x.shape)}")
    return tuple(torch.tensor(v, dtype=x.dtype, device=x.device).view(-1, 1, 1) for v in (info.mean, info.std))


def normalize(x: torch.Tensor, dataset: str) -> torch.Tensor:
    """Images in [0, 1] ``(..., C, H, W)`` -> DC's normalised space ``(x - mean) / std`` (same shape)."""
    mean, std = _stats(dataset, x)
    return (x - mean) / std


def denormalize(x: torch.Tensor, dataset: str) -> torch.Tensor:
    """Inverse of :func:`normalize`, clamped to [0, 1] for display (same shape)."""
    mean, std = _stats(dataset, x)
    return (x * std + mean).clamp(0, 1)


def load_real(dataset: str, split: str = "train", *, full: bool = False, data_dir=None,
              download: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Normalised real images ``(N, C, H, W)``, labels ``(N,)`` and class names of a benchmark split: the shipped
    subset (``full=False``) or the full dataset through torchvision (see :func:`vklib.data.load`)."""
    name = _benchmark(dataset).registry
    ds = data.load(name, split, data_dir=data_dir, full=full, download=download)
    if ds.labels is None or not torch.is_tensor(ds.images):
        raise data.DataError(f"{name}: DC needs labelled images of one size")
    return normalize(ds.images, dataset), ds.labels, list(ds.classes or [])


# ----------------------------------------------------------------------------------------------- networks
class MLP(nn.Module):
    """DC's MLP for cross-architecture tests: flatten - 128 - ReLU - 128 - ReLU - classes; ``(N, C, S, S)`` ->
    logits ``(N, num_classes)``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet(nn.Module):
    """DC's LeNet (ReLU, max pooling; grey inputs padded by 2 in the first conv, as the paper's code): conv5(6) -
    pool - conv5(16) - pool - 120 - 84 - classes; ``(N, C, S, S)`` -> logits ``(N, num_classes)``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        pad = 2 if in_channels == 1 else 0
        s = ((image_size + 2 * pad - 4) // 2 - 4) // 2
        if s < 1:
            raise ValueError(f"LeNet needs images of at least 16 px, got {image_size}")
        self.features = nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=pad), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * s * s, 120), nn.ReLU(inplace=True),
                                        nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


NETWORKS = ("convnet", "mlp", "lenet", "resnet")


def make_network(name: str, in_channels: int, num_classes: int, image_size: int, *, width: int = 128,
                 depth: int = 3) -> nn.Module:
    """A fresh network by name: ``"convnet"`` (:class:`vklib.models.ConvNet`, instance norm), ``"mlp"``,
    ``"lenet"`` or ``"resnet"`` (:class:`vklib.models.SmallResNet`, batch norm).

    As the official ``networks.py``, the ConvNet pads the first convolution of one-channel 28 px images by 3, so
    that MNIST and Fashion-MNIST run at 32 px like the colour benchmarks (width 128, depth 3: 2,048 features)."""
    if name == "convnet":
        if in_channels == 1 and image_size == 28:
            net = models.ConvNet(in_channels, num_classes, 32, width=width, depth=depth)
            net.features[0].padding = (3, 3)
            return net
        return models.ConvNet(in_channels, num_classes, image_size, width=width, depth=depth)
    if name in ("mlp", "lenet"):
        return (MLP if name == "mlp" else LeNet)(in_channels, num_classes, image_size)
    if name == "resnet":
        return models.SmallResNet(in_channels, num_classes)
    raise ValueError(f"unknown network {name!r}; allowed: {', '.join(NETWORKS)}")


def _seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``make()`` with torch's global RNG seeded by ``seed`` inside, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


# ----------------------------------------------------------------------------------------------- distances
DISTANCES = ("dc", "mse", "cos")
_EPS = 1e-6  # the paper code's epsilon in the cosine denominator


def layer_distance(g_syn: torch.Tensor, g_real: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    """The paper's distance between two gradients ``(*batch, *param_shape)`` of one parameter, summed over the
    ``batch_dims`` leading dimensions (e.g. 1 for classes): a scalar, differentiable in ``g_syn``.

    A weight gradient ``(out, in, h, w)`` (or ``(out, in)``) is reshaped to ``out x (in*h*w)``; the distance is
    ``sum over output units of (1 - cos)``, the cosine ``<a, b> / (|a| |b| + 1e-6)`` as in the paper's code.
    One-dimensional parameters (biases, normalisation scales and shifts) contribute nothing."""
    if g_syn.shape != g_real.shape:
        raise ValueError(f"gradient shapes differ: {tuple(g_syn.shape)} vs {tuple(g_real.shape)}")
    pshape = g_syn.shape[batch_dims:]
    if len(pshape) <= 1:
        return g_syn.new_zeros(())
    a = g_syn.reshape(*g_syn.shape[:batch_dims], pshape[0], -1)
    b = g_real.reshape(*g_real.shape[:batch_dims], pshape[0], -1)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + _EPS)
    return (1 - cos).sum()


def match_distance(g_syn, g_real, metric: str = "dc", batch_dims: int = 1) -> torch.Tensor:
    """Distance (a scalar) between two sets of parameter gradients, summed over the leading ``batch_dims``.

    ``g_syn``, ``g_real``: dicts (same keys, same order) or sequences of gradients ``(*batch, *param_shape)``, as
    :func:`class_gradients` returns them (``batch_dims=1``: one per class). ``metric``: ``"dc"`` (the paper's
    :func:`layer_distance`, summed over layers), ``"mse"`` (squared Euclidean distance of all gradients, biases
    included) or ``"cos"`` (``1 - cos`` of all gradients flattened into one vector per class)."""
    if metric not in DISTANCES:
        raise ValueError(f"unknown distance {metric!r}; allowed: {', '.join(DISTANCES)}")
    gs, gr = ([*g.values()] if isinstance(g, Mapping) else [*g] for g in (g_syn, g_real))
    if len(gs) != len(gr) or not gs:
        raise ValueError(f"need the same non-zero number of gradients on both sides, got {len(gs)} and {len(gr)}")
    if metric == "dc":
        return sum(layer_distance(a, b, batch_dims) for a, b in zip(gs, gr))
    lead = gs[0].shape[:batch_dims]
    a = torch.cat([g.reshape(*lead, -1) for g in gs], -1)
    b = torch.cat([g.reshape(*lead, -1) for g in gr], -1)
    if metric == "mse":
        return ((a - b) ** 2).sum()
    return (1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + _EPS)).sum()


# ----------------------------------------------------------------------------------------------- gradients
def _has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def class_gradients(net: nn.Module, images: torch.Tensor, *, create_graph: bool = False,
                    vectorised: bool | None = None, weights_only: bool = False) -> dict[str, torch.Tensor]:
    """The cross-entropy gradient of every parameter for every class, class ``c`` being the label of ``images[c]``.

    Args:
        net: a network without BatchNorm (its parameters are read, never changed, their ``.grad`` untouched).
        images: ``(K, n, C, H, W)``: ``n`` images of each of ``K`` classes.
        create_graph: keep the graph to the images (the synthetic side); otherwise the gradients are detached (the
            real side).
        vectorised: one ``torch.func.vmap`` pass over classes instead of a loop; ``None``: on a GPU, and on a CPU
            for the synthetic side (``create_graph=True``: a few images per class, where the loop's per-call
            overhead dominates); the real side loops on a CPU (faster there, and ``vmap`` would hold all classes'
            activations, about 17 GB at the paper's sizes).
        weights_only: only the parameters with two or more dimensions (all that the paper's distance reads).

    Returns:
        ``{name: (K, *param.shape)}`` in ``net.named_parameters()`` order: class ``c``'s gradient of the mean loss
        over its ``n`` images.
    """
    if images.ndim != 5:
        raise ValueError(f"images must be (K, n, C, H, W), got shape {tuple(images.shape)}")
    if _has_batchnorm(net):
        raise ValueError("gradient matching here needs a network without BatchNorm (e.g. ConvNet's instance norm): "
                         "one synthetic image per class gives no usable batch statistics")
    K, n = images.shape[:2]
    labels = torch.arange(K, device=images.device)[:, None].expand(K, n)
    params = {k: p.detach() for k, p in net.named_parameters()}
    names = [k for k, p in params.items() if p.ndim > 1 or not weights_only]
    if vectorised is None:
        vectorised = images.device.type != "cpu" or create_graph
    if vectorised:
        from torch.func import functional_call, grad, vmap
        buffers = dict(net.named_buffers())

        def loss_fn(p, x, y):
            return F.cross_entropy(functional_call(net, ({**params, **p}, buffers), (x,)), y)

        out = vmap(grad(loss_fn), in_dims=(None, 0, 0))({k: params[k] for k in names}, images, labels)
        return {k: (out[k] if create_graph else out[k].detach()) for k in names}
    leaves = {k: params[k].requires_grad_() for k in names}
    per_class = []
    with torch.enable_grad():
        for c in range(K):
            loss = F.cross_entropy(torch.func.functional_call(net, {**params, **leaves}, (images[c],)), labels[c])
            per_class.append(torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph))
    return {k: torch.stack(g).contiguous() for k, g in zip(names, zip(*per_class))}


def matching_loss(net: nn.Module, real: torch.Tensor, syn: torch.Tensor, metric: str = "dc", *,
                  vectorised: bool | None = None) -> torch.Tensor:
    """DC's objective for one network, ``sum over classes c of D(grad on syn[c], grad on real[c])``: a scalar,
    differentiable in ``syn``.

    ``real``: ``(K, n_real, C, H, W)`` real images, class ``c`` in row ``c``; ``syn``: ``(K, ipc, C, H, W)``
    synthetic images, same classes; ``metric``: see :func:`match_distance` (for ``"dc"`` only the weights'
    gradients are computed: the distance gives one-dimensional parameters nothing).
    """
    if real.shape[0] != syn.shape[0] or real.shape[2:] != syn.shape[2:]:
        raise ValueError(f"real {tuple(real.shape)} and synthetic {tuple(syn.shape)} must share K, C, H, W")
    g_real = class_gradients(net, real, vectorised=vectorised, weights_only=metric == "dc")
    g_syn = class_gradients(net, syn, create_graph=True, vectorised=vectorised, weights_only=metric == "dc")
    return match_distance(g_syn, g_real, metric)


# ----------------------------------------------------------------------------------------------- augmentation
def _affine(x: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Warp ``x`` ``(N, C, H, W)`` by affine matrices ``theta`` ``(N, 2, 3)``; outside pixels take ``fill``."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, align_corners=False) + fill


def _rotation(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    z = torch.zeros_like(c)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1)], -2)


def _dc_augment_ops(strategy: str | None) -> list[str]:
    """The operations of a :func:`dc_augment` strategy (``[]`` for ``"none"``), checked."""
    ops = [] if strategy in ("none", "", None) else strategy.split("_")
    unknown = sorted(set(ops) - {"crop", "scale", "rotate", "noise"})
    if unknown:
        raise ValueError(f"unknown dc_augment operation(s) {unknown}; allowed: crop, scale, rotate, noise")
    return ops


def dc_augment(x: torch.Tensor, strategy: str = "crop_scale_rotate", *, generator: torch.Generator | None = None,
               crop: int = 4, scale: float = 0.2, rotate: float = 45.0, noise: float = 0.001) -> torch.Tensor:
    """DC's augmentation for training evaluation networks: every image of ``x`` ``(N, C, H, W)`` gets ONE of the
    operations of ``strategy`` (``"none"`` or ops joined by ``_`` from ``crop, scale, rotate, noise``), chosen at
    random, in one batched warp; returns ``(N, C, H, W)``.

    ``crop`` shifts by up to ``crop`` pixels, ``scale`` stretches height and width independently by a factor in
    ``[1 - scale, 1 + scale]``, ``rotate`` turns by up to ``rotate`` degrees (uncovered pixels take the image
    batch's mean, as in the paper's code), ``noise`` adds Gaussian noise."""
    ops = _dc_augment_ops(strategy)
    if not ops:
        return x
    N, C, H, W = x.shape
    g = generator
    choice = torch.randint(len(ops), (N,), generator=g)
    u = torch.rand(N, 4, generator=g)
    theta = torch.eye(2, 3).repeat(N, 1, 1)
    for i, op in enumerate(ops):
        sel = choice == i
        if op == "crop":
            shift = torch.floor(u[:, :2] * (2 * crop + 1)) - crop          # integer pixels in [-crop, crop]
            theta[sel, 0, 2] = (shift[sel, 0] * 2 / W)
            theta[sel, 1, 2] = (shift[sel, 1] * 2 / H)
        elif op == "scale":
            s = 1 - scale + 2 * scale * u[:, :2]
            theta[sel, 0, 0], theta[sel, 1, 1] = 1 / s[sel, 0], 1 / s[sel, 1]
        elif op == "rotate":
            ang = (u[:, 2] * 2 - 1) * rotate * math.pi / 180
            theta[sel] = _rotation(ang[sel])
    fill = x.mean(dim=(0, 2, 3), keepdim=True).detach()
    out = _affine(x, theta, fill)
    if "noise" in ops:
        sel = (choice == ops.index("noise")).to(x.device)
        out = torch.where(sel[:, None, None, None], x + noise * torch.randn(x.shape, generator=g).to(x), out)
    return out


DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


def sample_dsa(strategy: str, k: int, generator: torch.Generator | None = None) -> dict:
    """Parameters of one differentiable siamese augmentation (DSA) for ``k`` groups (classes), for :func:`apply_dsa`:
    as DSA's single mode, one operation of ``strategy`` (ops joined by ``_`` from :data:`DSA_OPS`) for the whole
    call, its random parameters drawn once per group (the real and synthetic images of a class get the same one)."""
    ops = strategy.split("_")
    unknown = sorted(set(ops) - set(DSA_OPS))
    if unknown or not strategy:
        raise ValueError(f"unknown DSA operation(s) {unknown or [strategy]}; allowed: {', '.join(DSA_OPS)}")
    g = generator
    op = ops[int(torch.randint(len(ops), (1,), generator=g))]
    return {"op": op, "u": torch.rand(k, 3, generator=g)}


def apply_dsa(x: torch.Tensor, params: dict) -> torch.Tensor:
    """Apply the DSA operation ``params`` (from :func:`sample_dsa`) to ``x`` ``(K, n, C, H, W)``: group ``k`` gets
    transformation ``k`` (same for its ``n`` images). Differentiable in ``x``; returns the same shape."""
    K, n, C, H, W = x.shape
    op, u = params["op"], params["u"].to(x.device)
    if u.shape[0] != K:
        raise ValueError(f"DSA parameters are for {u.shape[0]} groups, images have {K}")
    per = lambda t: t.repeat_interleave(n, 0)  # noqa: E731  (K, ...) -> (K*n, ...)
    flat = x.reshape(K * n, C, H, W)
    if op == "color":  # brightness, saturation, contrast as in DSA
        b, s, c = (u[:, i].view(K, 1, 1, 1, 1) for i in range(3))
        y = x + (b - 0.5)
        m = y.mean(dim=2, keepdim=True)
        y = (y - m) * (s * 2.0) + m
        m = y.mean(dim=(2, 3, 4), keepdim=True)
        return (y - m) * (c + 0.5) + m
    if op == "flip":
        return torch.where((u[:, 0] < 0.5).view(K, 1, 1, 1, 1), x.flip(-1), x)
    if op == "cutout":
        size_h, size_w = int(H * 0.5 + 0.5), int(W * 0.5 + 0.5)
        cy, cx = (u[:, 0] * H).floor(), (u[:, 1] * W).floor()
        ys = torch.arange(H, device=x.device).view(1, H, 1)
        xs = torch.arange(W, device=x.device).view(1, 1, W)
        inside = ((ys - cy.view(K, 1, 1)).abs() <= size_h // 2) & ((xs - cx.view(K, 1, 1)).abs() <= size_w // 2)
        return x * (~inside).to(x.dtype).view(K, 1, 1, H, W)
    theta = torch.eye(2, 3, device=x.device).repeat(K, 1, 1)
    if op == "crop":  # translation by up to 1/8 of the side, zero padded
        sh, sw = int(H * 0.125 + 0.5), int(W * 0.125 + 0.5)
        theta[:, 0, 2] = (torch.floor(u[:, 0] * (2 * sw + 1)) - sw) * 2 / W
        theta[:, 1, 2] = (torch.floor(u[:, 1] * (2 * sh + 1)) - sh) * 2 / H
    elif op == "scale":
        ratio = 1.2
        theta[:, 0, 0] = u[:, 0] * (ratio - 1 / ratio) + 1 / ratio
        theta[:, 1, 1] = u[:, 1] * (ratio - 1 / ratio) + 1 / ratio
    elif op == "rotate":
        theta = _rotation((u[:, 0] - 0.5) * 2 * 15.0 * math.pi / 180)
    else:
        raise ValueError(f"unknown DSA operation {op!r}; allowed: {', '.join(DSA_OPS)}")
    return _affine(flat, per(theta)).reshape(K, n, C, H, W)


# ----------------------------------------------------------------------------------------------- condensation
#: (outer loops, inner loops) per images-per-class, from the paper's code (``get_loops``).
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def loops_for_ipc(ipc: int, loops: Mapping[int, tuple[int, int]] = LOOPS) -> tuple[int, int]:
    """The (outer, inner) loop counts for ``ipc`` images per class from ``loops`` (by default the paper's)."""
    if ipc not in loops:
        raise ValueError(f"no loop counts for ipc {ipc}: defined for ipc in {sorted(loops)}")
    return tuple(loops[ipc])


def by_class(labels: torch.Tensor, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded index matrix ``(K, n_max)`` of each class's samples (padding -1) and the counts ``(K,)``."""
    K = int(num_classes or int(labels.max()) + 1)
    counts = torch.bincount(labels, minlength=K)[:K]
    order = torch.argsort(labels, stable=True)
    n_max = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(n_max)[None, :]
    return torch.where(pos < counts[:, None], order[(starts[:, None] + pos).clamp(max=len(order) - 1)], -1), counts


def sample_per_class(index: torch.Tensor, counts: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` distinct random indices of every class ``(K, n)`` from :func:`by_class`'s ``index`` and ``counts``
    (one batched draw, no loop over classes)."""
    if int(counts.min()) < n:
        c = int(counts.argmin())
        raise ValueError(f"class {c} has only {int(counts[c])} samples, fewer than the {n} asked for")
    keys = torch.rand(index.shape, generator=g)
    keys[index < 0] = 2.0  # padding sorts last
    pick = keys.argsort(dim=1)[:, :n]
    return index.gather(1, pick)


def dm_loss(net: nn.Module, real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    """DM's objective for one random network: ``sum over classes c of |mean embed(real[c]) - mean embed(syn[c])|^2``
    with ``net.embed`` (e.g. :meth:`vklib.models.ConvNet.embed`, the features before the classifier), for real images
    ``(K, n_real, C, H, W)`` (no gradient kept) and synthetic ones ``(K, ipc, C, H, W)``, class ``c`` in row ``c``.
    A scalar, differentiable in ``syn``."""
    if real.ndim != 5 or real.shape[0] != syn.shape[0] or real.shape[2:] != syn.shape[2:]:
        raise ValueError(f"real {tuple(real.shape)} and synthetic {tuple(syn.shape)} must be (K, n, C, H, W) with "
                         f"the same K, C, H, W")
    if not hasattr(net, "embed"):
        raise ValueError(f"{type(net).__name__} has no embed() method to give features")
    with torch.no_grad():
        mu_real = net.embed(real.flatten(0, 1)).unflatten(0, real.shape[:2]).mean(1)
    mu_syn = net.embed(syn.flatten(0, 1)).unflatten(0, syn.shape[:2]).mean(1)
    return ((mu_real - mu_syn) ** 2).sum()


# ----------------------------------------------------------------------------------------------- coresets
def embed(net: nn.Module, images: torch.Tensor, *, batch_size: int = 512,
          device: str | torch.device = "auto") -> torch.Tensor:
    """Features ``(N, D)`` of ``images`` ``(N, C, H, W)`` from ``net.embed`` (e.g.
    :meth:`vklib.models.ConvNet.embed`), by :func:`vklib.train.infer` (eval mode, on the CPU)."""
    if not hasattr(net, "embed"):
        raise ValueError(f"{type(net).__name__} has no embed() method to give features")
    return train.infer(net, images, fn=lambda m, x: m.embed(x), batch_size=batch_size, device=device)


def herding(features: torch.Tensor, n: int) -> torch.Tensor:
    """Herding (Welling 2009; Rebuffi et al. 2017): greedily pick ``n`` rows of ``features`` ``(M, D)`` so that the
    running mean of the picked rows stays closest to the mean of all rows. Returns indices ``(n,)`` in pick order."""
    if not 1 <= n <= len(features):
        raise ValueError(f"herding: n must be in 1..{len(features)}, got {n}")
    mu = features.mean(0)
    picked: list[int] = []
    total = torch.zeros_like(mu)
    free = torch.ones(len(features), dtype=torch.bool)
    for k in range(n):  # n steps, each vectorised over all candidates
        i = int(((mu - (total + features) / (k + 1)) ** 2).sum(1).masked_fill(~free, float("inf")).argmin())
        picked.append(i)
        free[i] = False
        total += features[i]
    return torch.tensor(picked)


def k_center(features: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy k-center (Wolf 2011; Sener and Savarese 2018) on ``features`` ``(M, D)``: start from the row nearest
    the mean, then repeatedly add the row farthest from all chosen centres. Returns indices ``(n,)``."""
    if not 1 <= n <= len(features):
        raise ValueError(f"k_center: n must be in 1..{len(features)}, got {n}")
    picked = [int(((features - features.mean(0)) ** 2).sum(1).argmin())]
    dist = ((features - features[picked[0]]) ** 2).sum(1)
    for _ in range(n - 1):
        i = int(dist.argmax())
        picked.append(i)
        dist = torch.minimum(dist, ((features - features[i]) ** 2).sum(1))
    return torch.tensor(picked)


CORESETS = ("random", "herding", "kcenter")


def select_coreset(labels: torch.Tensor, ipc: int, method: str = "random", *, features: torch.Tensor | None = None,
                   num_classes: int | None = None, seed: int = 0) -> torch.Tensor:
    """Indices ``(K * ipc,)`` of a class-balanced coreset of real samples, class-major (class 0's first), by
    ``method`` ``"random"``, ``"herding"`` or ``"kcenter"`` (these two need ``features`` ``(N, D)``, e.g. from
    :func:`embed`)."""
    if method not in CORESETS:
        raise ValueError(f"unknown coreset method {method!r}; allowed: {', '.join(CORESETS)}")
    if not isinstance(ipc, int) or ipc < 1:
        raise ValueError(f"ipc must be an int >= 1, got {ipc!r}")
    K = int(num_classes or int(labels.max()) + 1)
    index, counts = by_class(labels, K)
    if int(counts.min()) < ipc:
        raise ValueError(f"class {int(counts.argmin())} has {int(counts.min())} samples, fewer than ipc={ipc}")
    if method == "random":
        return sample_per_class(index, counts, ipc, torch.Generator().manual_seed(seed)).flatten()
    if features is None or len(features) != len(labels):
        raise ValueError(f"{method} needs features (N, D) for the N={len(labels)} samples")
    pick = herding if method == "herding" else k_center
    out = []
    for c in range(K):  # a loop over classes; each selection is vectorised over the class's samples
        rows = index[c, :int(counts[c])]
        out.append(rows[pick(features[rows].float(), ipc)])
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate_sets(images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor,
                  *, net_fn: Callable[[], nn.Module], seeds: Sequence[int], epochs: int = 300, lr: float = 0.01,
                  batch_size: int = 256, augment: str = "none", device: str | torch.device = "auto",
                  progress: bool = False) -> list[float]:
    """Train one fresh network per small set and test it on real data (the paper's protocol); returns the ``S``
    test accuracies (fractions).

    Network ``s`` (``net_fn()`` initialised under ``seeds[s]``) is trained on ``images[s]`` ``(M, C, H, W)`` /
    ``labels[s]`` ``(M,)`` of ``images`` ``(S, M, C, H, W)`` / ``labels`` ``(S, M)``, with SGD (momentum 0.9,
    weight decay 5e-4, ``lr`` decayed x0.1 at half of ``epochs``), its batch order and the :func:`dc_augment`
    ``augment`` of every batch drawn from ``seeds[s]``, and tested on ``test_images`` ``(N, C, H, W)`` /
    ``test_labels`` ``(N,)``. All networks train in one pass as one :class:`vklib.train.Ensemble` (equal to
    separate runs, to float tolerance); networks with BatchNorm (e.g. ``"resnet"``) cannot be stacked and train one
    after the other by the same recipe.
    """
    if images.ndim != 5 or images.shape[:2] != labels.shape or images.shape[1] == 0:
        raise ValueError(f"images must be (S, M, C, H, W) with labels (S, M), M >= 1; got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}")
    if len(seeds) != len(images) or epochs < 1:
        raise ValueError(f"need one seed per set ({len(images)}) and epochs >= 1, got {len(seeds)} seeds and "
                         f"epochs={epochs}")
    ops = _dc_augment_ops(augment)
    aug = (lambda x, g: dc_augment(x, augment, generator=g)) if ops else None
    dev = resolve_device(device)
    if _has_batchnorm(_seeded(net_fn, seeds[0])):
        accs = []
        for s in tqdm(range(len(seeds)), desc="evaluate", disable=not progress, leave=False):
            net = _seeded(net_fn, seeds[s])
            train.train_classifier(net, images[s], labels[s], epochs=epochs, batch_size=batch_size, lr=lr,
                                   augment=aug, seed=seeds[s], device=dev)
            accs.append(train.evaluate(net, test_images, test_labels, batch_size=256, device=dev))
        return accs
    with torch.random.fork_rng(devices=[]):  # Ensemble seeds torch's global RNG; leave the caller's alone
        nets = train.Ensemble(net_fn, list(seeds)).to(dev)
    x_all, y_all = images.to(dev), labels.to(dev)
    rows = torch.arange(len(seeds), device=dev)[:, None]
    opt = torch.optim.SGD(nets.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, train.milestones((0.5,), epochs), gamma=0.1)

    def batch_loss(idx, gens):  # idx (S, B): member s's batch of its own set
        idx = idx.to(dev)
        x, y = x_all[rows, idx], y_all[rows, idx]
        if aug is not None:
            x = torch.stack([aug(xs, g) for xs, g in zip(x, gens)])
        return F.cross_entropy(nets(x).flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)

    train.fit_epochs(batch_loss, images.shape[1], epochs=epochs, batch_size=batch_size, optimizer=opt,
                     scheduler=sched, schedule_every="epoch", seed=list(seeds), progress=progress, desc="evaluate")
    return train.evaluate(nets, test_images, test_labels, batch_size=256, device=dev)
