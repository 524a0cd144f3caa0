"""Kernels for blind deconvolution with deep image and kernel priors (notebook 03; DIKP: Wang, Wang, Li and Bilen,
2019, arXiv 1910.08386). The optimisation loops (DIP, SelfDeblur, DIKP, the TV blind baseline) are written out in
the notebook; this module holds what they are built from.

The forward model is a *valid* convolution plus noise::

    y = k * x + n,      x: (H + kh - 1, W + kw - 1),  k: (kh, kw) >= 0 summing to one,  y: (H, W)

so every pixel of ``y`` sees only pixels of ``x`` (no boundary assumption).

* **Image prior** (deep image prior, Ulyanov et al. 2018): :class:`ImagePrior`, an encoder-decoder with skip
  connections and a sigmoid output fed fixed noise.
* **Kernel prior**: :class:`KernelPrior`, SelfDeblur's kernel generator (Ren et al., CVPR 2020,
  github.com/csdwren/SelfDeblur ``networks/fcn.py``): an MLP ``noise -> 1000 -> kh*kw`` with ReLU6 and a softmax.
* **Terms**: :func:`data_term` (MSE), :func:`ssim_loss` (SelfDeblur's ``1 - SSIM`` after 1000 steps), and the
  traditional learning-free terms DIKP combines with the deep priors: :func:`total_variation` on the image and
  :func:`kernel_sparsity` on the kernel; :func:`normalise_kernel` (Perrone and Favaro's projection) and
  :func:`centre_kernel` (kernel centring), two more traditional ideas.

The networks hold N independent problems as one grouped network (grouped convolutions, batched matrix products).
:func:`align_levin` is Levin et al.'s ``comp_upto_shift``; :func:`psnr` and :func:`ssim` score its aligned windows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DeconvProblem", "GroupedConv2d", "ImagePrior", "KernelPrior", "align_levin", "blur", "center_crop",
    "centre_kernel", "concat_problems", "data_term", "kernel_error", "kernel_sparsity", "load_problem", "make_problem",
    "normalise_kernel", "pad_kernel", "psnr", "richardson_lucy", "ssim", "ssim_loss", "total_variation", "wiener",
]


# ------------------------------------------------------------------------------------------------------ forward model
def _as_kernels(kernel: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """``(k, k)``, ``(1, k, k)`` or ``(N, 1, k, k)`` -> ``(N or 1, 1, kh, kw)``."""
    if not torch.is_tensor(kernel):
        raise TypeError(f"kernel must be a tensor, got {type(kernel).__name__}")
    if kernel.ndim == 2:
        kernel = kernel[None, None]
    elif kernel.ndim == 3:
        kernel = kernel[:, None] if kernel.shape[0] != 1 else kernel[None]
    if kernel.ndim != 4 or kernel.shape[1] != 1:
        raise ValueError(f"kernel must be (kh, kw), (1, kh, kw) or (N, 1, kh, kw), got shape {tuple(kernel.shape)}")
    if n is not None and kernel.shape[0] not in (1, n):
        raise ValueError(f"kernel batch {kernel.shape[0]} does not match the image batch {n}")
    return kernel


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Valid 2-D convolution (a true convolution, i.e. the kernel flipped, as ``scipy.signal.convolve2d(.., 'valid')``),
    computed by FFT (the camera-shake kernels are up to 27 x 27: a direct convolution would cost kh * kw per pixel).

    Args:
        x: ``(N, C, Hx, Wx)`` latent images.
        kernel: ``(kh, kw)`` shared by all images, or ``(N, 1, kh, kw)`` one per image (applied to every channel).

    Returns:
        ``(N, C, Hx - kh + 1, Wx - kw + 1)``.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    k = _as_kernels(kernel, n).to(x.dtype)
    kh, kw = k.shape[-2:]
    if kh > h or kw > w:
        raise ValueError(f"kernel {kh}x{kw} is larger than the image {h}x{w}")
    # the circular convolution of size (h, w) equals the linear one on the valid window [kh-1:, kw-1:]
    full = torch.fft.irfft2(torch.fft.rfft2(x) * torch.fft.rfft2(k, s=(h, w)), s=(h, w))
    return full[..., kh - 1:, kw - 1:]


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad ``(N, 1, k, k)`` kernels to ``(N, 1, size, size)``, centred (``size - k`` must be even)."""
    k = _as_kernels(kernel)
    kh, kw = k.shape[-2:]
    if size < max(kh, kw) or (size - kh) % 2 or (size - kw) % 2:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {size}x{size}: size must be >= the kernel and differ "
                         f"from it by an even number")
    ph, pw = (size - kh) // 2, (size - kw) // 2
    return F.pad(k, (pw, pw, ph, ph))


