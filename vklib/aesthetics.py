"""Personalised image aesthetics with residual adapters (Rodriguez-Pardo and Bilen; arXiv 1907.03802): the kernels.

A *generic* aesthetics regressor (a CNN and an MLP head) is trained on the mean score of many raters, then
personalised to one user from ``k`` ratings by training only user-specific parameters, the rest frozen: **residual
adapters** (a parallel 1x1 convolution ``A_u`` beside each frozen 3x3 convolution ``W``, ``y = W * x + A_u * x``,
``A_u = 0`` at the start), the **normalisation** affines (optionally with re-estimated statistics) and the **head**.
Notebook 10 owns the loops (generic training, personalisation, fine-tuning, enhancement); this module holds:

* image properties and simulated raters: :func:`image_properties`, :func:`colourfulness`,
  :func:`laplacian_variance`, :func:`draw_users`, :func:`rate`;
* the protocol: :func:`spearman`, :func:`spearman_rows`, :func:`kshot_draws`, :func:`user_draws`;
* the model: :class:`AestheticsNet`, :func:`build_model`;
* the personal models, ``M`` at once: :func:`init_user_params` (adapters in the last stage or in every stage),
  :func:`init_bn_stats`, :func:`param_part`, :func:`user_parameter_count`, :func:`adapter_conv`,
  :func:`adapted_forward`, :func:`head_forward`, :func:`personal_loss`; :func:`adjust` (picture adjustments);
* data: the FLICKR-AES reader (registered in :mod:`vklib.data` as ``"flickr_aes"``); the notebook assembles its
  benchmark (real photos and simulated raters, or FLICKR-AES).

Batched personal models: user-specific tensors carry a leading dimension ``M`` (users x draws). The frozen 3x3
convolutions are shared and run as one convolution over the ``M * B`` images; only the 1x1 adapters (an ``einsum``),
the normalisation and the head (batched matrix products) differ per model.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import data as _data
from .models import ImageNetNormalize, torchvision_net

__all__ = [
    "PARTS", "POPULATION", "PROPERTIES", "STAGES", "AestheticsNet", "Users", "adapted_forward", "adapter_conv", "adjust",
    "build_model", "colourfulness", "draw_users", "head_forward", "image_properties", "init_bn_stats",
    "init_user_params", "kshot_draws", "laplacian_variance", "param_part", "personal_loss", "rate", "spearman",
    "spearman_rows", "user_draws", "user_parameter_count",
]

#: The user-specific parts: residual adapters, normalisation affines, MLP head.
PARTS = ("adapters", "norm", "head")

#: The measurable image properties the simulated raters look at (columns of :func:`image_properties`).
PROPERTIES = ("brightness", "contrast", "colourfulness", "sharpness", "saturation", "warmth")

#: The population's taste (simulated raters). Properties are standardised (z-scores over the generic photos). A
#: rater's latent score is ``w . z - curvature / 2 * sum_{j in peaked} (z_j - ideal_j)^2 + c[class]``: linear in
#: contrast, colourfulness, sharpness and warmth, peaked in brightness and saturation (each rater has an ideal
#: level), plus an optional liking ``c`` for the photo's content class (zero unless ``content_spread > 0``).
POPULATION = {
    "weights": (0.0, 0.5, 0.5, 0.6, 0.0, 0.2),
    "peaked": ("brightness", "saturation"),
    "ideal": (0.3, 0.2),
    "curvature": 0.5,
}


# ============================================================================================ image properties
def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{name} must be an RGB batch (N, 3, H, W), got {shape}")


def _luminance(images: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma ``(N, H, W)`` of ``(N, 3, H, W)`` RGB in [0, 1]."""
    return 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler and Suesstrunk's colourfulness (2003) of ``(N, 3, H, W)`` RGB in [0, 1] -> ``(N,)``.

    With ``rg = R - G`` and ``yb = (R + G) / 2 - B`` over the pixels of an image:
    ``M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2)`` (population standard deviations;
    pixel values on a 0..1 scale, so the paper's 0..255 values are 255 times larger).
    """
    _check_images(images)
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
    std = (rg.var(1, unbiased=False) + yb.var(1, unbiased=False)).sqrt()
    mean = (rg.mean(1) ** 2 + yb.mean(1) ** 2).sqrt()
    return std + 0.3 * mean


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """Sharpness: the variance of the 4-neighbour Laplacian of the luma (valid pixels only) -> ``(N,)``.

    ``images``: ``(N, 3, H, W)`` RGB in [0, 1] with ``H, W >= 3``.
    """
    _check_images(images)
    if min(images.shape[-2:]) < 3:
        raise ValueError(f"laplacian_variance needs images of at least 3x3 pixels, got {tuple(images.shape[-2:])}")
    lap = F.conv2d(_luminance(images)[:, None], _LAPLACIAN.to(images)[None, None])
    return lap.flatten(1).var(1, unbiased=False)


def image_properties(images: torch.Tensor) -> torch.Tensor:
    """The :data:`PROPERTIES` of every image: ``(N, 3, H, W)`` RGB in [0, 1] -> ``(N, 6)``, columns

    * brightness: mean luma; contrast: standard deviation of the luma (RMS contrast);
    * colourfulness: :func:`colourfulness`; sharpness: ``log(1e-4 + laplacian_variance)`` (log: the variance spans
      orders of magnitude);
    * saturation: mean HSV saturation ``(max - min) / max`` (0 where ``max`` is 0);
    * warmth: mean of ``R - B``.

    All computed in one batched pass (no loop over images); differentiable almost everywhere.
    """
    _check_images(images)
    y = _luminance(images).flatten(1)
    mx, mn = images.amax(1), images.amin(1)
    sat = torch.where(mx > 0, (mx - mn) / mx.clamp_min(1e-8), torch.zeros_like(mx))
    return torch.stack([
        y.mean(1), y.std(1, unbiased=False), colourfulness(images),
        torch.log(1e-4 + laplacian_variance(images)), sat.flatten(1).mean(1),
        (images[:, 0] - images[:, 2]).flatten(1).mean(1),
    ], 1)


# ============================================================================================ simulated raters
@dataclass
class Users:
    """Simulated raters: linear weights ``(U, P)`` on standardised properties, ideal levels ``(U, Q)`` of the peaked
    properties (columns ``peaked``), the curvature of the peak and a liking ``content`` ``(U, K)`` for each of ``K``
    content classes (``K = 0``: no content term)."""

    weights: torch.Tensor
    ideal: torch.Tensor
    peaked: tuple[int, ...]
    curvature: float
    content: torch.Tensor

    def __len__(self) -> int:
        return len(self.weights)

    def __getitem__(self, i) -> "Users":
        i = [i] if isinstance(i, int) else list(i)
        return Users(self.weights[i], self.ideal[i], self.peaked, self.curvature, self.content[i])

    def latent(self, z: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Noise-free latent scores ``(U, N)`` of standardised properties ``z`` ``(N, P)`` (and content classes
        ``(N,)``, needed when the raters have a content term)."""
        quad = ((z[:, list(self.peaked)][None] - self.ideal[:, None]) ** 2).sum(-1)        # (U, N)
        s = self.weights @ z.T - 0.5 * self.curvature * quad
        if self.content.shape[1]:
            if classes is None:
                raise ValueError("latent: these raters like content classes; pass classes (N,)")
            s = s + self.content[:, classes]
        return s


def draw_users(n: int, *, spread: float, ideal_spread: float, content_spread: float = 0.0, n_classes: int = 0,
               population: dict | None = None, generator: torch.Generator | None = None) -> Users:
    """``n`` simulated raters around the population's taste (:data:`POPULATION` by default):
    ``w_u = weights + spread * N(0, I)``, ``ideal_u = ideal + ideal_spread * N(0, I)`` and, with ``n_classes > 0``,
    a content liking ``c_u = content_spread * N(0, I_K)`` (zero mean: the crowd has no favourite class)."""
    pop = POPULATION if population is None else population
    if n < 1:
        raise ValueError(f"draw_users: n must be >= 1, got {n}")
    if min(spread, ideal_spread, content_spread) < 0 or n_classes < 0:
        raise ValueError(f"spread, ideal_spread, content_spread and n_classes must be >= 0, got {spread}, "
                         f"{ideal_spread}, {content_spread}, {n_classes}")
    w = torch.as_tensor(pop["weights"], dtype=torch.float32)
    ideal = torch.as_tensor(pop["ideal"], dtype=torch.float32)
    peaked = tuple(PROPERTIES.index(p) for p in pop["peaked"])
    if len(w) != len(PROPERTIES) or len(ideal) != len(peaked):
        raise ValueError(f"population: need {len(PROPERTIES)} weights and one ideal per peaked property")
    ws = w + spread * torch.randn(n, len(w), generator=generator)
    ids = ideal + ideal_spread * torch.randn(n, len(ideal), generator=generator)
    content = content_spread * torch.randn(n, n_classes, generator=generator)
    return Users(ws, ids, peaked, float(pop["curvature"]), content)


def rate(users: Users, z: torch.Tensor, *, noise: float, classes: torch.Tensor | None = None, stars: bool = True,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Ratings ``(U, N)``: ``3 + latent + N(0, noise^2)``, rounded and clipped to 1..5 stars if ``stars``."""
    if z.ndim != 2 or z.shape[1] != users.weights.shape[1]:
        raise ValueError(f"rate: z must be (N, {users.weights.shape[1]}), got {tuple(z.shape)}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    s = 3.0 + users.latent(z, classes) + noise * torch.randn(len(users), len(z), generator=generator)
    return s.round().clamp(1, 5) if stars else s


# ============================================================================================ metrics, protocol
def spearman(pred, target) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``, ties get average ranks) of two 1-D sequences.

    Returns 0.0 when either side is constant (the correlation is undefined there; a constant prediction ranks
    nothing).
    """
    from scipy.stats import spearmanr
    a = np.asarray(torch.as_tensor(pred).detach().cpu(), dtype=np.float64).ravel()
    b = np.asarray(torch.as_tensor(target).detach().cpu(), dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"spearman: need two sequences of equal length >= 2, got {a.size} and {b.size}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def spearman_rows(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`spearman` of every row: ``pred``, ``target`` ``(M, T)``, ``valid`` ``(M, T)`` bool (entries to use;
    all if ``None``) -> ``(M,)``."""
    valid = torch.ones_like(pred, dtype=torch.bool) if valid is None else valid
    return torch.tensor([spearman(p[v], t[v]) for p, t, v in zip(pred.cpu(), target.cpu(), valid.cpu())])


def kshot_draws(n_items: int, k: int, *, draws: int, test_size: int = 0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``draws`` random splits of one user's ``n_items`` ratings: ``k`` training indices and a disjoint test set.

    ``test_size > 0`` fixes the test set's size (the same for every draw); ``0`` means "every rating not drawn
    for training". Returns ``train (draws, k)`` and ``test (draws, T)`` index tensors.
    """
    if k < 1 or draws < 1:
        raise ValueError(f"kshot_draws: k and draws must be >= 1, got k={k}, draws={draws}")
    t = n_items - k if test_size == 0 else test_size
    if t < 2 or k + t > n_items:
        raise ValueError(f"kshot_draws: {n_items} ratings cannot give k={k} training and {t} (>= 2) test ratings")
    perms = torch.stack([torch.randperm(n_items, generator=generator) for _ in range(draws)])
    return perms[:, :k], perms[:, n_items - t:]


def user_draws(ratings: torch.Tensor, k: int, *, draws: int, test_size: int = 0,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-shot draws for every user of a ``(U, R)`` rating table (``NaN``: not rated), as image indices.

    Each user gets ``draws`` splits of the images they rated (:func:`kshot_draws`); test sets shorter than the
    longest are padded with ``-1``. Returns ``train (U * draws, k)``, ``test (U * draws, T)`` and ``rows
    (U * draws,)``, the user of each model (user by user). Checks that every model's training and test images are
    disjoint and rated by its user.
    """
    if ratings.ndim != 2:
        raise ValueError(f"user_draws: ratings must be (U, R), got {tuple(ratings.shape)}")
    rated = [torch.nonzero(~torch.isnan(r)).flatten() for r in ratings]
    trains, tests = [], []
    for r in rated:
        tr, te = kshot_draws(len(r), k, draws=draws, test_size=test_size, generator=generator)
        trains.append(r[tr])
        tests += list(r[te])
    width = max(len(t) for t in tests)
    train, test = torch.cat(trains), torch.stack([F.pad(t, (0, width - len(t)), value=-1) for t in tests])
    rows = torch.arange(len(ratings)).repeat_interleave(draws)
    overlap = (train[:, :, None] == test[:, None, :]).any(2).any(1)
    unrated = torch.isnan(ratings[rows[:, None], train]).any(1) | \
        (torch.isnan(ratings[rows[:, None], test.clamp_min(0)]) & (test >= 0)).any(1)
    if overlap.any() or unrated.any():
        raise RuntimeError(f"user_draws: {int(overlap.sum())} models share training and test images, "
                           f"{int(unrated.sum())} use unrated images")
    return train, test, rows


# ============================================================================================ the model
def _basic_block(c_in: int, c_out: int, stride: int) -> nn.Module:
    from torchvision.models.resnet import BasicBlock
    down = None
    if stride != 1 or c_in != c_out:
        down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
    return BasicBlock(c_in, c_out, stride, down)


class AestheticsNet(nn.Module):
    """A generic aesthetics regressor: a frozen-able ``trunk``, an adaptable ``tail`` of ResNet BasicBlocks (where
    the residual adapters go), global average pooling and an MLP ``head`` (``feat -> hidden -> 1``).

    Shapes: ``(N, 3, H, W)`` -> scores ``(N,)``; :meth:`features` -> the trunk's output ``(N, C, H', W')``.
    """

    def __init__(self, trunk: nn.Module, tail: Sequence[nn.Module], feat_dim: int, hidden: int = 32):
        super().__init__()
        self.trunk = trunk
        self.tail = nn.ModuleList(tail)
        self.head = nn.Sequential(nn.Linear(feat_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def tail_pooled(self, f: torch.Tensor) -> torch.Tensor:
        """Trunk features ``(N, C, H', W')`` -> the tail's globally pooled output ``(N, feat)``."""
        for block in self.tail:
            f = block(f)
        return f.mean(dim=(2, 3))

    def forward_tail(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(self.tail_pooled(f))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tail(self.features(x))


def build_model(backbone: str = "small", *, widths: Sequence[int] | None = (16, 32, 48, 64), hidden: int = 32,
                weights: str | Path | None = None) -> AestheticsNet:
    """The generic regressor.

    * ``"small"``: stem ``conv3x3(3, w0, stride 2)-BN-ReLU``, ``conv3x3(w0, w1, stride 2)-BN-ReLU`` (the trunk),
      then two BasicBlocks ``w1 -> w2`` and ``w2 -> w3``, both stride 2 (the tail); 64 px -> 4x4 features. Trained
      from scratch: ``weights`` must be ``None``.
    * ``"resnet18"``: torchvision's ResNet-18; ``conv1 .. layer3`` the trunk, ``layer4`` the tail. ``weights`` as
      :func:`vklib.models.torchvision_net` reads them: a torchvision weights name (e.g. ``"IMAGENET1K_V1"``, from the
      torch hub cache) or the path of a saved ``state_dict``; a missing file raises
      :class:`~vklib.models.WeightsNotFoundError` (nothing is downloaded); ``None`` starts from random weights.

    Both take ``(N, 3, H, W)`` images in [0, 1] (ImageNet normalisation first in the trunk).
    """
    if backbone == "small":
        if weights is not None:
            raise ValueError(f"weights: the small backbone has no pretrained weights, pass weights=None "
                             f"(got {weights!r})")
        if widths is None or len(widths) != 4:
            raise ValueError(f"the small backbone needs 4 widths, got {widths!r}")
        w0, w1, w2, w3 = widths
        trunk = nn.Sequential(ImageNetNormalize(), nn.Conv2d(3, w0, 3, 2, 1, bias=False), nn.BatchNorm2d(w0),
                              nn.ReLU(inplace=True), nn.Conv2d(w0, w1, 3, 2, 1, bias=False), nn.BatchNorm2d(w1),
                              nn.ReLU(inplace=True))
        return AestheticsNet(trunk, [_basic_block(w1, w2, 2), _basic_block(w2, w3, 2)], w3, hidden)
    if backbone == "resnet18":
        net = torchvision_net("resnet18", weights)
        trunk = nn.Sequential(ImageNetNormalize(), net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                              net.layer3)
        return AestheticsNet(trunk, list(net.layer4), 512, hidden)
    raise ValueError(f"backbone must be 'small' or 'resnet18', got {backbone!r}")


# ============================================================================================ personal models
#: Where the adapters go: the last stage only (the network's ``tail``) or every stage (trunk and tail, the authors'
#: setting; ResNet-18's 7x7 stem convolution gets none, as in their code).
STAGES = ("last", "all")


def _roots(model: "AestheticsNet", stages: str) -> list[tuple[str, nn.Module]]:
    if stages not in STAGES:
        raise ValueError(f"stages must be one of {', '.join(STAGES)}, got {stages!r}")
    return ([("trunk", model.trunk)] if stages == "all" else []) + [("tail", model.tail)]


def init_user_params(model: "AestheticsNet", n: int, *, stages: str = "last") -> dict[str, torch.Tensor]:
    """The user-specific parameters of ``n`` models, each starting at the generic model (fresh leaf tensors):

    * ``<conv path>.adapter`` ``(n, C_out, C_in)``: zeros, one per 3x3 convolution of the adapted stages;
    * ``<bn path>.weight`` / ``.bias`` ``(n, C)``: copies of every normalisation affine there;
    * ``head.0.weight`` ``(n, hidden, feat)``, ``head.0.bias``, ``head.2.weight`` ``(n, 1, hidden)``,
      ``head.2.bias``: copies of the head.

    ``stages``: ``"last"`` (the ``tail``) or ``"all"`` (``trunk`` and ``tail``), see :data:`STAGES`.
    """
    if n < 1:
        raise ValueError(f"init_user_params: n must be >= 1, got {n}")
    rep = lambda t: t.detach().clone()[None].repeat(n, *([1] * t.ndim))  # noqa: E731
    out = {}
    for root, module in _roots(model, stages):
        for path, mod in module.named_modules(prefix=root):
            if isinstance(mod, nn.Conv2d) and mod.kernel_size == (3, 3):
                out[f"{path}.adapter"] = torch.zeros(n, mod.out_channels, mod.in_channels, device=mod.weight.device)
            elif isinstance(mod, nn.BatchNorm2d):
                out[f"{path}.weight"], out[f"{path}.bias"] = rep(mod.weight), rep(mod.bias)
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        out[f"head.{name}"] = rep(model.head.get_parameter(name))
    return out


def init_bn_stats(model: "AestheticsNet", params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-model copies ``(M, C)`` of the running statistics (``<bn path>.running_mean`` / ``.running_var``) of
    every normalisation layer that has user-specific affines in ``params``, to be re-estimated per user."""
    out = {}
    for name, t in params.items():
        if param_part(name) == "norm" and name.endswith(".weight"):
            bn = model.get_submodule(name[:-len(".weight")])
            for s in ("running_mean", "running_var"):
                out[f"{name[:-len('.weight')]}.{s}"] = getattr(bn, s).detach().clone()[None].repeat(len(t), 1)
    return out


def param_part(name: str) -> str:
    """The part of :data:`PARTS` a user-specific tensor (a key of :func:`init_user_params`) belongs to."""
    if name.startswith("head."):
        return "head"
    return "adapters" if name.endswith(".adapter") else "norm"


def user_parameter_count(model: "AestheticsNet", *, stages: str = "last", parts: Sequence[str] = PARTS) -> int:
    """How many scalars one user owns (the ``parts`` of :func:`init_user_params` with these ``stages``)."""
    return sum(t[0].numel() for n, t in init_user_params(model, 1, stages=stages).items() if param_part(n) in parts)


def adapter_conv(x: torch.Tensor, weight: torch.Tensor, adapter: torch.Tensor, *, stride: int = 1,
                 padding: int = 1) -> torch.Tensor:
    """A frozen convolution plus one 1x1 residual adapter per model: ``y_m = W * x_m + A_m * x_m``.

    Args:
        x: ``(M, B, C_in, H, W)``, the inputs of ``M`` models (``B`` images each).
        weight: ``(C_out, C_in, kh, kw)``, the shared frozen convolution (no bias).
        adapter: ``(M, C_out, C_in)``, each model's 1x1 adapter.
        stride, padding: of the convolution; the adapter uses the same stride (it samples the kernel centres).

    Returns:
        ``(M, B, C_out, H', W')``. The shared convolution runs once over all ``M * B`` images.
    """
    if x.ndim != 5 or adapter.ndim != 3 or adapter.shape[0] != x.shape[0] or adapter.shape[2] != x.shape[2] \
            or tuple(weight.shape[:2]) != tuple(adapter.shape[1:]):
        raise ValueError(f"adapter_conv: x (M, B, C_in, H, W), weight (C_out, C_in, k, k), adapter (M, C_out, C_in) "
                         f"expected, got {tuple(x.shape)}, {tuple(weight.shape)}, {tuple(adapter.shape)}")
    m, b = x.shape[:2]
    y = F.conv2d(x.flatten(0, 1), weight, stride=stride, padding=padding)
    y = y.view(m, b, *y.shape[1:])
    xs = x[..., ::stride, ::stride] if stride > 1 else x
    return y + torch.einsum("moc,mbchw->mbohw", adapter, xs[..., :y.shape[-2], :y.shape[-1]])


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, path: str, params: dict, stats: dict | None,
        train_bn: bool) -> torch.Tensor:
    """Batch norm of ``x`` ``(M, B, C, H, W)`` with per-model affines ``(M, C)``. Statistics: ``train_bn`` -> each
    model's batch (over ``B, H, W``; its running copy in ``stats`` is updated with the layer's momentum, as
    ``nn.BatchNorm2d`` does in training mode); else the per-model ``stats`` if given, else the frozen generic ones."""
    if train_bn:
        mean, var = x.mean(dim=(1, 3, 4)), x.var(dim=(1, 3, 4), unbiased=False)
        if stats is not None:
            n = x.numel() / (x.shape[0] * x.shape[2])
            with torch.no_grad():
                stats[f"{path}.running_mean"].lerp_(mean.detach(), bn.momentum)
                stats[f"{path}.running_var"].lerp_(var.detach() * n / max(n - 1, 1), bn.momentum)
    elif stats is not None:
        mean, var = stats[f"{path}.running_mean"], stats[f"{path}.running_var"]
    else:
        mean, var = bn.running_mean[None], bn.running_var[None]
    xh = (x - mean[:, None, :, None, None]) * torch.rsqrt(var + bn.eps)[:, None, :, None, None]
    return xh * params[f"{path}.weight"][:, None, :, None, None] + params[f"{path}.bias"][:, None, :, None, None]


def _run(mod: nn.Module, path: str, x: torch.Tensor, params: dict, stats: dict | None, train_bn: bool):
    """``x`` ``(M, B, ...)`` through ``mod`` (at ``path`` in the model), user-specific where ``params`` say so."""
    from torchvision.models.resnet import BasicBlock
    run = lambda m, p, t: _run(m, f"{path}.{p}", t, params, stats, train_bn)  # noqa: E731
    if isinstance(mod, BasicBlock):
        out = run(mod.bn2, "bn2", run(mod.conv2, "conv2", F.relu(run(mod.bn1, "bn1", run(mod.conv1, "conv1", x)))))
        return F.relu(out + (x if mod.downsample is None else run(mod.downsample, "downsample", x)))
    if isinstance(mod, (nn.Sequential, nn.ModuleList)):
        for name, child in mod.named_children():
            x = run(child, name, x)
        return x
    if f"{path}.adapter" in params:
        return adapter_conv(x, mod.weight, params[f"{path}.adapter"], stride=mod.stride[0], padding=mod.padding[0])
    if f"{path}.weight" in params:
        return _bn(x, mod, path, params, stats, train_bn)
    if isinstance(mod, nn.ReLU):
        return F.relu(x)
    y = mod(x.flatten(0, 1))                                                   # frozen and shared
    return y.view(*x.shape[:2], *y.shape[1:])


def head_forward(params: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    """The per-model MLP heads on pooled features ``f`` ``(M, B, feat)`` -> scores ``(M, B)``."""
    h = F.relu(torch.baddbmm(params["head.0.bias"][:, None], f, params["head.0.weight"].transpose(1, 2)))
    return torch.baddbmm(params["head.2.bias"][:, None], h, params["head.2.weight"].transpose(1, 2))[..., 0]


def adapted_forward(model: "AestheticsNet", params: dict[str, torch.Tensor], x: torch.Tensor, *,
                    stats: dict[str, torch.Tensor] | None = None, train_bn: bool = False) -> torch.Tensor:
    """Scores ``(M, B)`` of ``M`` personal models with ``params`` from :func:`init_user_params`.

    ``x``: with adapters in every stage (``trunk.*`` keys), the images ``(M, B, 3, H, W)``; else each model's trunk
    features ``(M, B, C, H, W)``. ``stats`` / ``train_bn``: the normalisation statistics (:func:`init_bn_stats`;
    ``train_bn=True`` uses each model's batch statistics and updates ``stats``). The frozen parts are shared; with the
    generic values of ``params`` and no ``stats`` this equals ``model`` in eval mode.
    """
    if x.ndim != 5:
        raise ValueError(f"adapted_forward: x must be (M, B, C, H, W), got {tuple(x.shape)}")
    if any(k.startswith("trunk.") for k in params):
        x = _run(model.trunk, "trunk", x, params, stats, train_bn)
    x = _run(model.tail, "tail", x, params, stats, train_bn)
    return head_forward(params, x.mean(dim=(3, 4)))


def personal_loss(pred: torch.Tensor, ratings: torch.Tensor, params: dict[str, torch.Tensor],
                  init: dict[str, torch.Tensor], offset_decay: float) -> torch.Tensor:
    """``sum_m [ mean_b (pred_mb - r_mb)^2 + offset_decay * sum_theta ||theta_m - theta_m^generic||^2 ]`` with
    ``pred``, ``ratings`` ``(M, B)``; the penalty runs over the tensors of ``params`` (summed over models, so each
    model's gradient is its own)."""
    if pred.shape != ratings.shape or pred.ndim != 2:
        raise ValueError(f"personal_loss: pred and ratings must both be (M, B), got {tuple(pred.shape)} and "
                         f"{tuple(ratings.shape)}")
    if offset_decay < 0:
        raise ValueError(f"offset_decay must be >= 0, got {offset_decay}")
    loss = ((pred - ratings) ** 2).mean(1).sum()
    if offset_decay > 0:
        loss = loss + offset_decay * sum(((params[k] - init[k]) ** 2).sum() for k in params)
    return loss


# ============================================================================================ enhancement
def adjust(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
           saturation: torch.Tensor) -> torch.Tensor:
    """Differentiable picture adjustments (kornia.enhance), in this order: saturation (factor), contrast (factor),
    brightness (additive offset), clipped to [0, 1].

    ``images`` ``(N, 3, H, W)``; each adjustment a tensor ``(N,)`` (or a scalar); factors of 1 and an offset of 0
    leave the image unchanged.
    """
    import kornia.enhance as KE
    _check_images(images)
    n = len(images)
    as_n = lambda v: torch.as_tensor(v, dtype=images.dtype, device=images.device).expand(n)
    x = KE.adjust_saturation(images, as_n(saturation))
    x = KE.adjust_contrast(x, as_n(contrast), clip_output=False)
    x = KE.adjust_brightness(x, as_n(brightness), clip_output=False)
    return x.clamp(0, 1)


# ---------------------------------------------------------------------------------------------- FLICKR-AES loader
def _flickr_missing(what: str) -> _data.DataNotFoundError:
    """The error for a missing part of the FLICKR-AES release, followed by where the release goes."""
    return _data.DataNotFoundError(f"flickr_aes: {what}. {_data.info('flickr_aes').full_hint}")


def _read_flickr_ratings(folder: Path) -> dict[str, list[tuple[str, float]]]:
    per_worker: dict[str, list[tuple[str, float]]] = {}
    single = folder / "FLICKR-AES_image_labeled_by_each_worker.csv"
    if single.is_file():
        with open(single, newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader)]
            try:
                wi, ii, si = header.index("worker"), header.index("imagePair"), header.index("score")
            except ValueError as e:
                raise _data.DataError(f"flickr_aes: {single} must have columns worker, imagePair, score; found "
                                      f"{header}") from e
            for row in reader:
                if row:
                    per_worker.setdefault(row[wi].strip(), []).append((row[ii].strip(), float(row[si])))
        return per_worker
    files = sorted((folder / "workers").glob("*.csv"))
    if not files:
        raise _flickr_missing(f"no ratings in {folder} (neither FLICKR-AES_image_labeled_by_each_worker.csv nor "
                              f"workers/*.csv)")
    for path in files:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [(r["image"].strip(), float(r["score"])) for r in reader]
        per_worker[path.stem] = rows
    return per_worker


def _flickr_full(root: Path, split: str, download: bool, size):
    folder = root / "flickr_aes"
    if not folder.is_dir():
        raise _flickr_missing(f"folder {folder} not found")
    per_worker = _read_flickr_ratings(folder)
    tw = folder / "test_workers.txt"
    if not tw.is_file():
        raise _flickr_missing(f"{tw} (the test workers' ids) not found")
    test_workers = [w.strip() for w in tw.read_text().split() if w.strip()]
    missing = [w for w in test_workers if w not in per_worker]
    if missing:
        raise _data.DataError(f"flickr_aes: test workers without ratings: {', '.join(missing[:5])}")
    chosen = test_workers if split == "test" else [w for w in per_worker if w not in set(test_workers)]
    # the generic model never sees a test photo: training keeps only photos that no test worker rated
    held_out = {name for w in test_workers for name, _ in per_worker[w]} if split == "train" else set()
    names: dict[str, int] = {}
    scores: list[list[float]] = []
    ratings = {}
    for w in chosen:
        idx, sc = [], []
        for name, s in per_worker[w]:
            if name in held_out:
                continue
            if name not in names:
                names[name] = len(names)
                scores.append([])
            scores[names[name]].append(s)
            idx.append(names[name])
            sc.append(s)
        ratings[w] = (torch.tensor(idx), torch.tensor(sc))
    files = list(names)
    paths = [folder / "40K" / n for n in files]
    absent = [p for p in paths[:50] if not p.is_file()]
    if absent:
        raise _flickr_missing(f"image {absent[0]} not found")
    mean = torch.tensor([sum(s) / len(s) for s in scores])
    return _data.ImageSet("flickr_aes", split, _data.LazyImages(paths, "RGB", size), None, None,
                          {"files": files, "mean_score": mean, "_ratings": ratings, "_workers": chosen}, "full")
