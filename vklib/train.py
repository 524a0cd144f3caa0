"""Seeded training and evaluation pieces over in-memory tensors (no DataLoader workers needed).

* :func:`batches`, :func:`gather`: index chunks, and the rows of an image tensor or of a lazy image sequence;
* :func:`random_flip`, :func:`random_shift`: seeded per-sample augmentations of a batch;
* :func:`milestones`: epochs (or steps) at which a step schedule decays, from fractions of the run;
* :func:`fit_epochs`: the one epoch loop behind vklib's trainers (seeded batch order, backward, optimiser and
  scheduler steps, mean loss per epoch), each trainer supplying the loss of one batch; with several seeds it drives
  an :class:`Ensemble`, every member on its own batch order;
* :func:`infer`: the one batched, eval-mode inference (``no_grad``, training mode restored afterwards);
* :class:`Ensemble`: ``S`` same-architecture networks trained as one batched model (``torch.func`` + ``vmap``),
  equivalent to ``S`` separate runs;
* :func:`train_classifier`, :func:`evaluate`: a plain classifier recipe built on them (DC's evaluation recipe).
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .models import ConvNet
from .utils import check_seed, resolve_device

__all__ = ["Ensemble", "batches", "evaluate", "fit_epochs", "gather", "infer", "milestones", "random_flip",
           "random_shift", "train_classifier"]


def batches(n: int, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None):
    """Yield index tensors covering ``range(n)`` in chunks of ``batch_size`` (a seeded permutation if ``shuffle``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)