def center_crop(x: torch.Tensor, h: int, w: int | None = None) -> torch.Tensor:
    """The central ``h x w`` window of ``(..., H, W)`` (offset ``(H - h) // 2``)."""
    w = h if w is None else w
    H, W = x.shape[-2:]
    if h > H or w > W:
        raise ValueError(f"cannot crop {h}x{w} from {H}x{W}")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


@dataclass
class DeconvProblem:
    """A batch of synthetic deconvolution problems (real images, real kernels, simulated blur and noise).

    Attributes:
        latent: ``(N, 1, H + K - 1, W + K - 1)`` sharp images, ``K`` the largest kernel size.
        sharp: ``(N, 1, H, W)`` the part of ``latent`` aligned with ``y`` (its central crop): the reference.
        y: ``(N, 1, H, W)`` blurred, noisy observations.
        kernels: ``(N, 1, K, K)`` true kernels, zero-padded (centred) to a common size.
        kernel_sizes: the true size of each kernel.
        names: ``"image/kernel"`` per problem.
    """

    latent: torch.Tensor
    sharp: torch.Tensor
    y: torch.Tensor
    kernels: torch.Tensor
    kernel_sizes: list[int]
    names: list[str]
    noise_std: float = 0.0

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index) -> "DeconvProblem":
        """Problems ``index`` (a list of ints)."""
        index = list(index)
        return DeconvProblem(self.latent[index], self.sharp[index], self.y[index], self.kernels[index],
                             [self.kernel_sizes[i] for i in index], [self.names[i] for i in index], self.noise_std)


