"""Personalised image aesthetics with residual adapters (Rodriguez-Pardo and Bilen; arXiv 1907.03802).

A *generic* aesthetics regressor (a CNN backbone and an MLP head) is trained on the mean score of many raters. It is
then personalised to one user from ``k`` of that user's ratings by training only a small set of user-specific
parameters, everything else frozen:

* **residual adapters** (Rebuffi et al. 2017/2018): a parallel 1x1 convolution ``A_u`` beside each frozen 3x3
  convolution ``W`` of the last stage, ``y = W * x + A_u * x``, with ``A_u = 0`` at the start (the generic model);
* the **normalisation layers** of that stage (their scale and shift; running statistics stay frozen);
* the **MLP head**.

The user's offset is kept small by an L2 penalty towards the generic model (``offset_decay``).

Kernels (tensors in, tensors out): :func:`image_properties` (brightness, contrast, colourfulness, sharpness,
saturation, warmth), :func:`colourfulness`, :func:`laplacian_variance`, :func:`draw_users`, :func:`rate`,
:func:`adapter_conv`, :func:`adapted_forward`, :func:`personal_loss`, :func:`spearman`, :func:`mean_spearman`,
:func:`kshot_draws`, :func:`adjust`.
Model and training: :class:`AestheticsNet`, :func:`build_model`, :func:`init_user_params`,
:func:`user_parameter_count`, :func:`fit_generic`, :func:`personalise`, :func:`finetune_all`, :func:`enhance`.
Scores and trunk features of many images come from :func:`vklib.train.infer` (``infer(model, images)`` gives the
scores ``(N,)``, ``infer(model, images, fn=lambda m, x: m.features(x))`` the trunk features).
Data: :func:`square_crops`, :func:`simulated_benchmark` (the quick profile: real photos, simulated raters) and
:func:`flickr_benchmark` (the paper profile); the full FLICKR-AES loader is registered in :mod:`vklib.data` as
``"flickr_aes"``.

Batched personalisation: the user-specific parameters of ``M`` models (users x k-shot draws) carry a leading
dimension ``M`` and are trained together. The frozen 3x3 convolutions are shared, so they run as one ordinary
convolution over the ``M * B`` images; only the 1x1 adapters (an ``einsum``), the normalisation affines and the head
(batched matrix products) differ per model. The frozen trunk's output is computed once and cached.

The paper's numbers would be rows of ``vklib/paper_numbers.csv``; notebook 10 says why it has none yet.
"""
from __future__ import annotations

import copy
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import data as _data
from .models import ImageNetNormalize, torchvision_net
from .train import fit_epochs, gather, random_flip
from .utils import resolve_device

__all__ = [
    "PROFILES", "PROPERTIES", "POPULATION", "AestheticsNet", "Benchmark", "adapted_forward", "adapter_conv",
    "PARTS", "adjust", "build_model", "colourfulness", "draw_users", "enhance", "fit_generic", "finetune_all",
    "flickr_benchmark", "image_properties", "init_user_params", "kshot_draws", "laplacian_variance", "mean_spearman",
    "param_part", "personal_loss", "personalise", "rate", "simulated_benchmark", "spearman", "square_crops",
    "user_draws", "user_parameter_count",
]

#: The user-specific parts: residual adapters, normalisation affines, MLP head.
PARTS = ("adapters", "norm", "head")

#: The measurable image properties the simulated raters look at (columns of :func:`image_properties`).
PROPERTIES = ("brightness", "contrast", "colourfulness", "sharpness", "saturation", "warmth")

#: The population's taste (simulated raters, quick profile). Properties are standardised (z-scores over the generic
#: training photos). A rater's latent score is ``w . z - curvature / 2 * sum_{j in peaked} (z_j - ideal_j)^2``: linear
#: in contrast, colourfulness, sharpness and warmth, peaked in brightness and saturation (too dark and too bright are
#: both disliked; each rater has an ideal level). Rater ``u`` draws ``w_u = weights + spread * N(0, I)`` and
#: ``ideal_u = ideal + ideal_spread * N(0, I)``; each rating adds ``N(0, noise^2)`` and is rounded to 1..5 stars.
POPULATION = {
    "weights": (0.0, 0.5, 0.5, 0.6, 0.0, 0.2),
    "peaked": ("brightness", "saturation"),
    "ideal": (0.3, 0.2),
    "curvature": 0.5,
}