def gather(images: torch.Tensor | Sequence[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` ``(B,)`` of ``images``: an ``(N, ...)`` tensor, or a sequence of equally sized ``(C, H, W)``
    tensors (a lazily decoded dataset, read only for the rows asked for). Returns ``(B, ...)``."""
    if torch.is_tensor(images):
        return images[idx.to(images.device)]
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


def milestones(fractions: Sequence[float], total: int | float) -> list[int]:
    """The epochs (or steps) at which a step schedule decays: each fraction of ``total`` in ``fractions``, rounded,
    at least 1, sorted and without repeats; fractions outside ``(0, 1)`` are ignored.
    E.g. ``milestones((0.5,), 300) == [150]`` (DC's evaluation recipe), for ``torch.optim.lr_scheduler.MultiStepLR``.
    """
    return sorted({max(1, int(round(f * total))) for f in fractions if 0 < f < 1})


def fit_epochs(batch_loss: Callable, n: int, *, epochs: int, batch_size: int, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, schedule_every: str = "batch",
               seed: int | Sequence[int] = 0, progress: bool = False, desc: str = "train", leave: bool = True) -> list:
    """The training loop shared by vklib's trainers.

    Every epoch visits ``range(n)`` in a seeded random order, in batches of ``batch_size`` index tensors ``idx``;
    for each, ``loss = batch_loss(idx, generator)`` (the trainer gathers its batch, augments it with ``generator``
    and returns the scalar mean loss), then backward, ``optimizer.step()``, and ``scheduler.step()`` after every
    batch (``schedule_every="batch"``) or every epoch (``"epoch"``). One ``torch.Generator`` seeded with ``seed``
    draws the batch order and is handed to ``batch_loss``, so a seed fixes both. ``progress`` shows a bar of the
    epochs named ``desc``; ``leave=False`` removes it when the loop ends (for loops run many times in a notebook).

    With a sequence of ``S`` seeds (training an :class:`Ensemble`), member ``s`` has a generator of its own seeded
    ``seed[s]``, exactly as a separate run with that seed: ``idx`` is ``(S, B)`` (row ``s`` is member ``s``'s
    batch), ``batch_loss(idx, generators)`` gets the list of ``S`` generators and returns the ``(S,)`` per-member
    mean losses; their sum is backpropagated (each member's gradient is its own loss's gradient).

    Returns:
        The mean training loss of every epoch (weighted by batch size): a list of ``epochs`` floats, or with ``S``
        seeds a list of ``epochs`` lists of ``S`` floats.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if schedule_every not in ("batch", "epoch"):
        raise ValueError(f"schedule_every must be 'batch' or 'epoch', got {schedule_every!r}")
    single = not isinstance(seed, (list, tuple))
    gens = [torch.Generator().manual_seed(check_seed(s)) for s in ([seed] if single else seed)]
    if not gens:
        raise ValueError("fit_epochs: seed must be an int or a non-empty sequence of ints")
    losses = []
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=leave):
        total = torch.zeros(len(gens))
        orders = [batches(n, batch_size, shuffle=True, generator=g) for g in gens]
        for chunks in zip(*orders):
            idx = chunks[0] if single else torch.stack(chunks)
            loss = batch_loss(idx, gens[0] if single else gens)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            if scheduler is not None and schedule_every == "batch":
                scheduler.step()
            total += loss.detach().cpu().reshape(-1) * idx.shape[-1]
        if scheduler is not None and schedule_every == "epoch":
            scheduler.step()
        mean = (total / max(1, n)).tolist()
        losses.append(mean[0] if single else mean)
    return losses


@torch.no_grad()
def infer(model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor], *,
          fn: Callable[[nn.Module, torch.Tensor], torch.Tensor | tuple] | None = None, batch_size: int = 512,
          device: str | torch.device = "auto"):
    """Batched inference in eval mode without gradients: ``fn(model, x)`` (default ``model(x)``) on consecutive
    batches ``x`` of ``images`` (an ``(N, ...)`` tensor or a sequence of ``(C, H, W)`` tensors), concatenated along
    the batch dimension (the first; the second for an :class:`Ensemble`, whose outputs are ``(S, B, ...)``) and
    returned on the CPU; ``fn`` may return a tensor or a tuple of tensors (then a tuple of
    concatenations; ``None`` entries stay ``None``). The model's training mode is restored afterwards.

    E.g. logits ``(N, K)``: ``infer(net, x)``; features: ``infer(net, x, fn=lambda m, b: m.embed(b))``.
    """
    if len(images) == 0:
        raise ValueError("infer: images is empty")
    dev = resolve_device(device)
    was_training = model.training
    model.eval().to(dev)
    try:
        outs = [fn(model, gather(images, idx).to(dev)) if fn is not None else model(gather(images, idx).to(dev))
                for idx in batches(len(images), batch_size)]
    finally:
        model.train(was_training)
    dim = 1 if isinstance(model, Ensemble) else 0
    if isinstance(outs[0], tuple):
        return tuple(None if parts[0] is None else torch.cat([p.cpu() for p in parts], dim) for parts in zip(*outs))
    return torch.cat([o.cpu() for o in outs], dim)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 512,
             device: str | torch.device = "auto") -> float | list[float]:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on ``images`` ``(N, C, H, W)`` with ``labels`` ``(N,)``;
    for an :class:`Ensemble` the list of its members' accuracies."""
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
    logits = infer(model, images, batch_size=batch_size, device=device)
    correct = (logits.argmax(-1) == labels).float()
    return correct.mean(-1).tolist() if isinstance(model, Ensemble) else correct.mean().item()


class Ensemble(nn.Module):
    """``S`` networks of one architecture as one batched model: their parameters stacked along a new first
    dimension (``torch.func.stack_module_state``) and the forward pass ``vmap``-ed over it, so one optimiser step
    updates all members and each convolution runs once for all of them (a speed kernel: seeds in one pass).

    Member ``s`` starts from ``make()`` called after ``torch.manual_seed(seeds[s])``, the same weights a separate
    run seeded so gets. Since SGD and Adam act elementwise and :func:`fit_epochs` backpropagates the sum of the
    members' losses, training the ensemble equals training the ``S`` networks one after the other (to float
    tolerance: the batched convolutions sum in another order).

    Modules that write buffers in the forward pass (BatchNorm in training mode) are not supported; DC's ConvNet
    (instance norm) and the networks without normalisation are.

    Shapes: ``forward(x)`` with ``x`` ``(S, B, ...)`` (member ``s`` sees ``x[s]``) or ``(B, ...)`` (every member sees
    the same batch) -> ``(S, B, ...)`` outputs.
    """

    def __init__(self, make: Callable[[], nn.Module], seeds: Sequence[int], *, input_ndim: int = 4):
        super().__init__()
        from torch.func import stack_module_state
        if len(seeds) < 1:
            raise ValueError("Ensemble: seeds must name at least one member")
        seeds = [check_seed(s, "Ensemble seed") for s in seeds]
        members = []
        for s in seeds:
            torch.manual_seed(s)
            members.append(make())
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in members[0].modules()):
            raise ValueError("Ensemble: BatchNorm layers update buffers in the forward pass and cannot be stacked; "
                             "use instance norm (e.g. models.ConvNet(norm='instancenorm')) or no normalisation")
        params, buffers = stack_module_state(members)
        self.seeds, self.input_ndim = list(seeds), input_ndim
        self.param_names, self.buffer_names = list(params), list(buffers)
        self.stacked = nn.ParameterList([nn.Parameter(params[k].detach().clone()) for k in self.param_names])
        for i, k in enumerate(self.buffer_names):
            self.register_buffer(f"buffer{i}", buffers[k].clone())
        self._base = [copy.deepcopy(members[0]).to("meta")]  # a list keeps it out of parameters() and state_dict

    def __len__(self) -> int:
        return len(self.seeds)

    def _state(self) -> tuple[dict, dict]:
        params = dict(zip(self.param_names, self.stacked))
        buffers = {k: getattr(self, f"buffer{i}") for i, k in enumerate(self.buffer_names)}
        return params, buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(S, B, ...)`` with ``input_ndim + 1`` dimensions (one batch per member) or ``(B, ...)`` with
        ``input_ndim`` (one batch for all) -> ``(S, B, ...)``."""
        from torch.func import functional_call, vmap
        if x.ndim not in (self.input_ndim, self.input_ndim + 1):
            raise ValueError(f"Ensemble: x must have {self.input_ndim} or {self.input_ndim + 1} dimensions, "
                             f"got shape {tuple(x.shape)}")
        if x.ndim == self.input_ndim + 1 and len(x) != len(self):
            raise ValueError(f"Ensemble: x has batches for {len(x)} members, the ensemble has {len(self)}")
        base = self._base[0].train(self.training)
        params, buffers = self._state()
        if isinstance(base, ConvNet):
            return self._grouped_convnet(base, params, x)
        call = lambda p, b, xs: functional_call(base, (p, b), (xs,))  # noqa: E731
        return vmap(call, in_dims=(0, 0, 0 if x.ndim == self.input_ndim + 1 else None))(params, buffers, x)

    def _grouped_convnet(self, base: ConvNet, params: dict, x: torch.Tensor) -> torch.Tensor:
        """DC's ConvNet for all members at once, as grouped convolutions on ``(B, S * C, H, W)`` feature maps (the
        same arithmetic as ``vmap``, about twice as fast on a CPU where ``vmap`` leaves strided layouts behind)."""
        S = len(self)
        if x.ndim == self.input_ndim:
            x = x.unsqueeze(0).expand(S, *x.shape)
        h = x.transpose(0, 1).flatten(1, 2)  # (B, S * C, H, W), member-major channels
        for name, layer in base.features.named_children():
            if isinstance(layer, nn.Conv2d):
                w, b = params[f"features.{name}.weight"], params[f"features.{name}.bias"]
                h = F.conv2d(h, w.flatten(0, 1), b.flatten(), layer.stride, layer.padding, groups=S)
            elif isinstance(layer, nn.GroupNorm):
                w, b = params[f"features.{name}.weight"], params[f"features.{name}.bias"]
                h = F.group_norm(h, S * layer.num_groups, w.flatten(), b.flatten(), layer.eps)
            else:  # ReLU, AvgPool2d: no parameters, act per channel
                h = layer(h)
        h = h.view(h.shape[0], S, -1).transpose(0, 1)  # (S, B, F)
        return torch.baddbmm(params["classifier.bias"].unsqueeze(1), h, params["classifier.weight"].transpose(1, 2))

    def member(self, s: int) -> nn.Module:
        """Member ``s`` as an ordinary ``nn.Module`` (a copy of its current weights, on the ensemble's device)."""
        params, buffers = self._state()
        net = copy.deepcopy(self._base[0]).to_empty(device=self.stacked[0].device)
        net.load_state_dict({**{k: v[s].detach() for k, v in params.items()},
                             **{k: v[s] for k, v in buffers.items()}})
        return net.train(self.training)


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int,
                     batch_size: int = 256, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                     lr_decay_at: Sequence[float] = (0.5,),
                     augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                     seed: int = 0, device: str | torch.device = "auto", progress: bool = False) -> list:
    """Train ``model`` with SGD and cross-entropy; the learning rate is multiplied by 0.1 at each fraction of
    ``epochs`` in ``lr_decay_at`` (DC's evaluation recipe by default).

    Args:
        model: a network, or an :class:`Ensemble` (then member ``s`` draws its batches and augmentations from its
            own seed ``model.seeds[s]``, and ``seed`` is unused).
        images: ``(N, C, H, W)`` float tensor; labels: ``(N,)`` int64 (or ``(N, K)`` soft targets).
        augment: optional ``augment(x, generator)`` applied to each training batch ``(B, C, H, W)``.
        seed: fixes the batch order and the augmentations.

    Returns:
        The mean training loss of every epoch (per member for an ensemble; see :func:`fit_epochs`).
    """
    dev = resolve_device(device)
    model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones(lr_decay_at, epochs), gamma=0.1)
    ensemble = isinstance(model, Ensemble)

    def batch_loss(idx, g):
        if not ensemble:
            x = images[idx].to(dev)
            return F.cross_entropy(model(x if augment is None else augment(x, g)), labels[idx].to(dev))
        x = images[idx].to(dev)  # (S, B, C, H, W)
        if augment is not None:
            x = torch.stack([augment(xs, gs) for xs, gs in zip(x, g)])
        logits = model(x)  # (S, B, K)
        y = labels[idx].to(dev)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(0, 1), reduction="none").view(y.shape[:2]).mean(1)

    return fit_epochs(batch_loss, len(images), epochs=epochs, batch_size=batch_size, optimizer=opt, scheduler=sched,
                      schedule_every="epoch", seed=model.seeds if ensemble else seed, progress=progress)