def make_problem(images: torch.Tensor, kernels: list[torch.Tensor], *, crop: int | None = None,
                 noise_std: float = 0.01, generator: torch.Generator | None = None,
                 names: list[str] | None = None) -> DeconvProblem:
    """Every image blurred by every kernel: ``N = len(images) * len(kernels)`` problems, image-major.

    Args:
        images: ``(M, 1, S, S)`` sharp grey images in [0, 1].
        kernels: ``L`` kernels, each ``(1, k, k)`` or ``(k, k)`` with odd ``k``, non-negative, summing to one.
        crop: side of the observation ``y`` (a central crop); ``None``: the largest that fits, ``S - K + 1``.
        noise_std: standard deviation of the white Gaussian noise added to the blur (0.01 = "1% noise").
        generator: seeds the noise.
        names: optional ``"image/kernel"`` names.

    Returns:
        A :class:`DeconvProblem`; ``y = blur(latent, kernel) + noise`` exactly (not clipped).
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (M, 1, S, S) grey images, got shape {tuple(images.shape)}")
    if not kernels:
        raise ValueError("need at least one kernel")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    ks = [_as_kernels(k)[0] for k in kernels]
    sizes = [k.shape[-1] for k in ks]
    if any(k.shape[-1] != k.shape[-2] or k.shape[-1] % 2 == 0 for k in ks):
        raise ValueError(f"kernels must be square with an odd side, got {[tuple(k.shape[-2:]) for k in ks]}")
    K = max(sizes)
    side = min(images.shape[-2:])
    crop = side - K + 1 if crop is None else crop
    if crop < 1 or crop + K - 1 > side:
        raise ValueError(f"crop={crop} needs images of at least {crop + K - 1} pixels (kernel {K}); they have {side}")
    latent = center_crop(images.float(), crop + K - 1)
    m, l = len(images), len(ks)
    latent = latent.repeat_interleave(l, dim=0)
    kern = torch.stack([pad_kernel(k[None], K)[0] for k in ks]).float().repeat(m, 1, 1, 1)
    clean = blur(latent, kern)
    noise = torch.randn(clean.shape, generator=generator) * noise_std
    return DeconvProblem(latent, center_crop(latent, crop), clean + noise, kern, sizes * m,
                         names or [f"{i}/{j}" for i in range(m) for j in range(l)], float(noise_std))


def load_problem(images, kernels, *, crop: int | None, noise_std: float, seed: int = 0,
                 data_dir=None) -> DeconvProblem:
    """:func:`make_problem` on shipped data: Set12 images and Levin et al.'s kernels picked by name.

    Args:
        images: Set12 names (``"cameraman"``, ``"house"``, ...); kernels: Levin kernel names ``"k1"`` ... ``"k8"``.
        crop, noise_std: as in :func:`make_problem`; seed: seeds the noise; data_dir: the data root.

    Returns:
        A :class:`DeconvProblem` named ``"image/kernel"``, image-major.
    """
    from . import data
    if isinstance(images, str) or isinstance(kernels, str):
        raise ValueError("images and kernels must be sequences of names, e.g. ('cameraman',) and ('k3',)")
    s12 = data.load("set12", "test", data_dir=data_dir)
    lev = data.load("levin_kernels", "test", data_dir=data_dir)
    for kind, wanted, known in (("image", images, s12.meta["names"]), ("kernel", kernels, lev.meta["names"])):
        unknown = [w for w in wanted if w not in known]
        if unknown or not wanted:
            raise ValueError(f"unknown or no {kind} name(s) {unknown}; allowed: {', '.join(known)}")
    imgs = s12.images[[s12.meta["names"].index(n) for n in images]]
    ks = [lev.images[lev.meta["names"].index(n)] for n in kernels]
    return make_problem(imgs, ks, crop=crop, noise_std=noise_std, generator=torch.Generator().manual_seed(seed),
                        names=[f"{i}/{k}" for i in images for k in kernels])


def concat_problems(problems: list[DeconvProblem]) -> DeconvProblem:
    """Problems of several :func:`load_problem` calls (e.g. one per seed) as one batch, in the order given.

    All must share the latent and kernel sizes (the same crop and the same kernel list)."""
    if not problems:
        raise ValueError("need at least one DeconvProblem")
    shapes = {(tuple(p.latent.shape[1:]), tuple(p.kernels.shape[1:])) for p in problems}
    if len(shapes) != 1:
        raise ValueError(f"problems differ in latent or kernel size: {sorted(shapes)}")
    return DeconvProblem(torch.cat([p.latent for p in problems]), torch.cat([p.sharp for p in problems]),
                         torch.cat([p.y for p in problems]), torch.cat([p.kernels for p in problems]),
                         [s for p in problems for s in p.kernel_sizes], [n for p in problems for n in p.names],
                         problems[0].noise_std)


# ------------------------------------------------------------------------------------------------------ metrics
def _shift_matrices(n_out: int, max_shift: float, step: float) -> torch.Tensor:
    """``(S, n_out, n_out + 2m)`` bilinear-interpolation matrices, ``m = ceil(max_shift)``: row ``r`` of matrix ``s``
    reads position ``r + m + shifts[s]`` of a signal padded by ``m``; ``shifts = -max_shift, ..., max_shift``."""
    m = math.ceil(max_shift)
    shifts = torch.arange(-max_shift, max_shift + step / 2, step, dtype=torch.float64)
    pos = torch.arange(n_out, dtype=torch.float64)[None] + m + shifts[:, None]  # (S, n_out)
    lo = pos.floor()
    frac = pos - lo
    mats = torch.zeros(len(shifts), n_out, n_out + 2 * m + 1, dtype=torch.float64)
    rows = torch.arange(n_out)[None].expand_as(pos)
    sidx = torch.arange(len(shifts))[:, None].expand_as(pos)
    mats[sidx, rows, lo.long()] += 1 - frac
    mats[sidx, rows, lo.long() + 1] += frac
    return mats[..., :n_out + 2 * m], shifts


def align_levin(est: torch.Tensor, ref: torch.Tensor, max_shift: float = 5.0, step: float = 0.25,
                border: int = 15) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Levin et al.'s ``comp_upto_shift``: the estimate shifted (bilinear interpolation) by the ``(dy, dx)`` in
    ``{-max_shift, ..., max_shift}`` (steps of ``step``) that minimises the sum of squared differences to the
    reference with a ``border``-pixel frame left out. The estimate is clipped to [0, 1] first.

    Args:
        est, ref: ``(N, C, H, W)`` estimates and sharp references (``border >= ceil(max_shift)``).

    Returns:
        ``aligned`` and ``ref_window``, both ``(N, C, H - 2 border, W - 2 border)``, and ``shift`` ``(N, 2)``
        (``dy, dx`` in pixels: ``aligned[i, j] = est[border + i + dy, border + j + dx]``).
    """
    if est.shape != ref.shape or est.ndim != 4:
        raise ValueError(f"est and ref must both be (N, C, H, W) of one shape, got {tuple(est.shape)} and "
                         f"{tuple(ref.shape)}")
    m = math.ceil(max_shift)
    if max_shift < 0 or step <= 0 or border < m or 2 * border >= min(est.shape[-2:]):
        raise ValueError(f"need max_shift >= 0, step > 0 and ceil(max_shift) <= border < side / 2; got max_shift="
                         f"{max_shift}, step={step}, border={border} for {tuple(est.shape[-2:])}")
    n, c, H, W = est.shape
    h, w = H - 2 * border, W - 2 * border
    e = est.detach().double().clamp(0, 1)[..., border - m:H - border + m, border - m:W - border + m]
    r = ref.detach().double()[..., border:H - border, border:W - border]
    A, shifts = _shift_matrices(h, max_shift, step)  # rows
    B, _ = _shift_matrices(w, max_shift, step)       # columns
    cols = torch.einsum("bjw,nchw->nbchj", B, e)     # (N, S, C, h + 2m, w): every column shift
    ssd = torch.stack([(torch.einsum("ih,nbchj->nbcij", A[a], cols) - r[:, None]).pow(2).sum(dim=(2, 3, 4))
                       for a in range(len(shifts))], dim=1)  # (N, S_rows, S_cols)
    best = ssd.flatten(1).argmin(dim=1)
    ia, ib = best // len(shifts), best % len(shifts)
    aligned = torch.einsum("nih,nchw,njw->ncij", A[ia], e, B[ib])
    return aligned.float(), r.float(), torch.stack([shifts[ia], shifts[ib]], dim=1).float()


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """``(N, ...)`` pairs -> ``(N,)`` PSNR in dB."""
    return 10 * torch.log10(data_range ** 2 / (a.float() - b.float()).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """``(N, 1, h, w)`` pairs -> ``(N,)`` SSIM (scikit-image, 7x7 uniform window)."""
    from skimage.metrics import structural_similarity
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 1:
        raise ValueError(f"a and b must both be (N, 1, h, w), got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.tensor([structural_similarity(x[0].double().numpy(), y[0].double().numpy(), data_range=data_range)
                         for x, y in zip(a, b)], dtype=torch.float32)


