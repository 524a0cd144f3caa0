"""Seeded training and evaluation loops over in-memory tensors (no DataLoader workers needed).

* :func:`batches`, :func:`gather`: index chunks, and the rows of an image tensor or of a lazy image sequence;
* :func:`random_flip`, :func:`random_shift`: seeded per-sample augmentations of a batch;
* :func:`fit_epochs`: the epoch loop shared by the method modules' trainers (seeded batch order, backward, optimiser
  and scheduler steps, mean loss per epoch), each trainer supplying the loss of one batch;
* :func:`train_classifier`, :func:`predict`, :func:`evaluate`: a plain classifier recipe built on it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .utils import resolve_device

__all__ = ["batches", "evaluate", "fit_epochs", "gather", "predict", "random_flip", "random_shift",
           "train_classifier"]


def batches(n: int, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None):
    """Yield index tensors covering ``range(n)`` in chunks of ``batch_size`` (a seeded permutation if ``shuffle``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)


def gather(images: torch.Tensor | Sequence[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` ``(B,)`` of ``images``: an ``(N, C, H, W)`` tensor, or a sequence of equally sized ``(C, H, W)``
    tensors (a lazily decoded dataset, read only for the rows asked for). Returns ``(B, C, H, W)``."""
    if torch.is_tensor(images):
        return images[idx]
    return torch.stack([images[i] for i in idx.tolist()])


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror each image of ``x`` ``(N, C, H, W)`` horizontally with probability 1/2 (one draw per image from
    ``generator``). Returns the images and the ``(N,)`` bool mask of the flipped ones (on the CPU)."""
    flipped = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flipped.to(x.device)[:, None, None, None], x.flip(-1), x), flipped


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None,
                 padding_mode: str = "zeros") -> tuple[torch.Tensor, torch.Tensor]:
    """Translate every image of ``x`` ``(N, C, H, W)`` by its own random whole-pixel shift in
    ``[-max_shift, max_shift]`` (one batched ``grid_sample``; ``padding_mode`` ``"zeros"``, ``"border"`` or
    ``"reflection"`` fills the uncovered border). Returns the shifted images and the shifts ``(N, 2)`` as
    ``(dx, dy)`` pixels (content moves right / down for positive values)."""
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).to(x.device)
    if max_shift == 0:
        return x, shifts
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * shifts[:, 0] / w
    theta[:, 1, 2] = -2.0 * shifts[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode=padding_mode, align_corners=False), shifts


def fit_epochs(batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor], n: int, *, epochs: int,
               batch_size: int, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, schedule_every: str = "batch",
               seed: int = 0, progress: bool = False, desc: str = "train") -> list[float]:
    """The training loop shared by vklib's trainers.

    Every epoch visits ``range(n)`` in a seeded random order, in batches of ``batch_size`` index tensors ``idx``;
    for each, ``loss = batch_loss(idx, generator)`` (the trainer gathers its batch, augments it with ``generator``
    and returns the scalar mean loss), then backward, ``optimizer.step()``, and ``scheduler.step()`` after every
    batch (``schedule_every="batch"``) or every epoch (``"epoch"``). One ``torch.Generator`` seeded with ``seed``
    draws the batch order and is handed to ``batch_loss``, so a seed fixes both.

    Returns:
        The mean training loss of every epoch (weighted by batch size).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if schedule_every not in ("batch", "epoch"):
        raise ValueError(f"schedule_every must be 'batch' or 'epoch', got {schedule_every!r}")
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        total = 0.0
        for idx in batches(n, batch_size, shuffle=True, generator=g):
            loss = batch_loss(idx, g)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None and schedule_every == "batch":
                scheduler.step()
            total += loss.item() * len(idx)
        if scheduler is not None and schedule_every == "epoch":
            scheduler.step()
        losses.append(total / max(1, n))
    return losses


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
    dev = resolve_device(device)
    model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    milestones = sorted({max(1, int(round(f * epochs))) for f in lr_decay_at if 0 < f < 1})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)

    def batch_loss(idx, g):
        x = images[idx].to(dev)
        return nn.functional.cross_entropy(model(x if augment is None else augment(x)), labels[idx].to(dev))

    return fit_epochs(batch_loss, len(images), epochs=epochs, batch_size=batch_size, optimizer=opt, scheduler=sched,
                      schedule_every="epoch", seed=seed, progress=progress)
