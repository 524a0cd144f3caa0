"""Worked solution of notebook 03's exercise: the isotropic total variation of a batch of images."""
import torch


def total_variation(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` -> ``(N,)``: the mean over channels and the ``(H - 1) x (W - 1)`` pixels that have a
    right and a lower neighbour of ``sqrt(dx^2 + dy^2 + eps)``, with forward differences
    ``dx = x[i, j + 1] - x[i, j]`` and ``dy = x[i + 1, j] - x[i, j]``."""
    corner = x[..., :-1, :-1]
    dx = x[..., :-1, 1:] - corner
    dy = x[..., 1:, :-1] - corner
    return torch.sqrt(dx ** 2 + dy ** 2 + eps).flatten(1).mean(dim=1)
