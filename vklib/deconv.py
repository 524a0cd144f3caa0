"""Image deconvolution with deep image and kernel priors (DIKP, Wang, Wang, Li and Bilen, 2019, arXiv 1910.08386).

The forward model is a *valid* convolution plus noise::

    y = k * x + n,      x: (H + kh - 1, W + kw - 1),  k: (kh, kw) >= 0 summing to one,  y: (H, W)

so every pixel of ``y`` sees only pixels of ``x`` (no boundary assumption); the latent image is larger than ``y``
by the kernel size minus one.

* **Image prior** (deep image prior, Ulyanov et al. 2018): ``x = f_theta(z_x)``, an encoder-decoder with skip
  connections and a sigmoid output, fed a fixed noise tensor ``z_x``; only ``theta`` is optimised.
* **Kernel prior**: ``k = softmax(g_phi(z_k))``, a two-layer MLP from a fixed noise vector to ``kh * kw`` logits; the
  softmax keeps the kernel non-negative and summing to one.
* :func:`deconv_dip` (non-blind, the kernel is known) minimises ``||k * f_theta(z_x) - y||^2`` over ``theta``;
  :func:`deconv_dikp` (blind) minimises ``||softmax(g_phi(z_k)) * f_theta(z_x) - y||^2`` over ``theta`` and ``phi``,
  with separate learning rates.

Every function works on a *batch of independent problems* ``(N, ...)``: the N image priors (and kernel priors) are
N separate networks run as one grouped network (grouped convolutions, batched matrix products), so one optimiser
step updates all N problems at once and the N problems never interact (Adam is per parameter).

Evaluation follows Levin et al. (2009): PSNR is taken at the best integer shift within ``max_shift`` pixels (a blind
estimate is only defined up to a translation), and SSIM (scikit-image) at that shift. Baselines: scikit-image's
Wiener(-Hunt) filter and Richardson-Lucy, both given the true kernel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .utils import resolve_device

__all__ = [
    "PROFILES", "DeconvProblem", "DeconvResult", "GroupedConv2d", "ImagePrior", "KernelPrior",
    "blur", "center_crop", "deconv_dikp", "deconv_dip", "dikp_loss", "kernel_error", "load_problem", "make_problem",
    "pad_kernel", "psnr_aligned", "richardson_lucy", "ssim_aligned", "wiener",
]

# ------------------------------------------------------------------------------------------------------ settings
PROFILES = {
    # 2 CPU cores, a few minutes: two shipped Set12 images with many edges, cropped to 64 x 64 (the observation),
    # the two smallest Levin kernels, 1% noise, a narrow prior network and a few hundred Adam steps.
    "quick": {
        "images": ("cameraman", "monarch"),
        "kernels": ("k3", "k5"),
        "crop": 64,
        "noise_std": 0.01,
        "kernel_size": 15,
        "iterations_dip": 400,
        "iterations_dikp": 600,
        "lr_image": 0.01,
        "lr_kernel": 1e-4,
        "channels": 16,
        "skip_channels": 4,
        "levels": 3,
        "input_channels": 8,
        "kernel_noise_dim": 200,
        "kernel_hidden": 1000,
        "input_noise_std": 0.0,
        "eval_every": 25,
        "max_shift": 4,
        "wiener_balance": 0.01,
        "rl_iterations": 30,
        "demo_crop": 48,
        "demo_noise_std": 0.1,
        "demo_iterations": 300,
    },
    # The paper-sized setting: six standard test images, as in the paper's abstract (the shipped Set12 images are the
    # full 256 x 256 originals; "Lena" is left out, see data/README.md), all eight Levin kernels, the blind kernel
    # size equal to the true one (None: the Levin protocol, problems grouped by kernel), the DIP/SelfDeblur networks
    # and thousands of steps. Which images, kernels, noise level and iteration counts the paper itself used could not
    # be read from its text (notebook 03, section 6), so these follow the Levin et al. benchmark and the DIP code.
    "paper": {
        "images": ("cameraman", "house", "peppers", "starfish", "monarch", "airplane"),
        "kernels": ("k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8"),
        "crop": None,
        "noise_std": 0.01,
        "kernel_size": None,
        "iterations_dip": 5000,
        "iterations_dikp": 5000,
        "lr_image": 0.01,
        "lr_kernel": 1e-4,
        "channels": 128,
        "skip_channels": 16,
        "levels": 5,
        "input_channels": 8,
        "kernel_noise_dim": 200,
        "kernel_hidden": 1000,
        "input_noise_std": 0.001,
        "eval_every": 100,
        "max_shift": 4,
        "wiener_balance": 0.01,
        "rl_iterations": 30,
        "demo_crop": 128,
        "demo_noise_std": 0.1,
        "demo_iterations": 3000,
    },
}
# The paper path shrunk to about a minute on 2 CPU cores (the tests run it; its numbers mean nothing): two images,
# two kernels of different sizes (so that the grouping by kernel size runs), 64 x 64 crops and a few iterations of
# the paper-sized networks.
PROFILES["smoke"] = {**PROFILES["paper"], "images": ("cameraman", "house"), "kernels": ("k3", "k5"), "crop": 64,
                     "iterations_dip": 6, "iterations_dikp": 6, "eval_every": 3, "demo_crop": 48,
                     "demo_iterations": 6}



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
    """Valid 2-D convolution (a true convolution, i.e. the kernel flipped, as ``scipy.signal.convolve2d(.., 'valid')``).

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
    weight = k.flip(-1, -2).expand(n, c, kh, kw).reshape(n * c, 1, kh, kw)
    return F.conv2d(x.reshape(1, n * c, h, w), weight, groups=n * c).reshape(n, c, h - kh + 1, w - kw + 1)


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


