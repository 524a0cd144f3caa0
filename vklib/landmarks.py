"""Unsupervised landmarks by Descriptor Vector Exchange (DVE; Thewlis, Albanie, Bilen, Vedaldi, ICCV 2019,
arXiv:1908.06427).

A fully convolutional network maps an image ``x`` to a dense field of descriptors ``Phi_u(x)``, one
``C``-dimensional vector per location ``u``. It is trained without labels on pairs of images related by a known
random warp ``v = g(u)``: the descriptor of ``u`` must pick out ``g(u)`` among all locations of the warped image
(*dense equivariance*). DVE replaces ``Phi_u(x)`` by its soft reconstruction from the descriptors of another
identity before matching, so descriptors are forced to mean the same object part across identities.

Coordinates
    Pixel coordinates are ``(x, y)`` with the centre of pixel ``(row i, column j)`` at ``(j, i)``. A network of
    stride ``s`` gives descriptor cell ``(i, j)`` the centre ``((j + 0.5) s - 0.5, (i + 0.5) s - 0.5)`` in input
    pixels. *Normalised* coordinates are ``grid_sample``'s with ``align_corners=False``: ``n = (2 p + 1) / S - 1``
    for a side of ``S`` pixels, so ``[-1, 1]`` spans the image's outer pixel edges.

Contents
    warps: :class:`TPSWarp`, :func:`random_tps`, :func:`warp_pair` (kornia's thin-plate splines);
    losses: :func:`correspondence_cost`, :func:`dense_equivariance_loss`, :func:`exchange`, :func:`dve_loss`;
    network: :class:`SmallNet`, :func:`train_descriptors`, :func:`extract_descriptors`, :func:`reset_bn_stats`;
    evaluation: :func:`soft_argmax`, :class:`LandmarkRegressor`, :func:`fit_regressor`, :func:`predict_landmarks`,
    :func:`iod_error`, :func:`match_points`, :func:`cross_instance_error`; pictures: :func:`pca_rgb`;
    data: :func:`crop_border`, :class:`FaceImages` and the readers of the full-size ``celeba``, ``mafl`` and
    ``aflw_mtfl`` datasets (registered in :mod:`vklib.data`, which converts coordinates with
    :func:`vklib.data.to_normalized` and :func:`vklib.data.to_pixels`).

The paper's numbers (landmark errors as fractions of the inter-ocular distance) are rows of
``vklib/paper_numbers.csv``.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data as _data
from . import train as _train
from .utils import resolve_device

__all__ = [
    "PROFILES", "FaceImages", "LandmarkRegressor", "SmallNet", "TPSWarp", "cell_centres", "check_config",
    "correspondence_cost", "crop_border", "cross_instance_error", "dense_equivariance_loss", "dve_loss", "exchange",
    "extract_descriptors", "fit_regressor", "iod_error", "match_points", "pca_rgb", "predict_landmarks",
    "random_tps", "reset_bn_stats", "soft_argmax", "tps_fit", "train_descriptors",
    "warp_pair",
]

# ----------------------------------------------------------------------------------------------- settings
#: Profile defaults, resolved in the notebook with ``utils.resolve_profile(landmarks.PROFILES, profile, ...)``.
#: ``epochs`` are passes over the unlabeled training images (may be fractional); ``reg_*`` configure the landmark
#: regressor on frozen descriptors; ``warp_*`` the random thin-plate-spline warps (normalised units, degrees).
PROFILES = {
    "quick": {
        "train_data": "lfw_landmarks5",    # unlabeled training faces: the 1,000 shipped train crops (labels unused)
        "eval_data": ["lfw_landmarks5"],   # regressor trained on its train split, tested on its test split
        "image_size": 64, "crop": 8,       # 64 x 64 crops, 8 border pixels cut: 48 x 48 inputs
        "dims": [16], "widths": [8, 16, 16, 32, 32], "normalize": 4.0,
        "epochs": 6.0, "batch_size": 8, "lr": 0.005, "lr_milestones": [0.7, 0.9], "gamma": 0.5,
        "warp_rotation": 8.0, "warp_scale": 0.08, "warp_translation": 0.08, "warp_tps": 0.04, "warp_control": 4,
        "color_jitter": 0.2, "chunk": None, "workers": 0, "finetune_on": [], "finetune_epochs": 0.0,
        "reg_intermediate": 10, "reg_epochs": 30.0, "reg_batch_size": 100, "reg_lr": 0.03, "reg_milestones": [0.8],
        "reg_softargmax_mul": 5.0,
    },
    "paper": {
        # CelebA (minus the MAFL test faces) for the embedding; MAFL and AFLW-MTFL for landmark regression (the
        # embeddings fine-tuned on AFLW's training faces without labels first, as in the paper); DVE's SmallNet at
        # 16, 32 and 64 dimensions, with and without DVE; the regressor of DVE's code (50 points per landmark).
        "train_data": "celeba", "eval_data": ["mafl", "aflw_mtfl"],
        "image_size": 100, "crop": 15,
        "dims": [16, 32, 64], "widths": [20, 48, 64, 80, 256], "normalize": None,
        "epochs": 100.0, "batch_size": 32, "lr": 0.001, "lr_milestones": [0.7, 0.9], "gamma": 0.5,
        "warp_rotation": 2.5, "warp_scale": 0.05, "warp_translation": 0.05, "warp_tps": 0.02, "warp_control": 5,
        "color_jitter": 0.1, "chunk": None, "workers": 8, "finetune_on": ["aflw_mtfl"], "finetune_epochs": 50.0,
        "reg_intermediate": 50, "reg_epochs": 300.0, "reg_batch_size": 32, "reg_lr": 0.001,
        "reg_milestones": [1 / 3, 5 / 6], "reg_softargmax_mul": 100.0,
    },
}
# The paper path shrunk to about a minute on 2 CPU cores (the tests run it on miniature CelebA, MAFL and AFLW-MTFL;
# its numbers mean nothing): one descriptor size, one epoch of each stage, batches of two, two loader workers.
PROFILES["smoke"] = {**PROFILES["paper"], "dims": [16], "epochs": 1.0, "batch_size": 2, "workers": 2,
                     "finetune_epochs": 1.0, "reg_epochs": 2.0, "reg_batch_size": 2}

def check_config(cfg: dict) -> dict:
    """Validate a resolved profile (``utils.resolve_profile(PROFILES, ...)``) and return it with ``dims`` as a list
    of ints; a bad value raises a ``ValueError`` naming the setting and what is allowed."""
    cfg = dict(cfg)
    dims = cfg["dims"]
    dims = [dims] if isinstance(dims, int) else dims
    if (isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__") or not dims
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims)):
        raise ValueError(f"dims must be a positive int or a non-empty list of them (e.g. [16] or [16, 32, 64]), "
                         f"got {cfg['dims']!r}")
    cfg["dims"] = list(dims)
    for key in ("epochs", "lr", "reg_epochs", "reg_lr", "gamma"):
        if not isinstance(cfg[key], (int, float)) or isinstance(cfg[key], bool) or not cfg[key] > 0:
            raise ValueError(f"{key} must be a number > 0, got {cfg[key]!r}")
    if not isinstance(cfg["finetune_epochs"], (int, float)) or cfg["finetune_epochs"] < 0:
        raise ValueError(f"finetune_epochs must be a number >= 0, got {cfg['finetune_epochs']!r}")
    for key, low in (("batch_size", 2), ("reg_batch_size", 1), ("image_size", 8)):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < low:
            raise ValueError(f"{key} must be an int >= {low}, got {cfg[key]!r}")
    if not isinstance(cfg["crop"], int) or not 0 <= 2 * cfg["crop"] < cfg["image_size"] - 4:
        raise ValueError(f"crop must be an int in [0, {(cfg['image_size'] - 5) // 2}] for image_size "
                         f"{cfg['image_size']}, got {cfg['crop']!r}")
    return cfg


# ----------------------------------------------------------------------------------------------- coordinates
def cell_centres(h: int, w: int, stride: int = 1, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(h * w, 2)`` input-pixel centres ``((j + 0.5) stride - 0.5, (i + 0.5) stride - 0.5)`` of the cells of an
    ``h x w`` descriptor map of stride ``stride`` (row-major, ``(x, y)``)."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride - 0.5
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride - 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], -1).reshape(-1, 2)


def crop_border(images: torch.Tensor, crop: int, landmarks: torch.Tensor | None = None):
    """Remove ``crop`` pixels from every side of ``images`` ``(N, C, H, W)``; landmarks ``(N, L, 2)`` (pixels)
    are shifted into the cropped frame. Returns the images, or ``(images, landmarks)`` when landmarks are given."""
    if crop < 0 or 2 * crop >= min(images.shape[-2:]):
        raise ValueError(f"crop must be in [0, {min(images.shape[-2:]) // 2}), got {crop}")
    out = images[..., crop:images.shape[-2] - crop, crop:images.shape[-1] - crop] if crop else images
    if landmarks is None:
        return out
    return out, landmarks - crop


# ----------------------------------------------------------------------------------------------- warps
class TPSWarp(NamedTuple):
    """A batch of thin-plate-spline maps of the plane (kornia's parametrisation), in normalised coordinates.

    ``centers`` ``(N, K, 2)``, ``kernel_weights`` ``(N, K, 2)``, ``affine_weights`` ``(N, 3, 2)``. Calling the warp
    on points ``(N, P, 2)`` returns the mapped points ``(N, P, 2)``.
    """

    centers: torch.Tensor
    kernel_weights: torch.Tensor
    affine_weights: torch.Tensor

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        from kornia.geometry.transform import warp_points_tps
        return warp_points_tps(points, self.centers, self.kernel_weights, self.affine_weights)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """The ``(N, H, W, 2)`` sampling grid for ``F.grid_sample(..., align_corners=False)``: output pixel
        ``(i, j)`` samples the input at the warp of its own normalised centre."""
        centres = cell_centres(height, width, 1, self.centers.device, self.centers.dtype)
        pts = _data.to_normalized(centres, (height, width)).expand(len(self.centers), -1, -1)
        return self(pts).reshape(-1, height, width, 2)


def random_tps(n: int, *, generator: torch.Generator | None = None, rotation: float = 2.5, scale: float = 0.05,
               translation: float = 0.05, tps: float = 0.02, control: int = 5,
               device: str | torch.device = "cpu") -> TPSWarp:
    """``n`` random smooth warps: a random similarity (rotation ~ N(0, ``rotation`` degrees), scale ~ 1 + N(0,
    ``scale``), translation ~ N(0, ``translation``) in normalised units) plus independent N(0, ``tps``) jitter of a
    ``control x control`` grid of control points, interpolated by a thin-plate spline (:func:`tps_fit`, evaluated
    with kornia's ``warp_points_tps``).

    The map sends a normalised output location to the normalised input location it samples. All random numbers
    come from ``generator`` (on the CPU), so a seeded generator gives the same warps on every device.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if control < 2:
        raise ValueError(f"control must be >= 2 (a control x control grid of points), got {control}")
    if min(rotation, scale, translation, tps) < 0:
        raise ValueError("rotation, scale, translation and tps are standard deviations and must be >= 0")
    lin = torch.linspace(-1, 1, control)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    src = torch.stack([xx, yy], -1).reshape(1, -1, 2).expand(n, -1, -1)
    theta = torch.randn(n, generator=generator) * (rotation * math.pi / 180)
    s = 1 + torch.randn(n, generator=generator) * scale
    t = torch.randn(n, 1, 2, generator=generator) * translation
    cos, sin = torch.cos(theta) * s, torch.sin(theta) * s
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (n, 2, 2)
    dst = src @ rot.transpose(1, 2) + t + torch.randn(src.shape, generator=generator) * tps
    src, dst = src.to(device), dst.to(device)
    return TPSWarp(src, *tps_fit(src, dst))


def tps_fit(centers: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The thin-plate spline ``f`` with ``f(centers_i) = targets_i`` and minimal bending energy, with its kernels
    at ``centers``: ``f(p) = a_0 + a_1 p_x + a_2 p_y + sum_j w_j U(||p - centers_j||)``, ``U(r) = r^2 log r``.

    ``centers``, ``targets`` ``(N, K, 2)`` -> kernel weights ``(N, K, 2)`` and affine weights ``(N, 3, 2)`` in
    kornia's layout, so ``kornia.geometry.transform.warp_points_tps(p, centers, w, a)`` evaluates ``f``.
    (kornia's own ``get_tps_transform`` puts the kernels at the targets instead, which is only close to this
    spline for small displacements.)
    """
    n, k, _ = centers.shape
    d2 = (centers[:, :, None] - centers[:, None]).pow(2).sum(-1)
    kernel = torch.where(d2 > 0, 0.5 * d2 * torch.log(d2.clamp_min(1e-30)), torch.zeros_like(d2))
    affine = torch.cat([torch.ones_like(centers[..., :1]), centers], -1)  # (N, K, 3)
    system = torch.cat([torch.cat([kernel, affine], -1),
                        torch.cat([affine.transpose(1, 2), centers.new_zeros(n, 3, 3)], -1)], 1)
    rhs = torch.cat([targets, targets.new_zeros(n, 3, 2)], 1)
    sol = torch.linalg.solve(system, rhs)
    return sol[:, :k], sol[:, k:]


def _color_jitter(x: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    """Per-image random brightness (x b) and contrast (around the image mean), both ~ U(1 - a, 1 + a)."""
    if amount <= 0:
        return x
    n = len(x)
    b = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * amount
    c = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * amount
    b, c = b.to(x.device, x.dtype), c.to(x.device, x.dtype)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c + mean).mul(b).clamp(0, 1)


def warp_pair(images: torch.Tensor, *, generator: torch.Generator | None = None, stride: int = 1, crop: int = 0,
              rotation: float = 2.5, scale: float = 0.05, translation: float = 0.05, tps: float = 0.02,
              control: int = 5, color_jitter: float = 0.0):
    """Two random warps of each image with their dense correspondence (the ``Warper`` of DVE's code).

    ``x2 = x o G1`` and ``x1 = x o G1 o G2`` for random thin-plate splines ``G1``, ``G2`` (:func:`random_tps`),
    so location ``u`` of ``x1`` shows the same physical point as location ``g(u) = G2(u)`` of ``x2``; both images
    are sampled once from ``x`` (the composed grid), then cropped by ``crop`` pixels per side and optionally
    colour-jittered independently.

    Args:
        images: ``(N, C, H, W)`` in [0, 1].
        stride: the descriptor network's stride; ``g`` is given at the centres of the ``stride x stride`` cells.

    Returns:
        ``x1, x2`` ``(N, C, H - 2 crop, W - 2 crop)`` and ``g`` ``(N, h, w, 2)`` with ``h = (H - 2 crop) // stride``:
        for the centre of each cell of ``x1``, its position in ``x2`` in pixels of the cropped frame.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    n, _, H, W = images.shape
    if crop < 0 or 2 * crop >= min(H, W):
        raise ValueError(f"crop must be in [0, {min(H, W) // 2}), got {crop}")
    kw = dict(generator=generator, rotation=rotation, scale=scale, translation=translation, tps=tps,
              control=control, device=images.device)
    g1, g2 = random_tps(n, **kw), random_tps(n, **kw)
    full = cell_centres(H, W, 1, images.device, images.dtype)
    full = _data.to_normalized(full, (H, W)).expand(n, -1, -1)
    grid2 = g1(full).reshape(n, H, W, 2)
    grid1 = g1(g2(full)).reshape(n, H, W, 2)
    x2 = F.grid_sample(images, grid2, mode="bilinear", padding_mode="zeros", align_corners=False)
    x1 = F.grid_sample(images, grid1, mode="bilinear", padding_mode="zeros", align_corners=False)
    x1, x2 = crop_border(x1, crop), crop_border(x2, crop)
    h, w = x1.shape[-2] // stride, x1.shape[-1] // stride
    cells = cell_centres(h, w, stride, images.device, images.dtype) + crop  # full-frame pixels
    g = _data.to_pixels(g2(_data.to_normalized(cells, (H, W)).expand(n, -1, -1)), (H, W)) - crop
    x1 = _color_jitter(x1, color_jitter, generator)
    x2 = _color_jitter(x2, color_jitter, generator)
    return x1, x2, g.reshape(n, h, w, 2)


# ----------------------------------------------------------------------------------------------- losses
def correspondence_cost(g: torch.Tensor, h: int, w: int, *, stride: int = 1, gamma: float = 0.5) -> torch.Tensor:
    """``||v - g(u)||^gamma`` for every source cell ``u`` and target cell ``v``.

    Args:
        g: ``(B, U, 2)`` positions (input pixels) of the source cells in the target image.
        h, w, stride: the target descriptor map's size and stride (cell centres as in the module docstring).

    Returns:
        ``(B, U, h * w)``.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    v = cell_centres(h, w, stride, g.device, g.dtype)
    d = torch.cdist(g, v.expand(len(g), -1, -1), compute_mode="donot_use_mm_for_euclid_dist")  # exact near 0
    return d.sqrt() if gamma == 0.5 else d.pow(gamma)


def _check(f1: torch.Tensor, f2: torch.Tensor, g: torch.Tensor, fa: torch.Tensor | None = None) -> None:
    if f1.ndim != 4 or f2.shape != f1.shape:
        raise ValueError(f"f1 and f2 must be (B, C, h, w) of one shape, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    if fa is not None and fa.shape != f1.shape:
        raise ValueError(f"fa must have f1's shape {tuple(f1.shape)}, got {tuple(fa.shape)}")
    B, _, h, w = f1.shape
    if tuple(g.shape) != (B, h, w, 2):
        raise ValueError(f"g must be (B, h, w, 2) = {(B, h, w, 2)}, got {tuple(g.shape)}")


def _logits(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(B, U, C) x (B, C, V) -> (B, U, V)`` inner products divided by the temperature."""
    out = torch.bmm(a, b)
    return out if temperature == 1 else out / temperature


def _expected_cost(src: torch.Tensor, f2: torch.Tensor, fa: torch.Tensor | None, gu: torch.Tensor, h: int, w: int,
                   stride: int, gamma: float, temperature: float) -> torch.Tensor:
    """Sum over the block's source cells of ``sum_v ||v - g(u)||^gamma p(v | u)``.

    ``src`` ``(B, U, C)`` source descriptors (rows), ``f2``/``fa`` ``(B, C, h*w)``, ``gu`` ``(B, U, 2)``.
    """
    if fa is not None:  # descriptor vector exchange: rebuild each source descriptor from the auxiliary image
        attn = torch.softmax(_logits(src, fa, temperature), dim=-1)  # (B, U, h*w)
        src = torch.bmm(attn, fa.transpose(1, 2))  # (B, U, C)
    logp = torch.log_softmax(_logits(src, f2, temperature), dim=-1)
    with torch.no_grad():
        cost = correspondence_cost(gu, h, w, stride=stride, gamma=gamma)
    return (logp.exp() * cost).sum()


def _matching_loss(f1, f2, fa, g, gamma, stride, temperature, chunk):
    _check(f1, f2, g, fa)
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be None or >= 1, got {chunk}")
    B, C, h, w = f1.shape
    src = f1.flatten(2).transpose(1, 2)  # (B, U, C)
    tgt = f2.flatten(2)
    aux = None if fa is None else fa.flatten(2)
    gu = g.reshape(B, h * w, 2)
    if chunk is None or chunk >= h * w:
        total = _expected_cost(src, tgt, aux, gu, h, w, stride, gamma, temperature)
    else:
        total = _ChunkedCost.apply(src, tgt, aux, gu, (h, w, stride, gamma, temperature, chunk))
    return total / (B * h * w)


class _ChunkedCost(torch.autograd.Function):
    """:func:`_expected_cost` summed over blocks of ``chunk`` source cells, with bounded memory: the forward pass
    keeps no block's correlations, the backward pass recomputes one block at a time (gradient checkpointing by
    hand; first-order gradients only)."""

    @staticmethod
    def forward(ctx, src, tgt, aux, gu, spec):
        h, w, stride, gamma, temperature, chunk = spec
        ctx.spec = spec
        ctx.save_for_backward(src, tgt, aux, gu)
        return sum(_expected_cost(src[:, s:s + chunk], tgt, aux, gu[:, s:s + chunk], h, w, stride, gamma,
                                  temperature) for s in range(0, src.shape[1], chunk))

    @staticmethod
    def backward(ctx, grad_out):
        h, w, stride, gamma, temperature, chunk = ctx.spec
        src, tgt, aux, gu = ctx.saved_tensors
        d_src = torch.zeros_like(src)
        d_tgt = torch.zeros_like(tgt)
        d_aux = None if aux is None else torch.zeros_like(aux)
        with torch.enable_grad():
            t = tgt.detach().requires_grad_(True)
            a = None if aux is None else aux.detach().requires_grad_(True)
            for s in range(0, src.shape[1], chunk):
                block = src[:, s:s + chunk].detach().requires_grad_(True)
                value = _expected_cost(block, t, a, gu[:, s:s + chunk], h, w, stride, gamma, temperature)
                leaves = [block, t] + ([] if a is None else [a])
                grads = torch.autograd.grad(value, leaves)
                d_src[:, s:s + chunk] = grads[0]
                d_tgt += grads[1]
                if a is not None:
                    d_aux += grads[2]
        d_aux = None if d_aux is None else d_aux * grad_out
        return d_src * grad_out, d_tgt * grad_out, d_aux, None, None


def dense_equivariance_loss(f1: torch.Tensor, f2: torch.Tensor, g: torch.Tensor, *, gamma: float = 0.5,
                            stride: int = 1, temperature: float = 1.0, chunk: int | None = None) -> torch.Tensor:
    """The dense equivariance loss of Thewlis et al. (NeurIPS 2017) as used by DVE.

    For every cell ``u`` of ``f1``: ``p(v | u) = softmax_v <f1_u, f2_v> / temperature`` over all cells ``v`` of
    ``f2``, and the loss is the mean over ``u`` (and the batch) of ``sum_v ||v - g(u)||^gamma p(v | u)``.

    Args:
        f1, f2: ``(B, C, h, w)`` descriptors of the two images.
        g: ``(B, h, w, 2)`` position (input pixels) in the second image of each cell centre of the first.
        stride: the network's stride (input pixels per cell), fixing the cells' positions.
        chunk: ``None`` for one batched ``(B, hw, hw)`` correlation, or the number of source cells per block;
            blocks are recomputed in the backward pass (checkpointing), so memory stays ``O(B * chunk * hw)``
            there too (first-order gradients only).

    Returns:
        A scalar (input pixels to the power ``gamma``).
    """
    return _matching_loss(f1, f2, None, g, gamma, stride, temperature, chunk)


def exchange(f1: torch.Tensor, fa: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """The descriptor vector exchange: ``hat f1_u = sum_w softmax_w(<f1_u, fa_w> / temperature) fa_w``.

    ``f1``, ``fa`` ``(B, C, h, w)`` -> ``(B, C, h, w)``: each descriptor of ``f1`` rebuilt as a soft mixture of the
    descriptors of the auxiliary image ``fa`` (another identity).
    """
    if f1.ndim != 4 or fa.shape != f1.shape:
        raise ValueError(f"f1 and fa must be (B, C, h, w) of one shape, got {tuple(f1.shape)} and {tuple(fa.shape)}")
    B, C, h, w = f1.shape
    src, aux = f1.flatten(2).transpose(1, 2), fa.flatten(2)
    attn = torch.softmax(_logits(src, aux, temperature), dim=-1)
    return torch.bmm(attn, aux.transpose(1, 2)).transpose(1, 2).reshape(B, C, h, w)


def dve_loss(f1: torch.Tensor, f2: torch.Tensor, fa: torch.Tensor, g: torch.Tensor, *, gamma: float = 0.5,
             stride: int = 1, temperature: float = 1.0, chunk: int | None = None) -> torch.Tensor:
    """DVE: :func:`dense_equivariance_loss` with ``f1`` replaced by its :func:`exchange` through ``fa``.

    Args:
        f1, f2: ``(B, C, h, w)`` descriptors of the pair; fa: ``(B, C, h, w)`` descriptors of auxiliary images of
            other identities (DVE's code takes the next image of the batch: ``f1.roll(-1, 0)``).
        g, gamma, stride, temperature, chunk: as in :func:`dense_equivariance_loss`.
    """
    return _matching_loss(f1, f2, fa, g, gamma, stride, temperature, chunk)


# ----------------------------------------------------------------------------------------------- network
class SmallNet(nn.Module):
    """The descriptor network of Thewlis et al. (NeurIPS 2017) used by DVE: six conv-BN-LeakyReLU(0.2) blocks
    (5x5, max-pool 2, 5x5, 5x5 dilation 2, 3x3 dilation 4, 3x3 dilation 2, 1x1 to ``descriptor_dim``).

    Args:
        descriptor_dim: ``C`` (3, 16, 32, 64 in the paper).
        widths: channels of the five hidden blocks; the default is DVE's ``(20, 48, 64, 80, 256)``.
        normalize: ``None`` for raw descriptors (DVE's released configurations), or a scale ``s``: every descriptor
            is L2-normalised and multiplied by ``s``, so inner products are ``s^2`` times cosines (the
            ``normalize_vectors`` option of DVE's code uses ``s = 20``).
        seed: when given, the weights are initialised from this seed without touching the global RNG.

    Shapes: ``(N, in_channels, H, W)`` -> ``(N, descriptor_dim, H // 2, W // 2)`` (``stride`` is 2).
    """

    stride = 2

    def __init__(self, descriptor_dim: int = 16, in_channels: int = 3,
                 widths: Sequence[int] = (20, 48, 64, 80, 256), normalize: float | None = None,
                 seed: int | None = None):
        super().__init__()
        widths = list(widths)
        if descriptor_dim < 1 or len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"need descriptor_dim >= 1 and five positive widths, got {descriptor_dim}, {widths}")
        if normalize is not None and normalize <= 0:
            raise ValueError(f"normalize must be None or a positive scale, got {normalize}")
        self.descriptor_dim, self.normalize = descriptor_dim, normalize
        spec = [(5, 1), (5, 1), (5, 2), (3, 4), (3, 2)]  # (kernel, dilation) of the hidden blocks
        chans = [in_channels] + widths

        def build():
            blocks = [self._block(chans[i], chans[i + 1], k, d) for i, (k, d) in enumerate(spec)]
            return blocks[0], nn.Sequential(*blocks[1:], self._block(widths[-1], descriptor_dim, 1, 1))

        if seed is None:
            first, rest = build()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                first, rest = build()
        self.body = nn.Sequential(first, nn.MaxPool2d(2), rest)

    @staticmethod
    def _block(c_in: int, c_out: int, k: int, dilation: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=dilation * (k - 1) // 2, dilation=dilation),
                             nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return f if self.normalize is None else F.normalize(f, dim=1) * self.normalize


def _batch_stream(images, batch_size: int, steps: int, generator: torch.Generator, workers: int = 0):
    """``steps`` batches of ``batch_size`` images, reshuffling (seeded) at the end of every pass."""
    indices = _batch_indices(len(images), batch_size, steps, generator)
    if workers <= 0 or torch.is_tensor(images):
        for idx in indices:
            yield _train.gather(images, idx)
        return
    loader = torch.utils.data.DataLoader(_IndexedBatches(images, list(indices)), batch_size=None,
                                         num_workers=workers)
    yield from loader  # the DataLoader round-robins over its workers, so batches keep their order


class _IndexedBatches(torch.utils.data.IterableDataset):
    """Batches ``[images[i] for i in idx]`` for each ``idx`` of ``index_list``, split across DataLoader workers
    (worker ``k`` of ``n`` decodes batches ``k, k + n, ...``), for the JPEG-decoding paper profile."""

    def __init__(self, images, index_list):
        self.images, self.index_list = images, index_list

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, n = (0, 1) if info is None else (info.id, info.num_workers)
        for j in range(k, len(self.index_list), n):
            yield _train.gather(self.images, self.index_list[j])


def train_descriptors(net: nn.Module, images, *, epochs: float, batch_size: int, lr: float = 1e-3,
                      dve: bool = True, gamma: float = 0.5, crop: int = 0, warp: dict | None = None,
                      lr_milestones: Sequence[float] = (0.7, 0.9), temperature: float = 1.0,
                      chunk: int | None = None, seed: int = 0, device: str | torch.device = "auto",
                      workers: int = 0, progress: bool = False, desc: str = "descriptors") -> list[float]:
    """Train ``net`` without labels on random warp pairs of ``images`` (Adam with AMSGrad, as in DVE's code).

    Each step draws ``batch_size`` images, makes a :func:`warp_pair` of each, runs both halves through ``net`` in
    one batch and minimises :func:`dve_loss` (auxiliary image: the next one in the batch) or, with ``dve=False``,
    :func:`dense_equivariance_loss`. The learning rate drops 10x at the fractions ``lr_milestones`` of training.

    Args:
        images: ``(N, 3, H, W)`` tensor in [0, 1], or a sequence of ``(3, H, W)`` tensors (decoded on access).
        epochs: passes over ``images`` (may be fractional); steps = ``round(epochs * N / batch_size)``.
        warp: keyword arguments of :func:`warp_pair` (``rotation``, ``scale``, ``translation``, ``tps``,
            ``control``, ``color_jitter``).
        seed: fixes the batch order, the warps and the jitter.

    Returns:
        The loss of every step.
    """
    if batch_size < 2 and dve:
        raise ValueError(f"DVE needs batch_size >= 2 (the auxiliary image is another image of the batch), got "
                         f"{batch_size}")
    if batch_size < 1 or batch_size > len(images):
        raise ValueError(f"batch_size must be in [1, {len(images)}], got {batch_size}")
    steps = int(round(epochs * len(images) / batch_size))
    if steps < 1:
        raise ValueError(f"epochs={epochs} gives no training step for {len(images)} images in batches of "
                         f"{batch_size}")
    dev = resolve_device(device)
    net.to(dev).train()
    gen = torch.Generator().manual_seed(seed)
    stride = getattr(net, "stride", 1)
    warp = dict(warp or {})

    def batch_loss(x):
        x1, x2, g = warp_pair(x.to(dev, non_blocking=True), generator=gen, stride=stride, crop=crop, **warp)
        f = net(torch.cat([x1, x2]))
        f1, f2 = f[:len(x1)], f[len(x1):]
        if dve:
            return dve_loss(f1, f2, f1.roll(-1, 0), g, gamma=gamma, stride=stride, temperature=temperature,
                            chunk=chunk)
        return dense_equivariance_loss(f1, f2, g, gamma=gamma, stride=stride, temperature=temperature, chunk=chunk)

    return _adam_steps(net.parameters(), _batch_stream(images, batch_size, steps, gen, workers), batch_loss,
                       steps=steps, lr=lr, lr_milestones=lr_milestones, desc=desc, progress=progress)


def _adam_steps(params, batches, batch_loss, *, steps: int, lr: float, lr_milestones: Sequence[float],
                weight_decay: float = 0.0, desc: str, progress: bool) -> list[float]:
    """The step loop of :func:`train_descriptors` and :func:`fit_regressor` (DVE's recipe): Adam with AMSGrad, the
    learning rate divided by 10 at the fractions ``lr_milestones`` of the ``steps`` steps, one step on
    ``batch_loss(batch)`` for each of the ``steps`` items of ``batches``. Returns the loss of every step."""
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, amsgrad=True)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _train.milestones(lr_milestones, steps), gamma=0.1)
    losses: list[float] = []
    bar = tqdm(batches, total=steps, desc=desc, disable=not progress, leave=False)
    for batch in bar:
        loss = batch_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.3f}")
    return losses


def extract_descriptors(net: nn.Module, images, *, crop: int = 0, batch_size: int = 128,
                        device: str | torch.device = "auto") -> torch.Tensor:
    """Frozen descriptors ``(N, C, h, w)`` (eval mode, float32, on the CPU; :func:`vklib.train.infer`) of
    ``images`` ``(N, 3, H, W)`` (or a sequence of ``(3, H, W)``), after removing ``crop`` border pixels."""
    return _train.infer(net, images, fn=lambda m, x: m(crop_border(x, crop)).float(), batch_size=batch_size,
                        device=device)


@torch.no_grad()
def reset_bn_stats(net: nn.Module, images, *, crop: int = 0, batch_size: int = 128,
                   device: str | torch.device = "auto") -> nn.Module:
    """Recompute every BatchNorm's running statistics from ``images`` (weights untouched): the average over the
    batches of their means and variances (exact in one batch). Used for the untrained-network baseline, whose
    initial statistics (0, 1) fit no data."""
    dev = resolve_device(device)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was = net.training
    net.train().to(dev)
    for idx in _train.batches(len(images), batch_size):
        net(crop_border(_train.gather(images, idx), crop).to(dev))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    net.train(was)
    return net


# ----------------------------------------------------------------------------------------------- evaluation
def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Expected normalised ``(x, y)`` position under ``softmax`` over the spatial cells: ``(B, K, h, w)`` ->
    ``(B, K, 2)`` (cell centres at ``(2 j + 1) / w - 1``)."""
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, K, h, w), got shape {tuple(logits.shape)}")
    B, K, h, w = logits.shape
    p = torch.softmax(logits.flatten(2), dim=-1)  # (B, K, h*w)
    pos = _data.to_normalized(cell_centres(h, w, 1, logits.device, logits.dtype), (h, w))  # (h*w, 2)
    return p @ pos


class LandmarkRegressor(nn.Module):
    """DVE's landmark regressor on frozen descriptors (``IntermediateKeypointPredictor``).

    For each of ``n_landmarks`` targets, ``n_intermediate`` learned descriptor templates are pegged onto the image
    by a spatial soft-argmax of ``softargmax_mul * <template, Phi_v>``; a linear map of those intermediate points
    gives the landmark.

    Shapes: ``(B, C, h, w)`` -> ``(landmarks (B, L, 2), intermediate (B, L, I, 2))``, normalised coordinates.
    """

    def __init__(self, descriptor_dim: int, n_landmarks: int = 5, n_intermediate: int = 50,
                 softargmax_mul: float = 100.0, seed: int | None = None):
        super().__init__()
        if min(descriptor_dim, n_landmarks, n_intermediate) < 1:
            raise ValueError("descriptor_dim, n_landmarks and n_intermediate must be >= 1")
        self.n_landmarks, self.n_intermediate, self.softargmax_mul = n_landmarks, n_intermediate, softargmax_mul
        g = None if seed is None else torch.Generator().manual_seed(seed)
        self.templates = nn.Parameter(torch.randn(descriptor_dim, n_landmarks * n_intermediate, generator=g))
        bound = 1 / math.sqrt(2 * n_intermediate)  # nn.Linear's default initialisation
        self.weight = nn.Parameter((torch.rand(n_landmarks, 2 * n_intermediate, 2, generator=g) * 2 - 1) * bound)
        self.bias = nn.Parameter(torch.zeros(n_landmarks, 2))

    def forward(self, features: torch.Tensor):
        B, C, h, w = features.shape
        logits = torch.einsum("ck,bchw->bkhw", self.templates, features) * self.softargmax_mul
        inter = soft_argmax(logits).reshape(B, self.n_landmarks, self.n_intermediate, 2)
        pred = torch.einsum("bli,lio->blo", inter.flatten(2), self.weight) + self.bias
        return pred, inter


def fit_regressor(features: torch.Tensor, landmarks: torch.Tensor, *, epochs: float = 300, batch_size: int = 32,
                  lr: float = 1e-3, weight_decay: float = 5e-4, lr_milestones: Sequence[float] = (1 / 3, 5 / 6),
                  n_intermediate: int = 50, softargmax_mul: float = 100.0, seed: int = 0,
                  device: str | torch.device = "auto", progress: bool = False):
    """Learn a :class:`LandmarkRegressor` on frozen descriptors with the smooth-L1 loss on normalised landmarks
    (Adam with AMSGrad; DVE's recipe: lr 1e-3, weight decay 5e-4, drops at 1/3 and 5/6 of training).

    Args:
        features: ``(N, C, h, w)``; landmarks: ``(N, L, 2)`` normalised to the descriptor map's frame.

    Returns:
        ``(regressor, losses)``: the trained regressor (eval mode, on the CPU) and the loss of every step.
    """
    if features.ndim != 4 or landmarks.ndim != 3 or len(features) != len(landmarks) or landmarks.shape[-1] != 2:
        raise ValueError(f"need features (N, C, h, w) and landmarks (N, L, 2) with one N, got "
                         f"{tuple(features.shape)} and {tuple(landmarks.shape)}")
    n = len(features)
    batch_size = min(batch_size, n)
    steps = int(round(epochs * n / batch_size))
    if steps < 1:
        raise ValueError(f"epochs={epochs} gives no training step")
    dev = resolve_device(device)
    reg = LandmarkRegressor(features.shape[1], landmarks.shape[1], n_intermediate, softargmax_mul, seed=seed).to(dev)
    batches = _batch_indices(n, batch_size, steps, torch.Generator().manual_seed(seed))
    losses = _adam_steps(reg.parameters(), batches,
                         lambda idx: F.smooth_l1_loss(reg(features[idx].to(dev))[0], landmarks[idx].to(dev)),
                         steps=steps, lr=lr, lr_milestones=lr_milestones, weight_decay=weight_decay,
                         desc="regressor", progress=progress)
    return reg.eval().cpu(), losses


def _batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` index batches of ``batch_size`` over ``range(n)``: the full batches of :func:`vklib.train.batches`
    of a new seeded permutation for every pass (a last, smaller batch is left out)."""
    made = 0
    while made < steps:
        for idx in _train.batches(n, batch_size, shuffle=True, generator=generator):
            if made == steps:
                return
            if len(idx) == batch_size:
                yield idx
                made += 1


def predict_landmarks(regressor: LandmarkRegressor, features: torch.Tensor, *, batch_size: int = 256,
                      device: str | torch.device = "auto") -> torch.Tensor:
    """Normalised landmarks ``(N, L, 2)`` (on the CPU) predicted from descriptors ``(N, C, h, w)``: the first output
    of the regressor, batched by :func:`vklib.train.infer`."""
    return _train.infer(regressor, features, fn=lambda m, f: m(f)[0], batch_size=batch_size, device=device)


def iod_error(pred: torch.Tensor, target: torch.Tensor, *, eyes: tuple[int, int] = (0, 1),
              reduce: bool = True) -> torch.Tensor | float:
    """Landmark error as a fraction of the inter-ocular distance: per image the mean over landmarks of
    ``||pred - target|| / ||target[eyes[0]] - target[eyes[1]]||``, averaged over images (0.05 = 5% of the IOD).

    ``pred``, ``target`` ``(N, L, 2)`` in one frame (pixels or normalised with a square image). Returns a float,
    or the ``(N,)`` per-image errors with ``reduce=False``.
    """
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred and target must be (N, L, 2) of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    iod = (target[:, eyes[0]] - target[:, eyes[1]]).norm(dim=-1)
    if bool((iod <= 0).any()):
        raise ValueError("a target has coinciding eye landmarks (zero inter-ocular distance)")
    err = (pred - target).norm(dim=-1).mean(dim=1) / iod
    return err.mean().item() if reduce else err


def _sample_descriptors(features: torch.Tensor, points: torch.Tensor, stride: int) -> torch.Tensor:
    """Bilinearly sampled descriptors ``(N, K, C)`` of ``features`` ``(N, C, h, w)`` at input-pixel points
    ``(N, K, 2)``."""
    h, w = features.shape[-2:]
    cells = (points + 0.5) / stride - 0.5  # descriptor-cell coordinates
    grid = _data.to_normalized(cells, (h, w)).unsqueeze(2)  # (N, K, 1, 2)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)[..., 0] \
        .transpose(1, 2)


def match_points(source: torch.Tensor, points: torch.Tensor, targets: torch.Tensor, *, stride: int = 1) -> torch.Tensor:
    """Best matches of ``points`` of one image in other images, by the largest descriptor inner product.

    Args:
        source: ``(C, h, w)`` or ``(N, C, h, w)`` descriptors of the image(s) holding the points.
        points: ``(K, 2)`` or ``(N, K, 2)`` input-pixel positions in the source image(s).
        targets: ``(N, C, h, w)`` descriptors to search (source ``n`` matched into target ``n``; a single source
            is matched into every target).

    Returns:
        ``(N, K, 2)`` input-pixel centres of the best-matching target cells.
    """
    if source.ndim == 3:
        source, points = source.unsqueeze(0), points.unsqueeze(0)
    if targets.ndim != 4 or source.shape[1:] != targets.shape[1:] or points.ndim != 3:
        raise ValueError(f"need source (N or 1, C, h, w), points (N or 1, K, 2), targets (N, C, h, w) with one "
                         f"(C, h, w); got {tuple(source.shape)}, {tuple(points.shape)}, {tuple(targets.shape)}")
    N, C, h, w = targets.shape
    query = _sample_descriptors(source, points, stride).expand(N, -1, -1)  # (N, K, C)
    best = torch.bmm(query, targets.flatten(2)).argmax(dim=-1)  # (N, K)
    return cell_centres(h, w, stride, targets.device, targets.dtype)[best]


def cross_instance_error(features: torch.Tensor, landmarks: torch.Tensor, *, stride: int = 1,
                         eyes: tuple[int, int] = (0, 1)) -> float:
    """Cross-identity matching error (a fraction of the inter-ocular distance, :func:`iod_error`): the annotated
    landmarks of image ``n`` are matched by :func:`match_points` into image ``n + 1`` (cyclically) and compared with
    that image's annotations.

    ``features`` ``(N, C, h, w)``, ``landmarks`` ``(N, L, 2)`` input pixels.
    """
    if len(features) < 2 or len(features) != len(landmarks):
        raise ValueError("need at least two images, with one set of landmarks per image")
    matched = match_points(features, landmarks, features.roll(-1, 0), stride=stride)
    return iod_error(matched, landmarks.roll(-1, 0), eyes=eyes)


@torch.no_grad()
def pca_rgb(features: torch.Tensor, *, low: float = 0.01, high: float = 0.99) -> torch.Tensor:
    """Descriptors ``(N, C, h, w)`` -> colours ``(N, 3, h, w)`` in [0, 1]: the first three principal components
    over all cells of all images, each stretched between its ``low`` and ``high`` quantiles (signs fixed so
    that the largest loading of each component is positive, for reproducible colours)."""
    if features.ndim != 4:
        raise ValueError(f"features must be (N, C, h, w), got shape {tuple(features.shape)}")
    N, C, h, w = features.shape
    x = features.permute(0, 2, 3, 1).reshape(-1, C).double()
    x = x - x.mean(0)
    _, vecs = torch.linalg.eigh(x.T @ x)
    vecs = vecs.flip(-1)[:, :3]
    idx = vecs.abs().argmax(0)
    vecs = vecs * torch.sign(vecs[idx, torch.arange(vecs.shape[1])])
    proj = x @ vecs
    if proj.shape[1] < 3:
        proj = torch.cat([proj, proj.new_zeros(len(proj), 3 - proj.shape[1])], 1)
    lo, hi = torch.quantile(proj, low, dim=0), torch.quantile(proj, high, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return rgb.float().reshape(N, h, w, 3).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------- full datasets
class FaceImages(_data.LazyImages):
    """Face images decoded on access (a :class:`vklib.data.LazyImages`): each file is cropped to ``box``
    ``(left, top, right, bottom)`` in pixels and resized to ``size x size``, giving ``(3, size, size)`` float
    tensors in [0, 1]."""

    def __init__(self, paths: Sequence[Path], box: tuple[int, int, int, int], size: int):
        super().__init__(paths, "RGB", size)
        self.box = box

    def __getitem__(self, i):
        if isinstance(i, slice):
            return FaceImages(self.paths[i], self.box, self.size)
        from PIL import Image
        import numpy as np
        with Image.open(self.paths[i]) as im:
            a = np.asarray(im.convert("RGB").crop(self.box).resize((self.size, self.size), Image.BILINEAR))
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


#: DVE's crop of a 178 x 218 aligned CelebA image (``left, top, right, bottom``): the 178 x 178 square 30 rows from
#: the top ("move head up a bit" in the official loaders ``CelebAPrunedAligned_MAFLVal`` and ``MAFLAligned``).
CELEBA_BOX = (0, 30, 178, 208)
_FIVE_POINTS = ["left eye", "right eye", "nose", "left mouth", "right mouth"]


def _first(root: Path, *candidates: str) -> Path:
    for c in candidates:
        if (root / c).exists():
            return root / c
    raise FileNotFoundError(f"none of {', '.join(candidates)} under {root}")


def _celeba_index(root: Path):
    """``(image folder, {file: (5, 2) landmarks}, {file: partition})`` of CelebA under ``root / "celeba"``.

    Either the layout of the official release (and of DVE's ``celeba.tar.gz``): ``Img/img_align_celeba/`` (or DVE's
    ``Img/img_align_celeba_hq/``), ``Anno/list_landmarks_align_celeba.txt``, ``Eval/list_eval_partition.txt``; or
    torchvision's, with the three at the top of ``celeba/``. The landmark file has a count line, a header line, then
    ``<file> lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x
    rightmouth_y`` in pixels of the 178 x 218 aligned image; the partition file has ``<file> <0|1|2>`` (train, val,
    test). Without a partition file every image counts as training.
    """
    folder = root / "celeba"
    images = _first(folder, "img_align_celeba", "Img/img_align_celeba", "Img/img_align_celeba_hq")
    marks = _first(folder, "list_landmarks_align_celeba.txt", "Anno/list_landmarks_align_celeba.txt")
    files, values = [], []
    for ln in marks.read_text().splitlines()[2:]:
        parts = ln.split()
        if len(parts) == 11:
            files.append(parts[0])
            values.append([float(v) for v in parts[1:]])
    lms = torch.tensor(values).view(-1, 5, 2) if values else torch.zeros(0, 5, 2)
    pts = dict(zip(files, lms))
    try:
        listing = _first(folder, "list_eval_partition.txt", "Eval/list_eval_partition.txt")
    except FileNotFoundError:
        return images, pts, {f: 0 for f in pts}
    part = {}
    for ln in listing.read_text().splitlines():
        parts = ln.split()
        if len(parts) == 2:
            part[parts[0]] = int(parts[1])
    return images, pts, part


def _mafl_list(root: Path, split: str) -> list[str]:
    """The CelebA file names of MAFL's ``celeba/MAFL/training.txt`` or ``testing.txt`` (TCDCN's release: one file
    name per line, further columns ignored)."""
    path = _first(root / "celeba", f"MAFL/{'training' if split == 'train' else 'testing'}.txt")
    return [Path(ln.split()[0].replace("\\", "/")).name for ln in path.read_text().splitlines() if ln.strip()]


def _celeba_set(name: str, split: str, files: list[str], images: Path, pts: dict, size: int | None):
    """Faces cropped to :data:`CELEBA_BOX` and resized to ``size`` (default 100), with their landmarks moved into
    that frame (``(p - box corner) * size / 178``, as DVE's loaders do)."""
    size = size or 100
    lo_x, lo_y, hi_x, _ = CELEBA_BOX
    lms = torch.stack([pts[f] for f in files]) if files else torch.zeros(0, 5, 2)
    lms = (lms - lms.new_tensor([lo_x, lo_y])) * (size / (hi_x - lo_x))
    return _data.ImageSet(name, split, FaceImages([images / f for f in files], CELEBA_BOX, size),
                          None, None, {"landmarks": lms, "files": files, "_landmark_names": list(_FIVE_POINTS)},
                          "full")


def _celeba_full(root: Path, split: str, download: bool, size):
    """CelebA's ``split`` partition without the 20,000 MAFL faces (both of MAFL's lists, as in DVE's
    ``CelebAPrunedAligned_MAFLVal``), so that nothing MAFL evaluates on is seen while learning descriptors."""
    images, pts, part = _celeba_index(root)
    want = {"train": 0, "val": 1, "test": 2}.get(split)
    held_out = set()
    for mafl_split in ("train", "test"):
        try:
            held_out.update(_mafl_list(root, mafl_split))
        except FileNotFoundError:
            warnings.warn(f"celeba: no MAFL/{'training' if mafl_split == 'train' else 'testing'}.txt under "
                          f"{root / 'celeba'}; those MAFL faces cannot be left out of CelebA", stacklevel=3)
    files = sorted(f for f in pts if (want is None or part.get(f) == want) and f not in held_out)
    if not files:
        raise FileNotFoundError(f"no CelebA images for split {split!r} under {images}")
    return _celeba_set("celeba", split, files, images, pts, size)


def _mafl_full(root: Path, split: str, download: bool, size):
    """MAFL (``celeba/MAFL/training.txt``: 19,000 faces, ``testing.txt``: 1,000), CelebA's images and aligned
    landmarks in the crop of ``celeba`` (DVE's ``MAFLAligned``)."""
    images, pts, _ = _celeba_index(root)
    files = _mafl_list(root, split)
    missing = [f for f in files if f not in pts]
    if missing:
        raise _data.DataError(f"mafl: {len(missing)} listed images have no CelebA landmarks (e.g. {missing[0]})")
    return _celeba_set("mafl", split, files, images, pts, size)


def _aflw_folder(root: Path) -> Path:
    """``<root>/aflw_mtfl``, or ``<root>/aflw-mtfl`` as DVE's ``aflw-mtfl.tar.gz`` unpacks."""
    for name in ("aflw_mtfl", "aflw-mtfl"):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"no aflw_mtfl/ (or aflw-mtfl/) folder under {root}")


def _mtfl_test(folder: Path) -> tuple[list[Path], list[list[float]]]:
    """MTFL's AFLW test faces: ``MTFL/testing.txt`` lines ``AFLW/<n>-image<id>.jpg x1..x5 y1..y5 gender smile
    glasses pose`` (1-based pixels of the 150 x 150 crops, left eye, right eye, nose, left and right mouth corner);
    returns the image paths and the rows ``x1, y1, ..., x5, y5``."""
    listing = folder / "MTFL" / "testing.txt"
    paths, rows = [], []
    for ln in listing.read_text().splitlines():
        parts = ln.split()
        if not parts:
            continue
        if len(parts) < 11:
            raise _data.DataError(f"aflw_mtfl: {listing}: expected a path and 10 coordinates, got {ln!r}")
        v = [float(t) for t in parts[1:11]]
        paths.append(folder / "MTFL" / parts[0].replace("\\", "/"))
        rows.append([c for k in range(5) for c in (v[k], v[k + 5])])
    return paths, rows


def _aflw_train(folder: Path) -> tuple[list[Path], list[list[float]]]:
    """The 10,122 AFLW training crops of Thewlis et al. (ICCV 2017): the rows of
    ``aflw_cropped/facedata_cropped.csv`` (comma separated, one header line) whose ``set`` is 1; ``crop_file`` is the
    crop relative to ``aflw_cropped/``, ``image_file`` the original AFLW image, and columns 5 to 14 hold
    ``x1, y1, ..., x5, y5`` (1-based pixels of the 150 x 150 crop, in MTFL's landmark order), as DVE's ``AFLW_MTFL``
    reads them. Raises a :class:`vklib.data.DataError` when a training face's image is one of MTFL's test faces."""
    import csv
    base = folder / "aflw_cropped"
    table = base / "facedata_cropped.csv"
    with open(table, newline="", encoding="utf-8-sig") as f:  # a BOM, if any, is not part of a name
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ("image_file", "set", "crop_file") if c not in header]
        if missing or len(header) < 14:
            raise _data.DataError(f"aflw_mtfl: {table} has no column(s) {', '.join(missing) or 'x1..y5'} "
                                  f"(header {header})")
        i_img, i_set, i_crop = (header.index(c) for c in ("image_file", "set", "crop_file"))
        paths, rows, originals = [], [], []
        for row in reader:
            if not row or float(row[i_set]) != 1:
                continue
            paths.append(base / row[i_crop].strip().replace("\\", "/"))
            rows.append([float(v) for v in row[4:14]])
            originals.append(row[i_img].strip())
    test_list = folder / "MTFL" / "testing.txt"
    if test_list.exists():
        tested = {p.name.split("-")[-1] for p in _mtfl_test(folder)[0]}
        clash = [f for f in originals if f in tested]
        if clash:
            raise _data.DataError(f"aflw_mtfl: {len(clash)} training faces of {table} come from MTFL test images "
                                  f"(e.g. {clash[0]})")
    return paths, rows


def _aflw_full(root: Path, split: str, download: bool, size):
    """AFLW-MTFL as DVE's ``AFLW_MTFL`` reads it from ``aflw-mtfl.tar.gz``: training faces from
    ``aflw_cropped/facedata_cropped.csv`` (:func:`_aflw_train`), test faces from ``MTFL/testing.txt``
    (:func:`_mtfl_test`). Whole crops are resized to ``size x size`` (default 100); the 1-based landmarks become
    0-based pixels scaled with them, ``(p - 1) * size / side`` (each image's side read from its header)."""
    folder = _aflw_folder(root)
    paths, rows = _aflw_train(folder) if split == "train" else _mtfl_test(folder)
    if not paths:
        raise FileNotFoundError(f"aflw_mtfl: no {split} faces listed under {folder}")
    size = size or 100
    from PIL import Image
    lms = torch.tensor(rows).view(-1, 5, 2) - 1  # MATLAB's 1-based pixels -> pixel centres at integers
    scale = torch.empty(len(paths), 1, 2)
    for k, p in enumerate(paths):
        with Image.open(p) as im:  # the header only
            scale[k, 0] = torch.tensor([size / im.size[0], size / im.size[1]])
    return _data.ImageSet("aflw_mtfl", split, _data.LazyImages(paths, "RGB", size), None, None,
                          {"landmarks": lms * scale, "files": [str(p) for p in paths],
                           "_landmark_names": list(_FIVE_POINTS)}, "full")
