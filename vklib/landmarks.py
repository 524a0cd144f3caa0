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
    losses: :func:`correspondence_cost`, :func:`dense_equivariance_loss`, :func:`exchange`, :func:`dve_loss`,
    :func:`regression_loss`;
    network: :class:`SmallNet`, :func:`extract_descriptors`, :func:`reset_bn_stats`;
    evaluation: :func:`soft_argmax`, :class:`LandmarkRegressor`, :func:`predict_landmarks`, :func:`iod_error`,
    :func:`match_points`, :func:`cross_instance_error`; pictures: :func:`pca_rgb`; settings: :func:`check_config`.

The training loops (descriptors, fine-tuning, the landmark regressor) are written out in notebook 04, with its
``PROFILES``. The training pairs (random thin-plate-spline warps with their dense correspondence, DVE's ``Warper``
and colour augmentation), the readers of the full-size ``celeba``, ``mafl`` and ``aflw_mtfl`` datasets and the
batch streams that decode them live in :mod:`vklib.faces`, as the released code keeps them in its data loaders.
The paper's numbers (landmark errors as fractions of the inter-ocular distance) are rows of
``vklib/paper_numbers.csv``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import data as _data
from . import train as _train
from .utils import resolve_device

__all__ = [
    "LandmarkRegressor", "SmallNet", "cell_centres", "check_config",
    "correspondence_cost", "crop_border", "cross_instance_error", "dense_equivariance_loss", "dve_loss", "exchange",
    "extract_descriptors", "iod_error", "match_points", "pca_rgb", "predict_landmarks", "regression_loss",
    "reset_bn_stats", "soft_argmax",
]


# ----------------------------------------------------------------------------------------------- settings
def check_config(cfg: dict) -> dict:
    """Validate notebook 04's resolved profile (``utils.resolve_profile(PROFILES, ...)``) and return it with ``dims``
    as a list of ints and ``key_dim`` set (``None`` means the first of ``dims``); a bad value raises a
    ``ValueError`` naming the setting and what is allowed."""
    cfg = dict(cfg)
    dims = [cfg["dims"]] if isinstance(cfg["dims"], int) else cfg["dims"]
    if (isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__") or not dims
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims)):
        raise ValueError(f"dims must be a positive int or a non-empty list of them (e.g. [16] or [16, 32, 64]), "
                         f"got {cfg['dims']!r}")
    cfg["dims"] = list(dims)
    cfg["key_dim"] = dims[0] if cfg.get("key_dim") is None else cfg["key_dim"]
    if cfg["key_dim"] not in dims:
        raise ValueError(f"key_dim must be one of dims {dims}, got {cfg['key_dim']!r}")
    for key in ("epochs", "lr", "reg_epochs", "reg_lr", "gamma", "reg_alpha"):
        if not isinstance(cfg[key], (int, float)) or isinstance(cfg[key], bool) or not cfg[key] > 0:
            raise ValueError(f"{key} must be a number > 0, got {cfg[key]!r}")
    if not isinstance(cfg["finetune_epochs"], (int, float)) or cfg["finetune_epochs"] < 0:
        raise ValueError(f"finetune_epochs must be a number >= 0, got {cfg['finetune_epochs']!r}")
    for key, low in (("batch_size", 2), ("reg_batch_size", 1), ("image_size", 8), ("seeds", 1), ("sweep_seeds", 1)):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < low:
            raise ValueError(f"{key} must be an int >= {low}, got {cfg[key]!r}")
    if not isinstance(cfg["crop"], int) or not 0 <= 2 * cfg["crop"] < cfg["image_size"] - 4:
        raise ValueError(f"crop must be an int in [0, {(cfg['image_size'] - 5) // 2}] for image_size "
                         f"{cfg['image_size']}, got {cfg['crop']!r}")
    norm = cfg["normalize"]
    if norm is not None and not (isinstance(norm, (int, float)) and not isinstance(norm, bool) and norm >= 0):
        raise ValueError(f"normalize must be 0 or None (raw descriptors) or a scale > 0, got {norm!r}")
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
    """The descriptor network of Thewlis et al. (NeurIPS 2017) used by DVE (``smallnet.py``): five
    conv-BN-LeakyReLU(0.2) blocks (5x5, max-pool 2, 5x5, 5x5 dilation 2, 3x3 dilation 4, 3x3 dilation 2), then a
    plain 1x1 convolution to ``descriptor_dim`` (no BN, no activation); Xavier-normal weights, zero biases.

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
            head = nn.Conv2d(widths[-1], descriptor_dim, 1)  # DVE's conv6: a plain 1x1 convolution
            for m in [*blocks[0], *[m for b in blocks[1:] for m in b], head]:
                if isinstance(m, nn.Conv2d):  # DVE's initialisation: Xavier-normal weights, zero biases
                    nn.init.xavier_normal_(m.weight)
                    nn.init.zeros_(m.bias)
            return blocks[0], nn.Sequential(*blocks[1:], head)

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


def regression_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 10.0) -> torch.Tensor:
    """DVE's ``regression_loss``: the smooth-L1 loss of ``alpha`` times the normalised landmarks (``alpha`` = 10 in
    the released regressor configurations, which puts the loss's quadratic zone at 0.1 normalised units)."""
    return F.smooth_l1_loss(pred * alpha, target * alpha)


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
