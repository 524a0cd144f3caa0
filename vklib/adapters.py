"""Latent domain learning with dynamic residual adapters (Deecke, Hospedales, Bilen; arXiv 2006.00996).

A frozen backbone is specialised to a pool of *unlabelled* domains with few new parameters: **residual adapters**
(Rebuffi et al.), a 1x1 convolution beside each frozen convolution, ``y = W * x + A * x``; **dynamic residual
adapters**, ``K`` adapters mixed per sample by a gate on the layer input, ``y = W * x + sum_k g_k(x) A_k * x``,
``g(x) = softmax(G mean_hw(x) + b + eps)`` (or :func:`sparsemax`); **style exchange**, AdaIN-style swapping of
channel statistics between the samples of a batch. Kernels, modules, model surgery, the split helpers and the full
Office-Home / DomainNet readers (registered by :mod:`vklib.data`); the training loop and ``PROFILES`` are in
notebook 06.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from . import data as _data
from . import models
from .train import gather, infer

__all__ = [
    "GATES", "RESNETS", "VARIANTS", "AdaptedConv2d", "StyleExchange", "add_adapters", "add_style_exchange",
    "build_backbone", "crop_and_jitter", "dynamic_adapter", "freeze_backbone", "gate_probs",
    "logits_and_gates", "make_variant", "normalized_mutual_info", "per_domain_accuracy", "read_gates",
    "reestimate_batchnorm", "sparsemax", "split_cells", "style_exchange", "subsample_domain", "trainable_parameters",
]

VARIANTS = ("head_only", "bn_head", "single_adapter", "dynamic_adapters", "dynamic_adapters_style")
GATES = ("softmax", "sparsemax")

# ============================================================================================ kernels
def sparsemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sparsemax (Martins and Astudillo 2016), the Euclidean projection of ``z`` onto the simplex along ``dim``:
    weights summing to one with exact zeros for small scores. Shapes: any, e.g. ``(N, K)`` -> ``(N, K)``."""
    z = z.transpose(dim, -1)
    zs, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cum = zs.cumsum(-1)
    support = (1 + k * zs) > cum                       # the sorted entries that stay positive
    k_z = support.sum(-1, keepdim=True)                # size of the support, >= 1
    tau = (cum.gather(-1, k_z - 1) - 1) / k_z.to(z.dtype)
    return torch.clamp(z - tau, min=0).transpose(dim, -1)


