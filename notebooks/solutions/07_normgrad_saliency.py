"""Worked solution of notebook 07's exercise: combine NormGrad maps of several layers as the official code does."""
import torch
import torch.nn.functional as F


def combine(maps, size):
    """``maps``: a list of ``(N, h_l, w_l)`` maps of layers ``l``; ``size = (H, W)``. Each map is upsampled
    bilinearly to ``(H, W)``, then rescaled per image to [0, 1] by its own minimum and maximum (after the
    upsampling), and the rescaled maps are multiplied. Returns ``(N, H, W)``."""
    out = torch.ones(len(maps[0]), *size)
    for m in maps:
        up = F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        lo = up.amin(dim=(1, 2), keepdim=True)
        hi = up.amax(dim=(1, 2), keepdim=True)
        out = out * (up - lo) / (hi - lo).clamp_min(1e-30)
    return out