PROFILES = {
    # 2 CPU cores, a few minutes: real photos (COCO for the generic model, PACS photos rated by the test users),
    # simulated raters, a small CNN trained here from scratch.
    "quick": {
        "benchmark": "simulated", "image_size": 64, "crops_per_image": 11, "crop_scale": (0.45, 0.9),
        "train_raters": 200, "ratings_per_image": 5, "test_users": 10, "val_users": 8, "spread": 0.5,
        "ideal_spread": 0.8, "noise": 0.5, "backbone": "small", "widths": (16, 32, 48, 64), "weights": None,
        "head_hidden": 32, "generic_epochs": 12, "generic_lr": 2e-3, "generic_batch": 64,
        "ks": (10, 100), "draws": 2, "test_size": 100, "adapt_steps": 150, "adapt_lr": 3e-3, "adapt_batch": 20,
        "offset_decay": 1e-2, "eval_every": 25, "finetune_lr": 1e-3, "finetune_steps": 60, "finetune_chunk": 0,
        "enhance_steps": 60, "enhance_lr": 0.1,
    },
    # A GPU and FLICKR-AES (40k Flickr photos, 210 workers, 37 test workers), ResNet-18 (ImageNet weights from a
    # local file, see models.torchvision_net), adapters in the last stage only (the authors' public notebooks put
    # one beside every 3x3 convolution of all four stages), k = 10 and k = 100 with 10 draws per worker (their
    # k = 100 adapter notebook uses 3).
    "paper": {
        "benchmark": "flickr_aes", "image_size": 224, "crops_per_image": 0, "crop_scale": (1.0, 1.0),
        "train_raters": 0, "ratings_per_image": 0, "test_users": 37, "val_users": 0, "spread": 0.0,
        "ideal_spread": 0.0, "noise": 0.0, "backbone": "resnet18", "widths": None, "weights": "IMAGENET1K_V1",
        "head_hidden": 256, "generic_epochs": 10, "generic_lr": 1e-4, "generic_batch": 64,
        "ks": (10, 100), "draws": 10, "test_size": 0, "adapt_steps": 300, "adapt_lr": 1e-3, "adapt_batch": 10,
        "offset_decay": 1e-2, "eval_every": 30, "finetune_lr": 1e-4, "finetune_steps": 300, "finetune_chunk": 8,
        "enhance_steps": 100, "enhance_lr": 0.05,
    },
}
# The paper path (FLICKR-AES reader, ResNet-18, generic model, adapters at k = 10 and k = 100, fine-tune baseline,
# enhancement) on miniature data in about a minute: its numbers mean nothing and are compared with none. Only counts
# and sizes shrink, and ResNet-18 starts from random weights.
PROFILES["smoke"] = {**PROFILES["paper"], "image_size": 64, "test_users": 2, "generic_epochs": 1, "draws": 1,
                     "adapt_steps": 2, "eval_every": 1, "finetune_steps": 2, "enhance_steps": 2, "weights": None}

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
    properties (columns ``peaked`` of the property table) and the curvature of the peak."""

    weights: torch.Tensor
    ideal: torch.Tensor
    peaked: tuple[int, ...]
    curvature: float

    def __len__(self) -> int:
        return len(self.weights)

    def __getitem__(self, i) -> "Users":
        i = [i] if isinstance(i, int) else i
        return Users(self.weights[i], self.ideal[i], self.peaked, self.curvature)

    def latent(self, z: torch.Tensor) -> torch.Tensor:
        """Noise-free latent scores ``(U, N)`` of standardised properties ``z`` ``(N, P)``."""
        lin = self.weights @ z.T
        zq = z[:, list(self.peaked)]                                           # (N, Q)
        quad = ((zq[None] - self.ideal[:, None]) ** 2).sum(-1)                 # (U, N)
        return lin - 0.5 * self.curvature * quad


def draw_users(n: int, *, spread: float, ideal_spread: float, population: dict | None = None,
               generator: torch.Generator | None = None) -> Users:
    """``n`` simulated raters around the population's taste (:data:`POPULATION` by default).

    ``w_u = weights + spread * N(0, I)``, ``ideal_u = ideal + ideal_spread * N(0, I)``. ``spread = 0`` gives ``n``
    copies of the population's taste.
    """
    pop = POPULATION if population is None else population
    if n < 1:
        raise ValueError(f"draw_users: n must be >= 1, got {n}")
    if spread < 0 or ideal_spread < 0:
        raise ValueError(f"spread and ideal_spread must be >= 0, got {spread} and {ideal_spread}")
    w = torch.as_tensor(pop["weights"], dtype=torch.float32)
    ideal = torch.as_tensor(pop["ideal"], dtype=torch.float32)
    peaked = tuple(PROPERTIES.index(p) for p in pop["peaked"])
    if len(w) != len(PROPERTIES) or len(ideal) != len(peaked):
        raise ValueError(f"population: need {len(PROPERTIES)} weights and one ideal per peaked property")
    ws = w + spread * torch.randn(n, len(w), generator=generator)
    ids = ideal + ideal_spread * torch.randn(n, len(ideal), generator=generator)
    return Users(ws, ids, peaked, float(pop["curvature"]))


def rate(users: Users, z: torch.Tensor, *, noise: float, stars: bool = True,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Ratings ``(U, N)`` of ``users`` for images with standardised properties ``z`` ``(N, P)``.

    ``latent + N(0, noise^2)``, shifted to a 1..5 scale (``3 + score``) and, if ``stars``, rounded and clipped to
    the integers 1..5 (FLICKR-AES's scale, ties included).
    """
    if z.ndim != 2 or z.shape[1] != users.weights.shape[1]:
        raise ValueError(f"rate: z must be (N, {users.weights.shape[1]}), got {tuple(z.shape)}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    s = 3.0 + users.latent(z) + noise * torch.randn(len(users), len(z), generator=generator)
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


def mean_spearman(preds: Sequence, targets: Sequence) -> tuple[float, list[float]]:
    """The mean of :func:`spearman` over pairs (one per user and draw) and the list of per-pair values."""
    if len(preds) != len(targets) or not len(preds):
        raise ValueError(f"mean_spearman: need equally many (>0) predictions and targets, got {len(preds)} "
                         f"and {len(targets)}")
    rhos = [spearman(p, t) for p, t in zip(preds, targets)]
    return float(np.mean(rhos)), rhos


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

    Each user gets ``draws`` splits of the images they rated (:func:`kshot_draws`). With ``test_size = 0`` a user's
    test set is every rated image not drawn for training, so test sets differ in size: they are padded with ``-1``
    to the longest (the evaluation skips the padding). Returns ``train (U * draws, k)``, ``test (U * draws, T)`` and
    ``rows (U * draws,)``, the user of each model (models ordered user by user).
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
    test = torch.stack([F.pad(t, (0, width - len(t)), value=-1) for t in tests])
    rows = torch.arange(len(ratings)).repeat_interleave(draws)
    return torch.cat(trains), test, rows


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

    def forward_tail(self, f: torch.Tensor) -> torch.Tensor:
        for block in self.tail:
            f = block(f)
        return self.head(f.mean(dim=(2, 3)))[:, 0]

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


# ============================================================================================ user parameters
def init_user_params(model: AestheticsNet, n: int) -> dict[str, torch.Tensor]:
    """The user-specific parameters of ``n`` models, each starting at the generic model.

    Per tail block ``b``: ``tail.b.a1`` ``(n, C_out, C_in)`` and ``tail.b.a2`` ``(n, C_out, C_out)`` (the 1x1
    residual adapters, zeros), ``tail.b.bn1.weight/bias`` and ``tail.b.bn2.weight/bias`` ``(n, C_out)`` (copies of
    the generic affine); the head's ``head.0.weight`` ``(n, hidden, feat)``, ``head.0.bias``, ``head.2.weight``
    ``(n, 1, hidden)``, ``head.2.bias`` (copies). All are fresh leaf tensors (``requires_grad=False``).
    """
    if n < 1:
        raise ValueError(f"init_user_params: n must be >= 1, got {n}")
    out = {}
    rep = lambda t: t.detach().clone()[None].repeat(n, *([1] * t.ndim))
    for b, block in enumerate(model.tail):
        for i, conv in ((1, block.conv1), (2, block.conv2)):
            out[f"tail.{b}.a{i}"] = torch.zeros(n, conv.out_channels, conv.in_channels, device=conv.weight.device)
            bn = getattr(block, f"bn{i}")
            out[f"tail.{b}.bn{i}.weight"] = rep(bn.weight)
            out[f"tail.{b}.bn{i}.bias"] = rep(bn.bias)
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        out[f"head.{name}"] = rep(model.head.get_parameter(name))
    return out


def param_part(name: str) -> str:
    """The part of :data:`PARTS` a user-specific tensor (a key of :func:`init_user_params`) belongs to."""
    if name.startswith("head."):
        return "head"
    return "norm" if ".bn" in name else "adapters"


def user_parameter_count(model: AestheticsNet) -> int:
    """How many scalars one user owns: adapters, normalisation affines and head (see :func:`init_user_params`)."""
    return sum(t[0].numel() for t in init_user_params(model, 1).values())


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


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Eval-mode batch norm with frozen running statistics and per-model affine ``(M, C)``; ``x`` ``(M, B, C, H, W)``."""
    inv = torch.rsqrt(bn.running_var + bn.eps)
    xh = (x - bn.running_mean[:, None, None]) * inv[:, None, None]
    return xh * weight[:, None, :, None, None] + bias[:, None, :, None, None]


def adapted_forward(model: AestheticsNet, params: dict[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
    """Scores of ``M`` personalised models: ``feats`` ``(M, B, C, H, W)`` (each model's trunk features) and
    ``params`` from :func:`init_user_params` (leading dimension ``M``) -> ``(M, B)``.

    The frozen parts (3x3 convolutions, running statistics, shortcut projections) are shared; with zero adapters
    and the generic affines and head this equals ``model.forward_tail`` in eval mode.
    """
    x = feats
    m, b = x.shape[:2]
    for i, block in enumerate(model.tail):
        p = f"tail.{i}."
        out = adapter_conv(x, block.conv1.weight, params[p + "a1"], stride=block.conv1.stride[0])
        out = F.relu(_bn(out, block.bn1, params[p + "bn1.weight"], params[p + "bn1.bias"]))
        out = adapter_conv(out, block.conv2.weight, params[p + "a2"], stride=1)
        out = _bn(out, block.bn2, params[p + "bn2.weight"], params[p + "bn2.bias"])
        if block.downsample is not None:
            sc = block.downsample(x.flatten(0, 1))
            sc = sc.view(m, b, *sc.shape[1:])
        else:
            sc = x
        x = F.relu(out + sc)
    f = x.mean(dim=(3, 4))                                                     # (M, B, C)
    h = F.relu(torch.baddbmm(params["head.0.bias"][:, None], f, params["head.0.weight"].transpose(1, 2)))
    return torch.baddbmm(params["head.2.bias"][:, None], h, params["head.2.weight"].transpose(1, 2))[..., 0]


def personal_loss(pred: torch.Tensor, ratings: torch.Tensor, params: dict[str, torch.Tensor],
                  init: dict[str, torch.Tensor], offset_decay: float) -> torch.Tensor:
    """The personalisation objective, summed over the ``M`` models (so each model's gradient is its own):

    ``sum_m [ mean_b (pred_mb - r_mb)^2 + offset_decay * sum_theta ||theta_m - theta_m^generic||^2 ]``

    with ``pred``, ``ratings`` ``(M, B)`` and the penalty over every user-specific tensor (the adapters start at 0,
    so theirs is ``||A_m||^2``): the personal model is the generic one plus a small residual offset.
    """
    if pred.shape != ratings.shape or pred.ndim != 2:
        raise ValueError(f"personal_loss: pred and ratings must both be (M, B), got {tuple(pred.shape)} and "
                         f"{tuple(ratings.shape)}")
    if offset_decay < 0:
        raise ValueError(f"offset_decay must be >= 0, got {offset_decay}")
    loss = ((pred - ratings) ** 2).mean(1).sum()
    if offset_decay > 0:
        loss = loss + offset_decay * sum(((params[k] - init[k]) ** 2).sum() for k in params)
    return loss


# ============================================================================================ training
def fit_generic(model: AestheticsNet, images, targets: torch.Tensor, *, epochs: int, lr: float,
                batch_size: int = 64, weight_decay: float = 1e-4, flip: bool = True, seed: int = 0,
                device: str | torch.device = "auto", progress: bool = True) -> list[float]:
    """Train the whole generic regressor on mean scores with Adam and the squared error (cosine learning rate).

    Args:
        images: ``(N, 3, H, W)`` tensor or a sequence of ``(3, H, W)`` tensors (e.g. lazily decoded files).
        targets: ``(N,)`` mean scores.
        flip: random horizontal flips (a flip changes none of the rated properties).
        seed: fixes the batch order and the flips.

    Returns:
        The mean training loss of every epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if len(images) != len(targets):
        raise ValueError(f"images and targets differ in length: {len(images)} vs {len(targets)}")
    dev = resolve_device(device)
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(targets) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)

    def batch_loss(idx, g):
        x = gather(images, idx).to(dev)
        if flip:
            x = random_flip(x, g)[0]
        return F.mse_loss(model(x), targets[idx].to(dev))

    losses = fit_epochs(batch_loss, len(targets), epochs=epochs, batch_size=batch_size, optimizer=opt,
                        scheduler=sched, seed=seed, progress=progress, desc="generic model")
    model.eval()
    return losses


@dataclass
class PersonalResult:
    """Output of :func:`personalise` / :func:`finetune_all`.

    ``steps``: the checkpoints (0 = the generic model); ``rho`` ``(len(steps), M)``: the test Spearman of every model
    at every checkpoint; ``val_rho``: the same on the selection users, if any; ``best_step``: the checkpoint chosen
    on the selection users (or the last one); ``params``: the user-specific parameters at ``best_step`` (on the CPU).
    """

    steps: list[int]
    rho: torch.Tensor
    best_step: int
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    val_rho: torch.Tensor | None = None
    losses: list[float] = field(default_factory=list)

    @property
    def final(self) -> torch.Tensor:
        """The test Spearman ``(M,)`` of every model at ``best_step``."""
        return self.rho[self.steps.index(self.best_step)]


def _rho_rows(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.tensor([spearman(p[v], t[v]) for p, t, v in zip(pred, target, valid)])


def personalise(model: AestheticsNet, feats: torch.Tensor, ratings: torch.Tensor, train_idx: torch.Tensor,
                test_idx: torch.Tensor, *, steps: int, lr: float, batch_size: int, offset_decay: float,
                eval_every: int, n_select: int = 0, parts: Sequence[str] = PARTS, seed: int = 0,
                device: str | torch.device = "auto", progress: bool = True, desc: str = "adapters") -> PersonalResult:
    """Train the user-specific parameters of ``M`` models at once (adapters, normalisation affines, head).

    Args:
        model: the generic regressor (frozen; only read).
        feats: ``(N, C, H, W)`` cached trunk features of the rated images.
        ratings: ``(M, N)`` ratings, one row per model (a user's ratings, repeated for each of its draws); only the
            entries at ``train_idx`` are used for training.
        train_idx: ``(M, k)`` each model's ``k`` training images; test_idx: ``(M, T)`` its disjoint test images
            (``-1`` entries are padding, skipped by the evaluation; see :func:`user_draws`).
        steps, lr, batch_size: Adam steps on minibatches of ``batch_size`` of the ``k`` ratings (all if ``k`` is
            smaller).
        offset_decay: the weight of the L2 penalty towards the generic model (:func:`personal_loss`).
        eval_every: test Spearman checkpoints.
        n_select: the first ``n_select`` models are *selection* users: the checkpoint with their best mean
            Spearman is ``best_step``; the others' test ratings never choose anything. ``0``: the last step.
        parts: which user-specific parts train (a subset of :data:`PARTS`); the others stay at the generic values.

    Returns:
        A :class:`PersonalResult` for the models after the first ``n_select`` (``val_rho`` holds the selection
        users' curves).
    """
    m, k = train_idx.shape
    if ratings.shape[0] != m or test_idx.shape[0] != m:
        raise ValueError(f"personalise: ratings, train_idx and test_idx need the same number of models, got "
                         f"{ratings.shape[0]}, {m}, {test_idx.shape[0]}")
    if steps < 1 or eval_every < 1 or not 0 <= n_select < m:
        raise ValueError(f"personalise: steps >= 1, eval_every >= 1 and 0 <= n_select < M required, got steps={steps}, "
                         f"eval_every={eval_every}, n_select={n_select}, M={m}")
    dev = resolve_device(device)
    model.eval().to(dev)
    for p in model.parameters():
        p.requires_grad_(False)
    feats, ratings = feats.to(dev), ratings.to(dev)
    bad = sorted(set(parts) - set(PARTS))
    if bad or not parts:
        raise ValueError(f"personalise: parts must be a non-empty subset of {', '.join(PARTS)}, got {list(parts)}")
    init = {n: t.to(dev) for n, t in init_user_params(model, m).items()}
    params = {n: t.clone().requires_grad_(param_part(n) in parts) for n, t in init.items()}
    opt = torch.optim.Adam([t for t in params.values() if t.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(m)[:, None]
    bsz = min(batch_size, k)

    valid = test_idx >= 0                                                       # test sets may be padded with -1
    test_at = test_idx.clamp_min(0).to(dev)

    @torch.no_grad()
    def evaluate(p):
        pred = torch.cat([adapted_forward(model, {n: t[i:i + 1] for n, t in p.items()}, feats[test_at[i]][None])
                          for i in range(m)]) if m * test_idx.shape[1] > 4096 else \
            adapted_forward(model, p, feats[test_at])
        return _rho_rows(pred.cpu(), ratings[rows.to(dev), test_at].cpu(), valid)

    ckpts, curve, losses, best, snapshots = [0], [evaluate(params)], [], None, {}
    snapshots[0] = {n: t.detach().cpu().clone() for n, t in params.items()}
    for step in tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False):
        pick = torch.argsort(torch.rand(m, k, generator=g), dim=1)[:, :bsz]
        idx = train_idx.gather(1, pick)                                        # (M, bsz)
        pred = adapted_forward(model, params, feats[idx.to(dev)])
        loss = personal_loss(pred, ratings[rows.to(dev), idx.to(dev)], params, init, offset_decay)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item() / m)
        if step % eval_every == 0 or step == steps:
            ckpts.append(step)
            curve.append(evaluate(params))
            snapshots[step] = {n: t.detach().cpu().clone() for n, t in params.items()}
    rho = torch.stack(curve)                                                    # (checkpoints, M)
    if n_select:
        best = ckpts[int(rho[:, :n_select].mean(1).argmax())]
    else:
        best = ckpts[-1]
    chosen = {n: t[n_select:] for n, t in snapshots[best].items()}
    return PersonalResult(ckpts, rho[:, n_select:], best, chosen, rho[:, :n_select] if n_select else None, losses)


def finetune_all(model: AestheticsNet, images, ratings: torch.Tensor, train_idx: torch.Tensor,
                 test_idx: torch.Tensor, *, steps: int, lr: float, batch_size: int, eval_every: int,
                 n_select: int = 0, chunk: int = 0, seed: int = 0, device: str | torch.device = "auto",
                 progress: bool = True, desc: str = "fine-tune all") -> PersonalResult:
    """The baseline: fine-tune **every** parameter of a copy of the generic model per model (``M`` of them), with
    Adam and the squared error. The copies train together through ``torch.func.vmap`` over ``functional_call``
    (batch norm in eval mode: running statistics frozen, affines trained), ``chunk`` models at a time (``0``: all).

    ``images`` ``(N, 3, H, W)`` (or a sequence of ``(3, H, W)``); the other arguments as in :func:`personalise`.
    ``params`` of the result hold nothing (a whole network per user is what this baseline costs).
    """
    from torch.func import functional_call, vmap
    m, k = train_idx.shape
    if ratings.shape[0] != m or test_idx.shape[0] != m:
        raise ValueError(f"finetune_all: ratings, train_idx and test_idx need the same number of models, got "
                         f"{ratings.shape[0]}, {m}, {test_idx.shape[0]}")
    if steps < 1 or eval_every < 1 or not 0 <= n_select < m or chunk < 0:
        raise ValueError(f"finetune_all: steps >= 1, eval_every >= 1, 0 <= n_select < M and chunk >= 0 required, "
                         f"got steps={steps}, eval_every={eval_every}, n_select={n_select}, M={m}, chunk={chunk}")
    dev = resolve_device(device)
    net = copy.deepcopy(model).to(dev).eval()
    base = {n: p.detach().requires_grad_(False) for n, p in net.named_parameters()}
    buffers = dict(net.named_buffers())
    fwd = vmap(lambda p, x: functional_call(net, (p, buffers), (x,)))
    if not torch.is_tensor(images):
        images = torch.stack(list(images))
    images, ratings = images.to(dev), ratings.to(dev)
    g = torch.Generator().manual_seed(seed)
    bsz = min(batch_size, k)
    ckpts = [0] + [s for s in range(1, steps + 1) if s % eval_every == 0 or s == steps]
    curves, losses = [], []
    for part in torch.arange(m).split(chunk or m):
        mc = len(part)
        rows = torch.arange(mc, device=dev)[:, None]
        r, tr = ratings[part.to(dev)], train_idx[part]
        valid, te = test_idx[part] >= 0, test_idx[part].clamp_min(0)
        params = {n: p[None].repeat(mc, *([1] * p.ndim)).clone().requires_grad_(True) for n, p in base.items()}
        opt = torch.optim.Adam(params.values(), lr=lr)

        @torch.no_grad()
        def evaluate():
            pred = torch.cat([fwd({n: t[c] for n, t in params.items()}, images[te[c].to(dev)])
                              for c in torch.arange(mc).split(8)])
            return _rho_rows(pred.cpu(), r[rows, te.to(dev)].cpu(), valid)

        curve = [evaluate()]
        for step in tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False):
            pick = torch.argsort(torch.rand(mc, k, generator=g), dim=1)[:, :bsz]
            idx = tr.gather(1, pick).to(dev)
            loss = ((fwd(params, images[idx]) - r[rows, idx]) ** 2).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item() / mc)
            if step in ckpts:
                curve.append(evaluate())
        curves.append(torch.stack(curve))
        del params, opt
    rho = torch.cat(curves, 1)
    best = ckpts[int(rho[:, :n_select].mean(1).argmax())] if n_select else ckpts[-1]
    return PersonalResult(ckpts, rho[:, n_select:], best, {}, rho[:, :n_select] if n_select else None, losses)


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


def enhance(images: torch.Tensor, score_fn: Callable[[torch.Tensor], torch.Tensor], *, steps: int, lr: float,
            max_offset: float = 0.25, max_log_factor: float = 0.5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Gradient ascent of ``score_fn`` (images -> ``(N,)`` scores, e.g. one user's personal model) over three
    adjustment parameters per image (:func:`adjust`), kept in a plausible range by ``tanh``: brightness offset in
    ``(-max_offset, max_offset)``, contrast and saturation factors in ``exp(+-max_log_factor)``.

    Returns the enhanced images ``(N, 3, H, W)`` and the chosen adjustments (each ``(N,)``).
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"enhance: steps >= 1 and lr > 0 required, got steps={steps}, lr={lr}")
    _check_images(images)
    u = torch.zeros(3, len(images), requires_grad=True)
    opt = torch.optim.Adam([u], lr=lr)

    def settings(u):
        t = torch.tanh(u)
        return {"brightness": max_offset * t[0], "contrast": torch.exp(max_log_factor * t[1]),
                "saturation": torch.exp(max_log_factor * t[2])}

    for _ in range(steps):
        loss = -score_fn(adjust(images, **settings(u))).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        s = settings(u)
        return adjust(images, **s), {n: v.detach() for n, v in s.items()}


# ============================================================================================ data
def square_crops(images: Sequence[torch.Tensor], size: int, *, extra: int = 0, scale: tuple[float, float] = (0.5, 0.9),
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Square photos from images of any size: the central square of each image, plus ``extra`` random square crops
    whose side is a uniform fraction in ``scale`` of the shorter side, all resized to ``size`` (antialiased).

    Returns ``(N * (1 + extra), 3, size, size)`` images and the ``(N * (1 + extra),)`` index of the source image.
    """
    if size < 3 or extra < 0 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"square_crops: size >= 3, extra >= 0 and 0 < scale[0] <= scale[1] <= 1 required, got "
                         f"size={size}, extra={extra}, scale={scale}")
    out, src = [], []
    for i, im in enumerate(images):
        h, w = im.shape[-2:]
        s = min(h, w)
        boxes = [((h - s) // 2, (w - s) // 2, s)]
        for _ in range(extra):
            side = max(3, int(round(s * (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=generator).item()))))
            top = int(torch.randint(0, h - side + 1, (), generator=generator))
            left = int(torch.randint(0, w - side + 1, (), generator=generator))
            boxes.append((top, left, side))
        for top, left, side in boxes:
            crop = im[None, :, top:top + side, left:left + side]
            out.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                                     align_corners=False).clamp(0, 1)[0])
            src.append(i)
    return torch.stack(out), torch.tensor(src)


@dataclass
class Benchmark:
    """What the notebook's experiment needs, for either profile.

    ``generic_images`` ``(N, 3, H, W)`` (or a lazy sequence) and ``generic_targets`` ``(N,)``: mean scores for the
    generic model. ``user_images`` ``(R, 3, H, W)``: the images the test (and selection) users rated;
    ``user_ratings`` ``(U, R)`` with ``NaN`` where a user did not rate an image; ``user_ids`` names; ``n_select``:
    the first rows are selection users (never tested); ``simulated``: the raters are simulated (``users`` holds
    them, ``z_mean``/``z_std`` the property standardisation).
    """

    generic_images: torch.Tensor | Sequence[torch.Tensor]
    generic_targets: torch.Tensor
    user_images: torch.Tensor | Sequence[torch.Tensor]
    user_ratings: torch.Tensor
    user_ids: list[str]
    n_select: int = 0
    simulated: bool = False
    users: Users | None = None
    z_mean: torch.Tensor | None = None
    z_std: torch.Tensor | None = None
    generic_source: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def standardise(self, props: torch.Tensor) -> torch.Tensor:
        return (props - self.z_mean) / self.z_std

    def true_scores(self, images: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """Noise-free latent scores ``(len(rows), N)`` of simulated users ``rows`` (only for simulated raters)."""
        if self.users is None:
            raise ValueError("true_scores needs simulated raters (the quick profile)")
        return self.users[list(rows)].latent(self.standardise(image_properties(images)))


def simulated_benchmark(cfg: dict, *, data_dir=None, seed: int = 0) -> Benchmark:
    """The quick profile's benchmark: real photos rated by simulated raters.

    * generic photos: the 239 shipped COCO images, each as its central square plus ``crops_per_image`` random
      square crops (each crop is a photo of its own to a rater), ``image_size`` px; each is rated by
      ``ratings_per_image`` of ``train_raters`` simulated raters (FLICKR-AES has 5 ratings per image) and the generic
      target is the mean of those ratings;
    * user photos: the 280 shipped PACS photos (domain ``photo``), rated by every one of ``val_users`` selection
      users and ``test_users`` test users, all drawn around the same population taste (:data:`POPULATION`).
    """
    g = torch.Generator().manual_seed(seed)
    size = cfg["image_size"]
    coco = _data.load("coco_captions_mini", "all", data_dir=data_dir)
    gen_x, gen_src = square_crops(coco.images, size, extra=cfg["crops_per_image"], scale=tuple(cfg["crop_scale"]),
                                  generator=g)
    pacs = _data.load("pacs", "all", data_dir=data_dir, size=size)
    photo = pacs.meta["_domains"].index("photo")
    keep = torch.nonzero(pacs.meta["domain"] == photo).flatten()
    user_x = pacs.images[keep]
    props = image_properties(gen_x)
    z_mean, z_std = props.mean(0), props.std(0)
    z_gen = (props - z_mean) / z_std
    z_user = (image_properties(user_x) - z_mean) / z_std
    crowd = draw_users(cfg["train_raters"], spread=cfg["spread"], ideal_spread=cfg["ideal_spread"], generator=g)
    r = cfg["ratings_per_image"]
    if not 1 <= r <= cfg["train_raters"]:
        raise ValueError(f"ratings_per_image must be in 1..train_raters, got {r}")
    who = torch.argsort(torch.rand(len(gen_x), cfg["train_raters"], generator=g), dim=1)[:, :r]   # (N, r)
    all_r = rate(crowd, z_gen, noise=cfg["noise"], generator=g)                                    # (raters, N)
    targets = all_r.T.gather(1, who).mean(1)
    n_u = cfg["val_users"] + cfg["test_users"]
    users = draw_users(n_u, spread=cfg["spread"], ideal_spread=cfg["ideal_spread"], generator=g)
    ratings = rate(users, z_user, noise=cfg["noise"], generator=g)
    ids = [f"select{i}" for i in range(cfg["val_users"])] + [f"user{i}" for i in range(cfg["test_users"])]
    return Benchmark(gen_x, targets, user_x, ratings, ids, cfg["val_users"], True, users, z_mean, z_std, gen_src,
                     {"pacs_class": pacs.labels[keep], "pacs_classes": pacs.classes,
                      "population_mean_score": all_r.mean(0)})


def flickr_benchmark(cfg: dict, *, data_dir=None, seed: int = 0) -> Benchmark:
    """The paper profile's benchmark: FLICKR-AES (:func:`vklib.data.load` ``("flickr_aes", ...)``, full=True).

    Generic model: the images rated by the training workers and by no test worker, with the training workers' mean
    scores. Users: the test workers, with the ratings they gave (``NaN`` elsewhere) on the images of the test split.
    """
    size = cfg["image_size"]
    train = _data.load("flickr_aes", "train", data_dir=data_dir, full=True, size=size)
    test = _data.load("flickr_aes", "test", data_dir=data_dir, full=True, size=size)
    workers = test.meta["_workers"]
    if cfg["test_users"] and len(workers) != cfg["test_users"]:
        workers = workers[:cfg["test_users"]]
    ratings = torch.full((len(workers), len(test)), float("nan"))
    for u, w in enumerate(workers):
        idx, sc = test.meta["_ratings"][w]
        ratings[u, idx] = sc
    return Benchmark(train.images, train.meta["mean_score"], test.images, ratings, list(workers), 0, False)


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