def _shifted_windows(est: torch.Tensor, max_shift: int) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, S, C, H - 2s, W - 2s)``: every integer shift within ``max_shift``, S = (2s+1)^2."""
    n, c, h, w = est.shape
    s = max_shift
    win = est.unfold(2, h - 2 * s, 1).unfold(3, w - 2 * s, 1)  # (N, C, 2s+1, 2s+1, h', w')
    return win.permute(0, 2, 3, 1, 4, 5).reshape(n, (2 * s + 1) ** 2, c, h - 2 * s, w - 2 * s)


def kernel_error(k_est: torch.Tensor, k_true: torch.Tensor, max_shift: int = 4) -> torch.Tensor:
    """Normalised L2 kernel error after alignment: ``min_shift ||shift(k_est) - k_true||_2 / ||k_true||_2``.

    Both kernels are zero-padded (centred) to a common size plus ``max_shift`` on every side, so shifting never
    wraps. 0 is a perfect estimate; a flat (uniform) kernel of the same support scores about 0.9 on a Levin kernel.

    Args:
        k_est, k_true: ``(N, 1, a, a)`` and ``(N, 1, b, b)`` kernels (odd sides).

    Returns:
        ``(N,)`` errors.
    """
    k_est, k_true = _as_kernels(k_est), _as_kernels(k_true)
    if len(k_est) != len(k_true):
        raise ValueError(f"k_est and k_true differ in batch size: {len(k_est)} vs {len(k_true)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    size = max(k_est.shape[-1], k_true.shape[-1]) + 2 * max_shift
    e = pad_kernel(k_est.detach().float(), size)
    t = pad_kernel(k_true.detach().float(), size)
    s = max_shift
    tc = t[..., s:size - s, s:size - s]
    diff = (_shifted_windows(e, s) - tc[:, None]).pow(2).sum(dim=(2, 3, 4))  # (N, S)
    # the central window must hold all of k_true: compare against its full norm
    return diff.min(dim=1).values.sqrt() / t.pow(2).sum(dim=(1, 2, 3)).sqrt()


# ------------------------------------------------------------------------------------------------------ baselines
def _per_image(y: torch.Tensor, kernel: torch.Tensor, restore) -> torch.Tensor:
    """``restore(image, kernel)`` on each ``(H, W)`` image of ``y`` ``(N, 1, H, W)`` with its kernel, as float64
    numpy arrays; the image is padded by the kernel size with edge values first (the FFT-based restorations assume
    a periodic image) and the result cropped back, so the output ``(N, 1, H, W)`` is aligned with ``y``."""
    if y.ndim != 4 or y.shape[1] != 1:
        raise ValueError(f"y must be (N, 1, H, W), got shape {tuple(y.shape)}")
    ks = _as_kernels(kernel, len(y)).expand(len(y), -1, -1, -1).detach().double().numpy()[:, 0]
    out = []
    for yi, ki in zip(y.detach().double().numpy()[:, 0], ks):
        p = ki.shape[-1]
        out.append(restore(np.pad(yi, p, mode="edge"), ki)[p:-p, p:-p])
    return torch.from_numpy(np.stack(out)).float()[:, None]


def wiener(y: torch.Tensor, kernel: torch.Tensor, balance: float = 0.05) -> torch.Tensor:
    """Wiener-Hunt deconvolution with the true kernel (``skimage.restoration.wiener``, Laplacian regulariser,
    weight ``balance`` > 0): ``y`` ``(N, 1, H, W)``, ``kernel`` ``(N, 1, k, k)`` or ``(k, k)`` -> ``(N, 1, H, W)``
    in the frame of ``y`` (edge-padded first: the FFT assumes a periodic image)."""
    from skimage.restoration import wiener as sk_wiener
    if balance <= 0:
        raise ValueError(f"balance must be > 0, got {balance}")
    return _per_image(y, kernel, lambda yi, ki: sk_wiener(yi, ki, balance, clip=False))


def richardson_lucy(y: torch.Tensor, kernel: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Richardson-Lucy deconvolution with the true kernel (``skimage.restoration.richardson_lucy``, ``iterations``
    >= 1): ``y`` ``(N, 1, H, W)`` (clipped to [0, 1], edge-padded), ``kernel`` as :func:`wiener` -> ``(N, 1, H, W)``."""
    from skimage.restoration import richardson_lucy as sk_rl
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    return _per_image(y.clamp(0, 1), kernel, lambda yi, ki: sk_rl(yi, ki, num_iter=iterations, clip=False))


