"""Small shared helpers: seeding, device choice, timing and profile resolution."""
from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["MAX_SEED", "Timer", "check_seed", "resolve_device", "resolve_profile", "seed_everything"]

#: Seeds are integers in ``[0, MAX_SEED]`` (what ``torch.manual_seed`` and ``torch.Generator`` accept).
MAX_SEED = 2**63 - 1


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` if it is an int in ``[0, MAX_SEED]``; otherwise a ``ValueError`` naming ``name`` and the range."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to 2**63 - 1, got {seed!r}")
    return seed


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) and return a ``torch.Generator`` seeded with ``seed``.

    Deterministic algorithms are preferred where PyTorch has them (``warn_only``), so one seed gives the same
    numbers on one machine.
    """
    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda > mps > cpu; otherwise the named device, checked to exist."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = str(device).split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda[:N]' or 'mps', got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} requested but MPS is not available; use device='auto' or 'cpu'")
    return torch.device(device)


def resolve_profile(profiles: dict[str, dict], profile: str, **overrides) -> dict:
    """The settings of ``profile`` from a method's ``{"quick": {...}, "paper": {...}}`` table.

    ``overrides`` whose value is not ``None`` replace defaults; an override that names no setting of the profile
    raises a ``ValueError`` listing the allowed names.
    """
    if profile not in profiles:
        raise ValueError(f"profile must be one of {', '.join(profiles)}; got {profile!r}")
    cfg = dict(profiles[profile])
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} for profile {profile!r}; "
                         f"allowed: {', '.join(sorted(cfg))}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


class Timer:
    """Accumulating wall-clock timer: ``with timer("train"): ...`` then ``timer.totals`` (seconds per name)."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def __repr__(self) -> str:
        return "Timer(" + ", ".join(f"{k}={v:.2f}s" for k, v in self.totals.items()) + ")"