def gate_probs(pooled: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
               kind: str = "softmax", noise_std: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The DRA gate ``g = kind(pooled @ weight.T + bias + eps)``, ``eps ~ N(0, noise_std^2)`` drawn from
    ``generator`` (default torch's global RNG; use ``noise_std=0`` at test time), ``kind`` softmax or sparsemax.

    Shapes: ``pooled`` ``(N, C)`` (the pooled layer input), ``weight`` ``(K, C)``, ``bias`` ``(K,)`` or None ->
    ``(N, K)`` non-negative weights summing to one per sample.
    """
    if kind not in GATES:
        raise ValueError(f"gate kind must be one of {', '.join(GATES)}, got {kind!r}")
    if pooled.ndim != 2 or weight.ndim != 2 or pooled.shape[1] != weight.shape[1]:
        raise ValueError(f"gate_probs: pooled must be (N, C) and weight (K, C), got {tuple(pooled.shape)} and "
                         f"{tuple(weight.shape)}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    logits = F.linear(pooled, weight, bias)
    if noise_std > 0:
        noise = torch.randn(logits.shape, generator=generator, device="cpu" if generator is not None else
                            logits.device, dtype=logits.dtype).to(logits.device)
        logits = logits + noise_std * noise
    return torch.softmax(logits, -1) if kind == "softmax" else sparsemax(logits, -1)


def dynamic_adapter(x: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor | None = None,
                    stride: int = 1) -> torch.Tensor:
    """The adapters' contribution ``sum_k g[n, k] (A_k * x_n)``, computed as one 1x1 convolution per sample with the
    mixed matrix ``M_n = sum_k g[n, k] A_k`` (a batched matrix product: ``K`` adapters cost about one).

    Shapes: ``x`` ``(N, C_in, H, W)``; ``weight`` ``(K, C_out, C_in)`` (or ``(C_out, C_in)``, ``K = 1``); ``gate``
    ``(N, K)``, None for ``K = 1`` (a plain residual adapter); ``stride`` that of the frozen convolution ->
    ``(N, C_out, ceil(H / stride), ceil(W / stride))``.
    """
    if weight.ndim == 2:
        weight = weight.unsqueeze(0)
    if x.ndim != 4 or weight.ndim != 3 or weight.shape[2] != x.shape[1]:
        raise ValueError(f"dynamic_adapter: x must be (N, C_in, H, W) and weight (K, C_out, C_in), got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    xs = x[:, :, ::stride, ::stride] if stride > 1 else x
    n, c, h, w = xs.shape
    if gate is None:
        if weight.shape[0] != 1:
            raise ValueError(f"dynamic_adapter: {weight.shape[0]} adapters need a gate of shape (N, "
                             f"{weight.shape[0]})")
        mixed = weight                                            # (1, C_out, C_in), broadcast over the batch
    elif gate.shape != (x.shape[0], weight.shape[0]):
        raise ValueError(f"dynamic_adapter: gate must be (N, K) = ({x.shape[0]}, {weight.shape[0]}), got "
                         f"{tuple(gate.shape)}")
    else:
        mixed = torch.einsum("nk,koc->noc", gate, weight)        # (N, C_out, C_in)
    # a 1x1 convolution as a (batched) matrix product over pixels: faster than conv2d for these sizes on CPUs
    return torch.matmul(mixed, xs.reshape(n, c, h * w)).view(n, -1, h, w)


def style_exchange(a: torch.Tensor, eta: float | torch.Tensor, perm: torch.Tensor | None = None, *,
                   generator: torch.Generator | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Style exchange: each sample ``x`` takes the channel means ``m`` and standard deviations ``s`` (over H, W, ``eps``
    added to the variance) of its partner ``z = perm[x]``, AdaIN style, blended with the original:
    ``eta * (s_z * (a_x - m_x) / s_x + m_z) + (1 - eta) * a_x``.

    Shapes: ``a`` ``(N, C, H, W)``; ``eta`` in [0, 1], a number or ``(N,)``; ``perm`` ``(N,)`` (default a random
    permutation drawn from ``generator``) -> ``(N, C, H, W)``.
    """
    if a.ndim != 4:
        raise ValueError(f"style_exchange: a must be (N, C, H, W), got shape {tuple(a.shape)}")
    n = a.shape[0]
    eta = torch.as_tensor(eta, dtype=a.dtype, device=a.device)
    if eta.ndim not in (0, 1) or (eta.ndim == 1 and eta.shape[0] != n):
        raise ValueError(f"style_exchange: eta must be a number or an (N,) tensor, got shape {tuple(eta.shape)}")
    if bool(((eta < 0) | (eta > 1)).any()):
        raise ValueError("style_exchange: eta must lie in [0, 1]")
    if perm is None:
        perm = torch.randperm(n, generator=generator).to(a.device)
    elif perm.shape != (n,):
        raise ValueError(f"style_exchange: perm must be (N,) = ({n},), got {tuple(perm.shape)}")
    mu = a.mean(dim=(2, 3), keepdim=True)
    sig = (a.var(dim=(2, 3), keepdim=True, unbiased=False) + eps).sqrt()
    swapped = sig[perm] * (a - mu) / sig + mu[perm]
    eta = eta.view(-1, 1, 1, 1) if eta.ndim == 1 else eta
    return eta * swapped + (1 - eta) * a


def normalized_mutual_info(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Normalised mutual information ``I(a; b) / ((H(a) + H(b)) / 2)`` (scikit-learn's default): 0 for independent
    labelings, 1 for identical partitions. Shapes: ``a``, ``b`` ``(N,)`` integers -> a 0-d float64 tensor in [0, 1]."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.ndim != 1 or a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"normalized_mutual_info: a and b must be non-empty (N,) tensors of one length, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.is_floating_point() or b.is_floating_point():
        raise ValueError("normalized_mutual_info: labels must be integers")
    _, ai = torch.unique(a, return_inverse=True)
    _, bi = torch.unique(b, return_inverse=True)
    na, nb = int(ai.max()) + 1, int(bi.max()) + 1
    if na == nb == 1:
        return torch.tensor(1.0, dtype=torch.float64)
    joint = torch.bincount(ai * nb + bi, minlength=na * nb).view(na, nb).double() / a.numel()
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = (joint[nz] * (joint[nz] / (pa[:, None] * pb[None, :])[nz]).log()).sum()
    ent = lambda p: -(p[p > 0] * p[p > 0].log()).sum()
    denom = (ent(pa) + ent(pb)) / 2
    return (mi / denom).clamp(0, 1) if denom > 0 else torch.tensor(0.0, dtype=torch.float64)


def per_domain_accuracy(pred: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor,
                        num_domains: int | None = None) -> torch.Tensor:
    """Top-1 accuracy per domain. Shapes: ``pred`` ``(N,)`` classes or ``(N, C)`` logits, ``labels`` and ``domains``
    ``(N,)`` -> ``(D,)`` float, ``D = num_domains`` (default ``domains.max() + 1``; NaN for an empty domain)."""
    if pred.ndim == 2:
        pred = pred.argmax(1)
    if not (pred.shape == labels.shape == domains.shape) or pred.ndim != 1:
        raise ValueError(f"per_domain_accuracy: pred, labels and domains must be (N,), got {tuple(pred.shape)}, "
                         f"{tuple(labels.shape)}, {tuple(domains.shape)}")
    d = int(domains.max()) + 1 if num_domains is None else num_domains
    if len(domains) and int(domains.max()) >= d:
        raise ValueError(f"per_domain_accuracy: a domain index is >= num_domains={d}")
    hits = torch.bincount(domains, weights=(pred == labels).double(), minlength=d)
    count = torch.bincount(domains, minlength=d).double()
    return (hits / count).float()


# ============================================================================================ modules
class AdaptedConv2d(nn.Module):
    """A frozen convolution with ``K`` parallel 1x1 adapters, ``y = conv(x) + sum_k g_k(x) A_k * x``: ``K = 1`` a plain
    residual adapter, ``K > 1`` gated by :func:`gate_probs` on ``mean_hw(x)`` (noise only in training mode; the last
    gates, detached, in :attr:`last_gate` ``(N, K)``). Adapters start at ``init_scale`` times He's ``N(0, 2 / C_out)``
    (official: 1; 0 gives the gate a zero gradient at the first step); the gate ``nn.Linear``'s uniform, bias zero.

    Shapes: ``(N, C_in, H, W)`` -> the frozen convolution's output ``(N, C_out, H', W')``.
    """

    def __init__(self, conv: nn.Conv2d, num_adapters: int = 1, *, gate: str = "softmax", noise_std: float = 0.0,
                 init_scale: float = 0.0, generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"AdaptedConv2d wraps an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1]:
            raise ValueError("AdaptedConv2d needs groups=1, dilation=1 and equal strides")
        if num_adapters < 1:
            raise ValueError(f"num_adapters must be >= 1, got {num_adapters}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
        self.conv, self.num_adapters, self.gate_kind, self.noise_std = conv, num_adapters, gate, noise_std
        self.stride = conv.stride[0]
        c_out, c_in = conv.out_channels, conv.in_channels
        if init_scale < 0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale}")
        # He initialisation of a 1x1 convolution (std sqrt(2 / fan_out), as the official code), scaled
        w = torch.randn(num_adapters, c_out, c_in, generator=generator) * (init_scale * math.sqrt(2 / c_out))
        self.adapter = nn.Parameter(w.to(conv.weight.device, conv.weight.dtype))
        if num_adapters > 1:
            self.gate = nn.Linear(c_in, num_adapters).to(conv.weight.device, conv.weight.dtype)
            with torch.no_grad():
                bound = 1 / math.sqrt(c_in)
                self.gate.weight.copy_(torch.empty(num_adapters, c_in).uniform_(-bound, bound, generator=generator))
                self.gate.bias.zero_()
        else:
            self.gate = None
        self.last_gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        g = None
        if self.gate is not None:
            g = gate_probs(x.mean(dim=(2, 3)), self.gate.weight, self.gate.bias, kind=self.gate_kind,
                           noise_std=self.noise_std if self.training else 0.0)
            self.last_gate = g.detach()
        extra = dynamic_adapter(x, self.adapter, g, self.stride)
        if extra.shape != out.shape:
            raise ValueError(f"adapter output {tuple(extra.shape)} does not match the convolution's "
                             f"{tuple(out.shape)}; adapters need 'same'-style padding")
        return out + extra

    def extra_repr(self) -> str:
        return f"num_adapters={self.num_adapters}, gate={self.gate_kind if self.gate is not None else None}"


class StyleExchange(nn.Module):
    """:func:`style_exchange` on a batch with probability ``p`` in training mode, else identity. ``(N, C, H, W)``."""

    def __init__(self, eta: float = 0.5, p: float = 0.5):
        super().__init__()
        if not 0 <= eta <= 1 or not 0 <= p <= 1:
            raise ValueError(f"StyleExchange: eta and p must lie in [0, 1], got eta={eta}, p={p}")
        self.eta, self.p = eta, p

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if not self.training or a.shape[0] < 2 or self.p == 0 or float(torch.rand(())) >= self.p:
            return a
        return style_exchange(a, self.eta)

    def extra_repr(self) -> str:
        return f"eta={self.eta}, p={self.p}"


# ============================================================================================ model surgery
def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def freeze_backbone(model: nn.Module, trainable: Sequence[str] = ("head",), *, norm: str = "frozen") -> nn.Module:
    """Freeze ``model`` in place except the submodules named in ``trainable``; return it. BatchNorm outside them:
    ``norm="frozen"`` -> ``FrozenBatchNorm2d`` (fixed statistics); ``norm="train"`` keeps BatchNorm, scale and shift
    trainable and statistics re-estimated on the new data (the normalisation residual adapters come with)."""
    from torchvision.ops import FrozenBatchNorm2d
    if norm not in ("frozen", "train"):
        raise ValueError(f"norm must be 'frozen' or 'train', got {norm!r}")
    names = dict(model.named_modules())
    missing = [t for t in trainable if t not in names]
    if missing:
        raise ValueError(f"freeze_backbone: no submodule(s) {', '.join(missing)} in {type(model).__name__}")
    keep = lambda name: any(name == t or name.startswith(t + ".") for t in trainable)
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name))
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.BatchNorm2d) and not keep(name) and norm == "train":
            m.requires_grad_(True)
        elif isinstance(m, nn.BatchNorm2d) and not keep(name):
            fb = FrozenBatchNorm2d(m.num_features, m.eps).to(m.weight.device if m.affine else "cpu")
            fb.weight.copy_(m.weight.detach() if m.affine else torch.ones(m.num_features))
            fb.bias.copy_(m.bias.detach() if m.affine else torch.zeros(m.num_features))
            fb.running_mean.copy_(m.running_mean)
            fb.running_var.copy_(m.running_var)
            _set_module(model, name, fb)
    return model


def add_adapters(model: nn.Module, num_adapters: int = 1, *, gate: str = "softmax", noise_std: float = 0.0,
                 init_scale: float = 0.0, kernel_sizes: Sequence[int] = (3,), seed: int | None = None) -> list[str]:
    """Wrap every ``nn.Conv2d`` with a square kernel in ``kernel_sizes`` in an :class:`AdaptedConv2d`, in place (call
    :func:`freeze_backbone` first); returns the names of the adapted convolutions."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    inside = {f"{n}.conv" for n, m in model.named_modules() if isinstance(m, AdaptedConv2d)}
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n not in inside
             and m.kernel_size[0] == m.kernel_size[1] and m.kernel_size[0] in kernel_sizes]
    if not names:
        raise ValueError(f"add_adapters: no convolution with kernel size in {tuple(kernel_sizes)} to adapt")
    for n in names:
        _set_module(model, n, AdaptedConv2d(model.get_submodule(n), num_adapters, gate=gate, noise_std=noise_std,
                                            init_scale=init_scale, generator=g))
    return names


def add_style_exchange(model: nn.Module, after: Sequence[str], *, eta: float = 0.5, p: float = 0.5) -> None:
    """Insert a :class:`StyleExchange` after each named submodule (``Sequential(module, StyleExchange)``)."""
    names = dict(model.named_modules())
    for n in after:
        if n not in names:
            raise ValueError(f"add_style_exchange: no submodule {n!r}; choose among e.g. "
                             f"{', '.join(list(names)[1:8])}")
        _set_module(model, n, nn.Sequential(names[n], StyleExchange(eta, p)))


def trainable_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable scalar parameters by group: ``adapters``, ``gates``, ``norm``, ``head``, ``other`` and ``total``."""
    out = dict.fromkeys(("adapters", "gates", "norm", "head", "other"), 0)
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owner = modules[name.rpartition(".")[0]]
        group = ("adapters" if isinstance(owner, AdaptedConv2d) else
                 "gates" if name.endswith(("gate.weight", "gate.bias")) else
                 "norm" if isinstance(owner, nn.modules.batchnorm._NormBase) else
                 "head" if name.startswith("head.") else "other")
        out[group] += p.numel()
    out["total"] = sum(out.values())
    return out


def read_gates(model: nn.Module) -> tuple[list[str], torch.Tensor | None]:
    """The gates of the last forward pass: layer names and ``(N, L, K)`` (None if the model has no gates)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, AdaptedConv2d) and m.gate is not None]
    if not layers or any(m.last_gate is None for _, m in layers):
        return [n for n, _ in layers], None
    return [n for n, _ in layers], torch.stack([m.last_gate for _, m in layers], 1)


class _TorchvisionResNet(nn.Module):
    """A torchvision ResNet on images in [0, 1] (ImageNet-normalised first) with a new linear ``head`` instead of its
    classifier. Shapes: ``(N, 3, H, W)`` -> logits ``(N, num_classes)``."""

    def __init__(self, body: nn.Module, num_classes: int):
        super().__init__()
        dim = body.fc.in_features
        body.fc = nn.Identity()
        self.normalize, self.body, self.head = models.ImageNetNormalize(), body, nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.body(self.normalize(x)))


#: The torchvision ResNets :func:`build_backbone` builds.
RESNETS = tuple(a for a in models.TORCHVISION_WEIGHTS if a.startswith("resnet"))


def build_backbone(name: str, num_classes: int, *, widths: Sequence[int] | None = None,
                   weights: str | Path | None = None) -> nn.Module:
    """A backbone with a linear ``head``: ``"small_resnet"`` (:class:`vklib.models.SmallResNet`, random init) or one
    of :data:`RESNETS` with ImageNet ``weights`` read by :func:`vklib.models.torchvision_net` (a hub-cache name such
    as ``"IMAGENET1K_V1"``, a ``.pth`` file or its folder; missing: ``WeightsNotFoundError``; None: random start)."""
    if name == "small_resnet":
        if weights is not None:
            raise ValueError("small_resnet has no published weights; pretrain it (see the notebook), weights=None")
        return models.SmallResNet(3, num_classes, tuple(widths or (16, 32, 64)))
    if name in RESNETS:
        return _TorchvisionResNet(models.torchvision_net(name, weights), num_classes)
    raise ValueError(f"backbone must be 'small_resnet' or one of {', '.join(RESNETS)}, got {name!r}")


def make_variant(backbone: nn.Module, variant: str, num_classes: int, *, num_adapters: int = 2,
                 gate: str = "softmax", gate_noise: float = 0.0, style_after: Sequence[str] = (),
                 style_eta: float = 0.5, style_p: float = 0.5, init_scale: float = 0.0, norm: str = "train",
                 kernel_sizes: Sequence[int] = (3,), seed: int = 0) -> nn.Module:
    """A copy of a pretrained ``backbone`` (with a ``head``) set up as one of :data:`VARIANTS`, new head and adapters
    drawn from ``seed``. ``head_only``: a linear probe (BatchNorm frozen too). ``bn_head``: the head and BatchNorm
    (``norm="train"``), the control for the adapters. ``single_adapter``: ``bn_head`` plus one adapter beside each
    convolution with a kernel size in ``kernel_sizes``. ``dynamic_adapters``: ``num_adapters`` gated adapters
    instead. ``dynamic_adapters_style``: plus :class:`StyleExchange` after the modules in ``style_after``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if variant.startswith("dynamic") and num_adapters < 2:
        raise ValueError(f"dynamic adapters need num_adapters >= 2, got {num_adapters}")
    model = copy.deepcopy(backbone)
    if not isinstance(getattr(model, "head", None), nn.Linear):
        raise ValueError("make_variant: the backbone needs a linear `head` (see build_backbone)")
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(model.head.in_features, num_classes)
    with torch.no_grad():
        bound = 1 / math.sqrt(head.in_features)
        head.weight.copy_(torch.empty_like(head.weight).uniform_(-bound, bound, generator=g))
        head.bias.zero_()
    model.head = head.to(next(backbone.parameters()).device)
    freeze_backbone(model, ("head",), norm="frozen" if variant == "head_only" else norm)
    if variant not in ("head_only", "bn_head"):
        k = 1 if variant == "single_adapter" else num_adapters
        add_adapters(model, k, gate=gate, noise_std=gate_noise, init_scale=init_scale, kernel_sizes=kernel_sizes,
                     seed=seed + 1)
    if variant == "dynamic_adapters_style":
        if not style_after:
            raise ValueError("dynamic_adapters_style needs style_after (where to exchange feature statistics)")
        add_style_exchange(model, style_after, eta=style_eta, p=style_p)
    return model


# ============================================================================================ data
def _rank_within(groups: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random rank 0, 1, ... of every element within its group (vectorised; ``groups`` ``(N,)`` ints >= 0)."""
    n = len(groups)
    key = groups.double() + torch.rand(n, generator=generator, dtype=torch.float64)
    order = torch.argsort(key)
    sorted_groups = groups[order]
    first = torch.searchsorted(sorted_groups, sorted_groups)   # first position of each group in sorted order
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - first
    return rank


def split_cells(labels: torch.Tensor, domains: torch.Tensor, test_fraction: float, seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A train/test split stratified by (domain, class) cell: ``round(test_fraction * n_cell)`` test samples per
    cell, chosen at random from ``seed``. Returns sorted index tensors ``(train_idx, test_idx)``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if labels.shape != domains.shape or labels.ndim != 1:
        raise ValueError("split_cells: labels and domains must be (N,) tensors of one length")
    cell = domains.long() * (int(labels.max()) + 1) + labels.long()
    rank = _rank_within(cell, torch.Generator().manual_seed(seed))
    n_test = torch.round(torch.bincount(cell).double() * test_fraction).long()[cell]
    test = rank < n_test
    return torch.nonzero(~test).flatten(), torch.nonzero(test).flatten()


def subsample_domain(index: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor, domain: int,
                     keep_fraction: float, seed: int = 0) -> torch.Tensor:
    """Keep only ``keep_fraction`` of the samples of ``domain`` among ``index`` (per class, at least one each),
    all others unchanged; returns the sorted kept indices (the unbalanced variant)."""
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction}")
    if domain not in domains[index].tolist():
        raise ValueError(f"subsample_domain: domain {domain} has no sample among the given indices")
    index = torch.as_tensor(index).sort().values
    lab, dom = labels[index].long(), domains[index].long()
    in_dom = dom == domain
    rank = _rank_within(torch.where(in_dom, lab, lab.max() + 1), torch.Generator().manual_seed(seed))
    per_class = torch.bincount(lab[in_dom], minlength=int(lab.max()) + 1).double()
    keep_n = torch.clamp(torch.round(per_class * keep_fraction), min=1).long()
    keep = ~in_dom | (rank < keep_n[lab])
    return index[keep]


# ============================================================================================ training
def crop_and_jitter(x: torch.Tensor, scale: tuple[float, float] = (0.8, 1.0), jitter: float = 0.2,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The official PACS augmentation, batched, one draw per image from ``generator``: a random resized crop (area
    fraction in ``scale``, aspect ratio in [3/4, 4/3], bilinear) and a jitter of brightness, contrast and saturation
    (in that order; no hue) by factors in ``[1 - jitter, 1 + jitter]``, like torchvision's ``RandomResizedCrop`` and
    ``ColorJitter``. Shapes: ``(N, 3, H, W)`` in [0, 1] -> the same (``scale=(1, 1)``, ``jitter=0``: ``x``)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"crop_and_jitter: x must be (N, 3, H, W), got {tuple(x.shape)}")
    if not 0 < scale[0] <= scale[1] <= 1 or not 0 <= jitter < 1:
        raise ValueError(f"crop_and_jitter: scale must satisfy 0 < lo <= hi <= 1 and jitter lie in [0, 1), got "
                         f"scale={scale}, jitter={jitter}")
    n = x.shape[0]
    u = torch.rand(n, 8, generator=generator).to(x.device, x.dtype)         # one row of draws per image
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    # aspect ratio log-uniform in [3/4, 4/3], narrowed to the ratios whose crop fits the image (torchvision redraws)
    lo, hi = torch.log(area.clamp(min=3 / 4)), -torch.log(area.clamp(min=3 / 4))
    ratio = torch.exp(lo + (hi - lo) * u[:, 1])
    w, h = (area * ratio).sqrt(), (area / ratio).sqrt()                     # crop side / image side, <= 1
    cx, cy = (1 - w) * (2 * u[:, 2] - 1), (1 - h) * (2 * u[:, 3] - 1)       # crop centre, normalised coordinates
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)   # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    factor = (1 - jitter + 2 * jitter * u[:, 4:7]).view(n, 3, 1, 1, 1)     # brightness, contrast, saturation
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    out = (out * factor[:, 0]).clamp(0, 1)
    gray_mean = (out * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    out = ((out - gray_mean) * factor[:, 1] + gray_mean).clamp(0, 1)
    gray = (out * luma).sum(1, keepdim=True)
    return ((out - gray) * factor[:, 2] + gray).clamp(0, 1)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images, *, batch_size: int = 32,
                         device: str | torch.device | None = None) -> nn.Module:
    """Replace the running statistics of every ``nn.BatchNorm2d`` of ``model`` by their average over ``images``
    ``(N, C, H, W)`` (or a sequence of ``(C, H, W)``), in batches of ``batch_size``, in place; returns ``model``, in
    eval mode. No gradient, no parameter changes, everything but BatchNorm in eval mode (no gate noise, no style
    exchange): the state a model trained with BatchNorm in train mode starts from (its batches are normalised by
    their own statistics from the first step), used to score the gates at initialisation."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm statistics), got {batch_size}")
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    device = next(model.parameters()).device if device is None else device
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                                  # a cumulative average over the batches
        m.train()
    for idx in torch.arange(len(images)).split(batch_size):
        model(gather(images, idx).to(device))
    for m, mom in zip(norms, momenta):
        m.momentum = mom
        m.eval()
    return model


def logits_and_gates(model: nn.Module, images, *, batch_size: int = 256, device: str | torch.device = "auto"
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``(N, num_classes)`` in eval mode and the gates ``(N, L, K)`` (None without gates), on the CPU, of
    ``images`` ``(N, C, H, W)`` (or a sequence of ``(C, H, W)``)."""
    return infer(model, images, fn=lambda m, x: (m(x), read_gates(m)[1]), batch_size=batch_size, device=device)


# ============================================================================================ full datasets
OFFICE_HOME_DOMAINS = ["Art", "Clipart", "Product", "Real World"]
DOMAINNET_DOMAINS = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]


def _domain_folders(name: str, split: str, root: Path, domains: list[str], size: int | None) -> _data.ImageSet:
    """``<root>/<domain>/<class>/<image>`` as one lazy :class:`vklib.data.ImageSet` (a space in a domain name may be an
    underscore on disk): labels index the sorted union of classes, ``meta["domain"]`` ``(N,)`` the domain index."""
    folders = [(i, next((p for p in (root / d, root / d.replace(" ", "_")) if p.is_dir()), None))
               for i, d in enumerate(domains)]
    sets = [(i, _data.class_folders(name, split, f, size=size)) for i, f in folders if f is not None]
    if not sets:
        raise FileNotFoundError(f"{name}: no domain folders ({', '.join(domains)}) in {root}")
    classes = sorted({c for _, s in sets for c in s.classes})
    files = [f for _, s in sets for f in s.meta["files"]]
    labels = torch.cat([torch.tensor([classes.index(c) for c in s.classes])[s.labels] for _, s in sets])
    doms = torch.cat([torch.full((len(s),), i) for i, s in sets])
    return _data.ImageSet(name, split, _data.LazyImages([Path(f) for f in files], "RGB", size), labels, classes,
                          {"domain": doms, "files": files, "_domains": domains}, "full")


def _office_home_full(root: Path, split: str, download: bool, size):
    """Office-Home at ``size`` px (64 by default), decoded into one ``(N, 3, size, size)`` tensor (15,588 images)."""
    folder = next((root / n for n in ("OfficeHomeDataset_10072016", "office_home", "OfficeHome")
                   if (root / n).is_dir()), root / "OfficeHomeDataset_10072016")
    ds = _domain_folders("office_home", split, folder, OFFICE_HOME_DOMAINS, size or 64)
    ds.images = gather(ds.images, torch.arange(len(ds)))
    return ds


def _domainnet_full(root: Path, split: str, download: bool, size):
    """DomainNet at ``size`` px (64 by default), decoded lazily (about 600,000 images)."""
    return _domain_folders("domainnet", split, root / "domainnet", DOMAINNET_DOMAINS, size or 64)
