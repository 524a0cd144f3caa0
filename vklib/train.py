"""Seeded training and evaluation loops over in-memory tensors (no DataLoader workers needed)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .utils import resolve_device

__all__ = ["batches", "evaluate", "predict", "train_classifier"]


def batches(n: int, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None):
    """Yield index tensors covering ``range(n)`` in chunks of ``batch_size`` (a seeded permutation if ``shuffle``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 512,
            device: str | torch.device = "auto") -> torch.Tensor:
    """Logits ``(N, K)`` of ``model`` on ``images`` ``(N, C, H, W)``, computed in eval mode, returned on the CPU."""
    dev = resolve_device(device)
    was_training = model.training
    model.eval().to(dev)
    out = torch.cat([model(images[i].to(dev)).cpu() for i in batches(len(images), batch_size)])
    model.train(was_training)
    return out


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 512,
             device: str | torch.device = "auto") -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on ``images`` ``(N, C, H, W)`` with ``labels`` ``(N,)``."""
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
    logits = predict(model, images, batch_size=batch_size, device=device)
    return (logits.argmax(1) == labels).float().mean().item()


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int,
                     batch_size: int = 256, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                     lr_decay_at: tuple[float, ...] = (0.5,), augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     seed: int = 0, device: str | torch.device = "auto", progress: bool = False) -> list[float]:
    """Train ``model`` with SGD and cross-entropy; the learning rate is multiplied by 0.1 at each fraction of
    ``epochs`` in ``lr_decay_at`` (DC's evaluation recipe by default).

    Args:
        images: ``(N, C, H, W)`` float tensor; labels: ``(N,)`` int64 (or ``(N, K)`` soft targets).
        augment: optional batch transform applied to each training batch.
        seed: fixes the batch order (and any randomness inside ``augment`` that uses torch's global RNG).

    Returns:
        The mean training loss of every epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    dev = resolve_device(device)
    model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    milestones = sorted({max(1, int(round(f * epochs))) for f in lr_decay_at if 0 < f < 1})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(epochs), desc="train", disable=not progress, leave=False):
        total = 0.0
        for idx in batches(len(images), batch_size, shuffle=True, generator=g):
            x, y = images[idx].to(dev), labels[idx].to(dev)
            if augment is not None:
                x = augment(x)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        losses.append(total / len(images))
    return losses