# ------------------------------------------------------------------------------------------------------ priors
class GroupedConv2d(nn.Module):
    """``n`` independent ``Conv2d(c_in, c_out, k)`` layers applied to ``(n, c_in, H, W)`` in one grouped convolution.

    Reflection padding keeps the size (``stride`` 1) or halves it (``stride`` 2). Each of the ``n`` convolutions is
    initialised like ``nn.Conv2d`` (uniform, fan-in ``c_in * k * k``).
    """

    def __init__(self, n: int, c_in: int, c_out: int, k: int = 3, stride: int = 1):
        super().__init__()
        self.n, self.c_in, self.c_out, self.k, self.stride = n, c_in, c_out, k, stride
        self.weight = nn.Parameter(torch.empty(n * c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.empty(n * c_out))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(c_in * k * k)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if n != self.n or c != self.c_in:
            raise ValueError(f"expected ({self.n}, {self.c_in}, H, W), got {tuple(x.shape)}")
        x = x.reshape(1, n * c, h, w)
        p = (self.k - 1) // 2
        if p:
            x = F.pad(x, (p, p, p, p), mode="reflect")
        y = F.conv2d(x, self.weight, self.bias, stride=self.stride, groups=n)
        return y.reshape(n, self.c_out, *y.shape[-2:])


class _Norm(nn.Module):
    """Per-model, per-channel normalisation over space (BatchNorm with a batch of one in train mode) + affine."""

    def __init__(self, n: int, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, c, 1, 1))
        self.bias = nn.Parameter(torch.zeros(n, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x) * self.weight + self.bias


def _block(n, c_in, c_out, k=3, stride=1) -> nn.Sequential:
    return nn.Sequential(GroupedConv2d(n, c_in, c_out, k, stride), _Norm(n, c_out), nn.LeakyReLU(0.2))


class _Level(nn.Module):
    """One level of the skip encoder-decoder: ``up(cat(skip(x), upsample(deeper(down(x)))))``."""

    def __init__(self, n, c_in, c, c_skip, deeper: nn.Module | None):
        super().__init__()
        self.skip = _block(n, c_in, c_skip, 1) if c_skip else None
        self.down = nn.Sequential(_block(n, c_in, c, 3, 2), _block(n, c, c, 3))
        self.deeper = deeper
        self.up = nn.Sequential(_Norm(n, c + c_skip), _block(n, c + c_skip, c, 3), _block(n, c, c, 1))

    def forward(self, x):
        d = self.down(x)
        if self.deeper is not None:
            d = self.deeper(d)
        d = F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.skip is not None:
            d = torch.cat([self.skip(x), d], dim=1)
        return self.up(d)


class ImagePrior(nn.Module):
    """The deep image prior: ``n`` independent encoder-decoders with skip connections (Ulyanov et al.'s "skip"
    network), run as one grouped network.

    Each level downsamples with a stride-2 convolution, and on the way up concatenates a 1x1 skip branch with the
    bilinearly upsampled deeper features; convolutions use reflection padding, per-channel normalisation and
    LeakyReLU(0.2); a 1x1 convolution and a sigmoid give the image in [0, 1].

    Args:
        n: number of independent networks (problems).
        in_channels: channels of the fixed noise input ``z``.
        channels: feature channels at every level; skip_channels: channels of each skip branch (0: none).
        levels: number of downsampling levels (the input side must be divisible by ``2 ** levels``).
        out_channels: 1 (grey) or 3 (colour).

    Shapes: ``z`` ``(n, in_channels, H, W)`` -> ``(n, out_channels, H, W)``.
    """

    def __init__(self, n: int = 1, in_channels: int = 8, channels: int = 32, skip_channels: int = 4,
                 levels: int = 3, out_channels: int = 1):
        super().__init__()
        if min(n, in_channels, channels, levels, out_channels) < 1 or skip_channels < 0:
            raise ValueError(f"n, in_channels, channels, levels, out_channels must be >= 1 and skip_channels >= 0, "
                             f"got n={n}, in_channels={in_channels}, channels={channels}, levels={levels}, "
                             f"out_channels={out_channels}, skip_channels={skip_channels}")
        self.n, self.in_channels, self.levels = n, in_channels, levels
        net = None
        for i in reversed(range(levels)):
            net = _Level(n, in_channels if i == 0 else channels, channels, skip_channels, net)
        self.body = net
        self.head = GroupedConv2d(n, channels, out_channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        m = 2 ** self.levels
        if z.shape[-1] % m or z.shape[-2] % m:
            raise ValueError(f"input side must be divisible by 2**levels = {m}, got {tuple(z.shape[-2:])}")
        return torch.sigmoid(self.head(self.body(z)))


class KernelPrior(nn.Module):
    """The kernel prior of SelfDeblur (Ren et al. 2020, ``networks/fcn.py``), which DIKP's kernel network follows:
    ``n`` independent MLPs ``softmax(W2 relu6(W1 z + b1) + b2)`` from a noise vector to a ``kernel_size x
    kernel_size`` kernel (non-negative, summing to one), run as batched matrix products.

    Shapes: ``z`` ``(n, noise_dim)`` -> ``(n, 1, kernel_size, kernel_size)``.
    """

    def __init__(self, n: int = 1, kernel_size: int = 15, noise_dim: int = 200, hidden: int = 1000):
        super().__init__()
        if min(n, kernel_size, noise_dim, hidden) < 1:
            raise ValueError(f"n, kernel_size, noise_dim and hidden must be >= 1, got {n}, {kernel_size}, "
                             f"{noise_dim}, {hidden}")
        self.n, self.kernel_size, self.noise_dim = n, kernel_size, noise_dim
        b1, b2 = 1 / math.sqrt(noise_dim), 1 / math.sqrt(hidden)  # nn.Linear's initialisation
        self.w1 = nn.Parameter(torch.empty(n, noise_dim, hidden).uniform_(-b1, b1))
        self.b1 = nn.Parameter(torch.empty(n, 1, hidden).uniform_(-b1, b1))
        self.w2 = nn.Parameter(torch.empty(n, hidden, kernel_size ** 2).uniform_(-b2, b2))
        self.b2 = nn.Parameter(torch.empty(n, 1, kernel_size ** 2).uniform_(-b2, b2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape != (self.n, self.noise_dim):
            raise ValueError(f"expected z of shape ({self.n}, {self.noise_dim}), got {tuple(z.shape)}")
        h = F.relu6(torch.baddbmm(self.b1, z[:, None], self.w1))
        logits = torch.baddbmm(self.b2, h, self.w2)[:, 0]
        return logits.softmax(dim=-1).view(self.n, 1, self.kernel_size, self.kernel_size)


# ------------------------------------------------------------------------------------------------------ terms
def data_term(x: torch.Tensor, kernel: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The data term, one value per problem: ``mean((blur(x, k) - y)^2)``.

    Args:
        x: ``(N, C, H + kh - 1, W + kw - 1)`` latent images; kernel: ``(N, 1, kh, kw)``; y: ``(N, C, H, W)``.

    Returns:
        ``(N,)`` mean squared errors (problems share no parameters: their sum is the loss optimised).
    """
    pred = blur(x, kernel)
    if pred.shape != y.shape:
        raise ValueError(f"blur(x, kernel) has shape {tuple(pred.shape)} but y has {tuple(y.shape)}: the latent image "
                         f"must be larger than y by the kernel size - 1")
    return (pred - y).pow(2).mean(dim=(1, 2, 3))


def ssim_loss(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """``1 - SSIM`` per problem with an 11x11 Gaussian window (sigma 1.5), zero padding, ``C1 = 0.01^2``,
    ``C2 = 0.03^2``: the loss SelfDeblur switches to after 1000 steps (its ``SSIM.py``).

    Args:
        a, b: ``(N, C, H, W)`` in [0, 1].

    Returns:
        ``(N,)``.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"a and b must both be (N, C, H, W) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.exp(-(torch.arange(window, dtype=a.dtype) - window // 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    c = a.shape[1]
    win = (g[:, None] * g[None]).expand(c, 1, window, window)
    f = lambda t: F.conv2d(t, win, padding=window // 2, groups=c)
    mu_a, mu_b = f(a), f(b)
    var_a, var_b, cov = f(a * a) - mu_a ** 2, f(b * b) - mu_b ** 2, f(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return 1 - s.mean(dim=(1, 2, 3))


def total_variation(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Isotropic total variation per problem, ``mean_ij sqrt(dx_ij^2 + dy_ij^2 + eps)`` (forward differences).

    Args:
        x: ``(N, C, H, W)``.

    Returns:
        ``(N,)``.
    """
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2) + eps).sqrt().mean(dim=(1, 2, 3))


def kernel_sparsity(kernel: torch.Tensor, p: float = 0.5, eps: float = 1e-8) -> torch.Tensor:
    """``sum_ab (k_ab + eps)^p`` per kernel, an l_p quasi-norm (``0 < p < 1``) favouring few non-zero taps.

    (An l1 penalty would be constant on kernels that are non-negative and sum to one, as every kernel here is.)

    Args:
        kernel: ``(N, 1, kh, kw)`` non-negative.

    Returns:
        ``(N,)``.
    """
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    return (kernel.clamp_min(0) + eps).pow(p).sum(dim=(1, 2, 3))


def normalise_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """Perrone and Favaro's kernel projection: negative taps set to zero, then divided by the sum (``(N, 1, kh, kw)``;
    a kernel with no positive tap becomes uniform)."""
    k = kernel.clamp_min(0)
    s = k.sum(dim=(1, 2, 3), keepdim=True)
    return torch.where(s > 0, k / s.clamp_min(1e-12), torch.full_like(k, 1 / k[0].numel()))


def centre_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """Kernel centring (Cho & Lee 2009; ``adjust_psf_center`` in Pan et al.'s code), by whole pixels: each ``(N, 1, K,
    K)`` kernel rolled circularly so that its centre of mass sits on the middle tap. A permutation of the taps (still
    >= 0, same sum); the shift is chosen without gradient, the roll passes gradients through."""
    n, _, K, _ = kernel.shape
    taps = torch.arange(K, device=kernel.device)
    with torch.no_grad():
        r, mass = taps.to(kernel.dtype), kernel.sum((1, 2, 3))
        sy = ((kernel.sum(3)[:, 0] * r).sum(1) / mass).round().long() - K // 2
        sx = ((kernel.sum(2)[:, 0] * r).sum(1) / mass).round().long() - K // 2
    iy, ix = (taps[None] + sy[:, None]) % K, (taps[None] + sx[:, None]) % K      # out[i] = kernel[i + s]
    out = kernel.gather(2, iy[:, None, :, None].expand(n, 1, K, K))
    return out.gather(3, ix[:, None, None, :].expand(n, 1, K, K))