# ------------------------------------------------------------------------------------------------------ metrics
def _shifted_windows(est: torch.Tensor, max_shift: int) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, S, C, H - 2s, W - 2s)``: every integer shift within ``max_shift``, S = (2s+1)^2."""
    n, c, h, w = est.shape
    s = max_shift
    win = est.unfold(2, h - 2 * s, 1).unfold(3, w - 2 * s, 1)  # (N, C, 2s+1, 2s+1, h', w')
    return win.permute(0, 2, 3, 1, 4, 5).reshape(n, (2 * s + 1) ** 2, c, h - 2 * s, w - 2 * s)


def psnr_aligned(est: torch.Tensor, ref: torch.Tensor, max_shift: int = 4,
                 data_range: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR at the best integer shift (Levin et al.'s protocol for blind deconvolution).

    ``ref``'s central window (a border of ``max_shift`` left out) is compared with every window of ``est`` shifted
    by ``(dy, dx)``, ``|dy|, |dx| <= max_shift``; the estimate is clipped to ``[0, data_range]`` first.

    Args:
        est, ref: ``(N, C, H, W)``.

    Returns:
        ``psnr`` ``(N,)`` in dB and the best ``shift`` ``(N, 2)`` (``dy, dx``, where ``est[i + dy, j + dx]`` matches
        ``ref[i, j]``).
    """
    if est.shape != ref.shape or est.ndim != 4:
        raise ValueError(f"est and ref must both be (N, C, H, W) of one shape, got {tuple(est.shape)} and "
                         f"{tuple(ref.shape)}")
    if max_shift < 0 or 2 * max_shift >= min(est.shape[-2:]):
        raise ValueError(f"max_shift must be >= 0 and leave a window, got {max_shift} for {tuple(est.shape[-2:])}")
    s = max_shift
    est = est.detach().float().clamp(0, data_range)
    ref = ref.detach().float()
    r = ref[..., s:ref.shape[-2] - s, s:ref.shape[-1] - s]
    mse = (_shifted_windows(est, s) - r[:, None]).pow(2).mean(dim=(2, 3, 4))  # (N, S)
    best, idx = mse.min(dim=1)
    psnr = 10 * torch.log10(data_range ** 2 / best.clamp_min(1e-12))
    shift = torch.stack([idx // (2 * s + 1) - s, idx % (2 * s + 1) - s], dim=1)
    return psnr, shift


def ssim_aligned(est: torch.Tensor, ref: torch.Tensor, shift: torch.Tensor, max_shift: int = 4,
                 data_range: float = 1.0) -> torch.Tensor:
    """SSIM (scikit-image, Gaussian-free 7x7 window) of the windows :func:`psnr_aligned` compared at ``shift``.

    Args:
        est, ref: ``(N, 1, H, W)`` grey images; shift: ``(N, 2)`` from :func:`psnr_aligned`.

    Returns:
        ``(N,)`` SSIM values.
    """
    from skimage.metrics import structural_similarity
    if est.shape != ref.shape or est.ndim != 4 or est.shape[1] != 1:
        raise ValueError(f"est and ref must both be (N, 1, H, W), got {tuple(est.shape)} and {tuple(ref.shape)}")
    s = max_shift
    h, w = est.shape[-2] - 2 * s, est.shape[-1] - 2 * s
    out = []
    for e, r, (dy, dx) in zip(est.detach().float().clamp(0, data_range), ref.float(), shift.tolist()):
        a = e[0, s + dy:s + dy + h, s + dx:s + dx + w].numpy().astype(np.float64)
        b = r[0, s:s + h, s:s + w].numpy().astype(np.float64)
        out.append(structural_similarity(a, b, data_range=data_range))
    return torch.tensor(out, dtype=torch.float32)


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
    """Wiener-Hunt deconvolution with the true kernel (``skimage.restoration.wiener``, Laplacian regulariser).

    ``y`` is padded by the kernel size with edge values (the FFT assumes a periodic image), deconvolved, then cropped
    back, so the output is aligned with ``y``.

    Args:
        y: ``(N, 1, H, W)``; kernel: ``(N, 1, k, k)`` or ``(k, k)``; balance: the regularisation weight (> 0).

    Returns:
        ``(N, 1, H, W)`` estimates of the sharp image in the frame of ``y``.
    """
    from skimage.restoration import wiener as sk_wiener
    if balance <= 0:
        raise ValueError(f"balance must be > 0, got {balance}")
    return _per_image(y, kernel, lambda yi, ki: sk_wiener(yi, ki, balance, clip=False))


def richardson_lucy(y: torch.Tensor, kernel: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Richardson-Lucy deconvolution with the true kernel (``skimage.restoration.richardson_lucy``).

    ``y`` is clipped to [0, 1] (RL needs non-negative data) and padded by the kernel size with edge values.

    Args:
        y: ``(N, 1, H, W)``; kernel: ``(N, 1, k, k)`` or ``(k, k)``; iterations: RL iterations (>= 1).

    Returns:
        ``(N, 1, H, W)``.
    """
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
    """The kernel prior: ``n`` independent MLPs ``softmax(W2 relu6(W1 z + b1) + b2)`` from a noise vector to a
    ``kernel_size x kernel_size`` kernel (non-negative, summing to one), run as batched matrix products.

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


# ------------------------------------------------------------------------------------------------------ optimisation
def dikp_loss(x: torch.Tensor, kernel: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The data term of DIP and DIKP, one value per problem: ``mean((blur(x, k) - y)^2)``.

    Args:
        x: ``(N, C, H + kh - 1, W + kw - 1)`` latent images (the image prior's output).
        kernel: ``(N, 1, kh, kw)`` kernels (the kernel prior's output, or the true kernels).
        y: ``(N, C, H, W)`` observations.

    Returns:
        ``(N,)`` mean squared errors; their sum is the loss optimised (problems share no parameters).
    """
    pred = blur(x, kernel)
    if pred.shape != y.shape:
        raise ValueError(f"blur(x, kernel) has shape {tuple(pred.shape)} but y has {tuple(y.shape)}: the latent image "
                         f"must be larger than y by the kernel size - 1")
    return (pred - y).pow(2).mean(dim=(1, 2, 3))


@dataclass
class DeconvResult:
    """What :func:`deconv_dip` / :func:`deconv_dikp` return.

    Attributes:
        image: ``(N, C, H + K - 1, W + K - 1)`` the restored latent image (last iterate);
            :attr:`restored` is its part aligned with ``y``.
        kernel: ``(N, 1, K, K)`` the kernel used (non-blind) or estimated (blind).
        loss: ``(T, N)`` data term per iteration.
        psnr: ``(E, N)`` shift-aligned PSNR of the ``y``-aligned estimate after ``psnr_iters`` updates (empty without
            ``x_true``); the last entry is the returned estimate's.
        psnr_iters: ``(E,)`` update counts ``eval_every, 2 * eval_every, ..., iterations``.
        snapshots: ``(E, N, C, H, W)`` the ``y``-aligned estimate at those iterations (if ``keep_snapshots``).
    """

    image: torch.Tensor
    kernel: torch.Tensor
    loss: torch.Tensor
    psnr: torch.Tensor
    psnr_iters: torch.Tensor
    y_shape: tuple[int, int]
    snapshots: torch.Tensor | None = None
    kernel_snapshots: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def restored(self) -> torch.Tensor:
        """``(N, C, H, W)``: the latent image's part aligned with ``y``."""
        return center_crop(self.image, *self.y_shape)


def _check_y(y: torch.Tensor) -> None:
    if not torch.is_tensor(y) or y.ndim != 4:
        raise ValueError(f"y must be an (N, C, H, W) tensor, got {getattr(y, 'shape', type(y).__name__)}")


def _optimise(y, kernel_fixed, kernel_size, *, x_true, iterations, lr_image, lr_kernel, channels, skip_channels,
              levels, input_channels, kernel_noise_dim, kernel_hidden, input_noise_std, eval_every, max_shift, seed,
              device, progress, keep_snapshots, desc):
    """Shared loop of :func:`deconv_dip` (``kernel_fixed`` given) and :func:`deconv_dikp` (``kernel_size`` given)."""
    _check_y(y)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    if lr_image <= 0 or (kernel_fixed is None and lr_kernel <= 0):
        raise ValueError(f"learning rates must be > 0, got lr_image={lr_image}, lr_kernel={lr_kernel}")
    dev = resolve_device(device)
    n, c, h, w = y.shape
    K = kernel_fixed.shape[-1] if kernel_fixed is not None else kernel_size
    hx, wx = h + K - 1, w + K - 1
    if x_true is not None and tuple(x_true.shape) != (n, c, h, w):
        raise ValueError(f"x_true must be the sharp image aligned with y, shape {(n, c, h, w)}, got "
                         f"{tuple(x_true.shape)}")
    m = 2 ** levels
    hp, wp = -(-hx // m) * m, -(-wx // m) * m  # the network works on a size divisible by 2**levels, then crops
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image_net = ImagePrior(n, input_channels, channels, skip_channels, levels, c).to(dev)
        kernel_net = (KernelPrior(n, K, kernel_noise_dim, kernel_hidden).to(dev) if kernel_fixed is None else None)
    z_x = (torch.rand(n, input_channels, hp, wp, generator=g) * 0.1).to(dev)  # DIP's input: U(0, 0.1) noise
    z_k = torch.rand(n, kernel_noise_dim, generator=g).to(dev) if kernel_net is not None else None
    groups = [{"params": image_net.parameters(), "lr": lr_image}]
    if kernel_net is not None:
        groups.append({"params": kernel_net.parameters(), "lr": lr_kernel})
    opt = torch.optim.Adam(groups)
    y_dev = y.to(dev).float()
    k_fixed = kernel_fixed.to(dev).float() if kernel_fixed is not None else None
    ref = x_true.float() if x_true is not None else None
    top, left = (hp - hx) // 2, (wp - wx) // 2
    losses, psnrs, iters, snaps, ksnaps = [], [], [], [], []

    def record(t, x, k):  # the estimate after t updates
        est = center_crop(x.detach(), h, w).cpu()
        iters.append(t)
        if ref is not None:
            psnrs.append(psnr_aligned(est, ref, max_shift)[0])
        if keep_snapshots:
            snaps.append(est)
            ksnaps.append(k.detach().cpu())

    for it in tqdm(range(1, iterations + 1), desc=desc, disable=not progress, leave=False):
        z = z_x if input_noise_std == 0 else z_x + (torch.randn(z_x.shape, generator=g) * input_noise_std).to(dev)
        x = image_net(z)[..., top:top + hx, left:left + wx]
        k = k_fixed if kernel_net is None else kernel_net(z_k)
        if it > 1 and (it - 1) % eval_every == 0:
            record(it - 1, x, k)
        per_problem = dikp_loss(x, k, y_dev)
        opt.zero_grad(set_to_none=True)
        per_problem.sum().backward()
        opt.step()
        losses.append(per_problem.detach())
    with torch.no_grad():  # the final estimate, after the last update (without the input perturbation)
        x = image_net(z_x)[..., top:top + hx, left:left + wx]
        k = k_fixed if kernel_net is None else kernel_net(z_k)
        record(iterations, x, k)
        x, k = x.cpu(), k.detach().cpu()
    return DeconvResult(
        image=x, kernel=k, loss=torch.stack(losses).cpu(), psnr=torch.stack(psnrs) if psnrs else torch.empty(0, n),
        psnr_iters=torch.tensor(iters), y_shape=(h, w), snapshots=torch.stack(snaps) if snaps else None,
        kernel_snapshots=torch.stack(ksnaps) if ksnaps and kernel_net is not None else None)


def deconv_dip(y: torch.Tensor, kernel: torch.Tensor, *, x_true: torch.Tensor | None = None, iterations: int = 400,
               lr_image: float = 0.01, channels: int = 32, skip_channels: int = 4, levels: int = 3,
               input_channels: int = 8, input_noise_std: float = 0.0, eval_every: int = 25, max_shift: int = 4,
               seed: int = 0, device: str | torch.device = "auto", progress: bool = False,
               keep_snapshots: bool = False) -> DeconvResult:
    """Non-blind deconvolution with the deep image prior: ``min_theta ||k * f_theta(z) - y||^2`` (Adam).

    Args:
        y: ``(N, C, H, W)`` observations; kernel: ``(N, 1, K, K)`` (or ``(K, K)``) true kernels, odd ``K``.
        x_true: optional ``(N, C, H, W)`` sharp reference aligned with ``y``: the PSNR history is then recorded
            (for teaching; it never steers the optimisation).
        iterations, lr_image: Adam steps and learning rate; channels, skip_channels, levels, input_channels: the
            :class:`ImagePrior`; input_noise_std: DIP's perturbation of the input noise at every step.
        eval_every, max_shift: PSNR history spacing and the shift search of :func:`psnr_aligned`.
        seed: fixes the networks' initialisation and the noise inputs; progress: a tqdm bar.

    Returns:
        A :class:`DeconvResult` (the last iterate; no early stopping).
    """
    _check_y(y)
    k = _as_kernels(kernel, len(y)).expand(len(y), -1, -1, -1)
    if k.shape[-1] != k.shape[-2] or k.shape[-1] % 2 == 0:
        raise ValueError(f"kernel must be square with an odd side, got {tuple(k.shape[-2:])}")
    return _optimise(y, k, None, x_true=x_true, iterations=iterations, lr_image=lr_image, lr_kernel=0.0,
                     channels=channels, skip_channels=skip_channels, levels=levels, input_channels=input_channels,
                     kernel_noise_dim=1, kernel_hidden=1, input_noise_std=input_noise_std, eval_every=eval_every,
                     max_shift=max_shift, seed=seed, device=device, progress=progress, keep_snapshots=keep_snapshots,
                     desc="DIP (non-blind)")


def deconv_dikp(y: torch.Tensor, kernel_size: int, *, x_true: torch.Tensor | None = None, iterations: int = 500,
                lr_image: float = 0.01, lr_kernel: float = 5e-4, channels: int = 32, skip_channels: int = 4,
                levels: int = 3, input_channels: int = 8, kernel_noise_dim: int = 200, kernel_hidden: int = 1000,
                input_noise_std: float = 0.0, eval_every: int = 25, max_shift: int = 4, seed: int = 0,
                device: str | torch.device = "auto", progress: bool = False,
                keep_snapshots: bool = False) -> DeconvResult:
    """Blind deconvolution with deep image and kernel priors:
    ``min_{theta, phi} ||softmax(g_phi(z_k)) * f_theta(z_x) - y||^2``, Adam with learning rates ``lr_image`` for
    ``theta`` and ``lr_kernel`` for ``phi``.

    Args:
        y: ``(N, C, H, W)`` observations; kernel_size: odd side ``K`` of the estimated kernels (at least the true one).
        kernel_noise_dim, kernel_hidden: the :class:`KernelPrior`; the other arguments as in :func:`deconv_dip`.

    Returns:
        A :class:`DeconvResult` whose ``kernel`` is the estimate ``(N, 1, K, K)`` (defined up to a shift, like the
        image).
    """
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    return _optimise(y, None, kernel_size, x_true=x_true, iterations=iterations, lr_image=lr_image,
                     lr_kernel=lr_kernel, channels=channels, skip_channels=skip_channels, levels=levels,
                     input_channels=input_channels, kernel_noise_dim=kernel_noise_dim, kernel_hidden=kernel_hidden,
                     input_noise_std=input_noise_std, eval_every=eval_every, max_shift=max_shift, seed=seed,
                     device=device, progress=progress, keep_snapshots=keep_snapshots, desc="DIKP (blind)")
