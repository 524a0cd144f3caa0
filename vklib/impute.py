"""Learning to impute labels for semi-supervised learning (L2I; Li, Foo, Bilen; arXiv 1912.10364): the kernels.

A few labelled samples ``(x_l, y_l)`` and many unlabelled ones ``x_u``. A consistency-based learner (here the
**Mean Teacher** of Tarvainen and Valpola 2017) trains the student ``f_theta`` on the labelled loss plus a
consistency loss against the labels *imputed* for ``x_u`` by an EMA teacher. L2I asks which imputed labels
``y_u`` would make one training step on them best for the labelled data, and moves the imputation that way:

    theta'(y_u) = theta - alpha * grad_theta L_v(theta; x_u, y_u)            (a virtual SGD step)
    L_meta(y_u) = L_l(theta'(y_u); x_l, y_l)                                  (labelled loss after the step)
    y_u        <- y_u - eta * dL_meta / dy_u                                 (the "targets" variant, L2I-L)
    phi        <- phi - eta * dL_meta / dphi   with  y_u = f_phi(x_u)       (the "labeller" variant, L2I-O)

The training loop itself (Mean Teacher, the two-step L2I-O update of the official code, its one-step variant) is
written out in notebook 05; this module keeps what it runs on: losses, the virtual step and the meta-gradients
(functional forwards with :func:`torch.func.functional_call`, second order from autograd), the networks
(WRN-28-2 for CIFAR-10, the TCDCNN landmark regressor of the official code), the random views, metrics and readers.

Every loss accepts leading *member* dimensions: outputs ``(S, N, K)`` of ``S`` networks trained in one pass
(:class:`vklib.train.Ensemble`) give ``(S,)`` losses, one per member (sum them to train all members at once); a
plain ``(N, K)`` gives a scalar.

Tasks
    ``"classification"``: the network outputs logits; imputed labels are ``softmax(z)`` of imputed logits ``z``.
    ``"regression"`` (landmarks): outputs are standardised coordinates ``(N, 2L)``; imputations are the coordinates.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from . import data as _data
from . import models
from .landmarks import iod_error  # the landmark error of notebook 04, shared
from .train import Ensemble, gather, infer, random_shift

__all__ = [
    "TASKS", "VARIANTS", "TCDCNN", "WideResNet", "build_members", "build_model", "consistency_loss", "ema_update",
    "evaluate", "impute", "imputation_quality", "labeled_split", "load_landmarks", "meta_grad_labeller",
    "meta_grad_targets", "meta_loss", "rampup", "supervised_loss", "take", "to_grey", "views",
    "virtual_loss", "virtual_step",
]

TASKS = ("classification", "regression")
VARIANTS = ("targets", "labeller")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def _same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


# ============================================================================================ losses
def impute(z: torch.Tensor, task: str) -> torch.Tensor:
    """Imputed labels from raw imputations ``z`` ``(..., N, K)``: ``softmax(z)`` for classification (``z`` are
    logits), ``z`` itself for regression."""
    _check_task(task)
    return torch.softmax(z, dim=-1) if task == "classification" else z


def supervised_loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """The labelled loss, one value per member: outputs ``(..., N, K)``; classification: the cross-entropy with
    class indices ``(..., N)``, averaged over ``N``; regression: the squared error with targets ``(..., N, D)``
    averaged over samples and coordinates (``nn.MSELoss``, the official code's). Returns ``(...)``."""
    _check_task(task)
    if task == "classification":
        if out.shape[:-1] != y.shape:
            raise ValueError(f"logits {tuple(out.shape)} need labels of shape {tuple(out.shape[:-1])}, "
                             f"got {tuple(y.shape)}")
        ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
        return ce.view(y.shape).mean(-1)
    _same_shape(out, y, "regression outputs and targets")
    return (out - y).pow(2).mean((-2, -1))


def consistency_loss(out: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Mean Teacher's consistency, one value per member: the mean over samples and classes (coordinates) of
    ``(p - t)^2``, ``p = softmax(out)`` (classification) or ``p = out`` (regression), against imputed targets ``t``
    of the shape of ``out`` ``(..., N, K)``. Returns ``(...)``. (The official ``SemiLoss`` / regression ``Lu``.)"""
    _check_task(task)
    _same_shape(out, targets, "outputs and imputed targets")
    return (impute(out, task) - targets).pow(2).mean((-2, -1))


def virtual_loss(out: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """The consistency loss of L2I's virtual step, as in the official code, one value per member: classification
    ``sum_{n,k} (softmax(out) - t)^2`` (a sum, not a mean, so the step ``alpha = 50 lr`` acts on a batch sum);
    regression ``mean_{n,d} (tanh(out) - tanh(t))^2`` (tanh bounds the pull of far-off coordinates). Shapes as
    :func:`consistency_loss`."""
    _check_task(task)
    _same_shape(out, targets, "outputs and imputed targets")
    if task == "classification":
        return (torch.softmax(out, -1) - targets).pow(2).sum((-2, -1))
    return (torch.tanh(out) - torch.tanh(targets)).pow(2).mean((-2, -1))


def rampup(step: float, length: float) -> float:
    """The official code's linear ramp-up of the consistency weight: ``clip(step / length, 0, 1)``; 1 when
    ``length <= 0``."""
    if length <= 0:
        return 1.0
    return float(min(max(step / length, 0.0), 1.0))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, step: int) -> float:
    """Mean Teacher: ``teacher <- a teacher + (1 - a) student`` for every parameter, ``a = min(1 - 1/(step + 1),
    decay)`` (a plain average early on, the official ``UpdateEma``); buffers (BatchNorm statistics) are copied.
    Works on stacked members alike (one lerp over all parameters). Returns ``a``."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    a = min(1.0 - 1.0 / (step + 1), decay)
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student must have the same architecture")
    torch._foreach_lerp_(t_params, s_params, 1.0 - a)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)
    return a


# ============================================================================================ the meta step
def _leaves(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def virtual_step(model: nn.Module, params: dict[str, torch.Tensor], x_u: torch.Tensor, targets: torch.Tensor,
                 task: str, inner_lr: float, buffers: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
    """One differentiable SGD step on :func:`virtual_loss` against imputed ``targets``:
    ``theta' = theta - inner_lr * grad_theta virtual_loss(f_theta(x_u), targets)`` (summed over members).

    Args:
        model: the network (its own parameters are not used: ``params`` are, through ``functional_call``).
        params: name -> tensor, every tensor requiring grad (e.g. ``{k: v.detach().requires_grad_()}``).
        x_u: unlabelled inputs as the model takes them; targets: imputed labels of the model's output shape
            (may require grad).
        buffers: BatchNorm statistics to run with (pass copies: a training-mode forward updates them).

    Returns:
        The adapted parameters ``theta'`` (same keys), still attached to the graph (``create_graph=True``).
    """
    if inner_lr <= 0:
        raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
    names = list(params)
    out = functional_call(model, (params, buffers or {}), (x_u,))
    loss = virtual_loss(out, targets, task).sum()
    grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=True, allow_unused=True)
    return {k: params[k] if g is None else params[k] - inner_lr * g for k, g in zip(names, grads)}


def meta_loss(model: nn.Module, params: dict[str, torch.Tensor], x_u: torch.Tensor, targets: torch.Tensor,
              x_l: torch.Tensor, y_l: torch.Tensor, task: str, inner_lr: float,
              buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The one-step learning-to-learn objective ``L_l(theta'(targets); x_l, y_l)``: the labelled loss of the
    parameters after :func:`virtual_step` on ``(x_u, targets)``, summed over members. ``y_l``: class indices or
    standardised coordinates of the model's output shape. Returns a scalar attached to ``targets``."""
    buf = {k: v.clone() for k, v in (buffers or {}).items()}
    adapted = virtual_step(model, params, x_u, targets, task, inner_lr, buf)
    return supervised_loss(functional_call(model, (adapted, buf), (x_l,)), y_l, task).sum()


def _named(model: nn.Module, params) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = dict(model.named_parameters()) if params is None else params
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    return _leaves(params), buffers


def meta_grad_targets(model: nn.Module, x_u: torch.Tensor, z: torch.Tensor, x_l: torch.Tensor, y_l: torch.Tensor,
                      task: str, inner_lr: float, params: dict[str, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The meta-gradient with respect to the imputation itself (the "targets" variant, L2I-L).

    Args:
        model: the student network ``f_theta``; its current parameters (or ``params``) are ``theta``.
        x_u: the unlabelled batch; z: raw imputations (logits, or coordinates) of the model's output shape.
        x_l, y_l: a labelled batch and its labels.

    Returns:
        ``(loss, grad)``: the detached meta loss ``L_l(theta')`` and ``dL_l(theta')/dz`` of the shape of ``z``.
    """
    theta, buffers = _named(model, params)
    z = z.detach().requires_grad_(True)
    loss = meta_loss(model, theta, x_u, impute(z, task), x_l, y_l, task, inner_lr, buffers)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


def meta_grad_labeller(model: nn.Module, x_u: torch.Tensor, x_u_labeller: torch.Tensor, x_l: torch.Tensor,
                       y_l: torch.Tensor, task: str, inner_lr: float, params: dict[str, torch.Tensor] | None = None,
                       labeller_params: dict[str, torch.Tensor] | None = None, offset: torch.Tensor | None = None,
                       return_imputation: bool = False):
    """The meta-gradient with respect to the labeller's parameters (the "labeller" variant, L2I-O).

    The labeller is the same architecture with parameters ``phi`` (by default a detached copy of the student's own
    parameters: the official code's ``tmp_model``); it imputes ``z = f_phi(x_u_labeller) (+ offset)``, and the meta
    loss ``L_l(theta'(impute(z)))`` is differentiated with respect to ``phi`` only.

    Args:
        x_u: the student's view of the unlabelled batch; x_u_labeller: the labeller's view (another augmentation).
        offset: optional, of the output's shape, added to the labeller's raw outputs (regression: moves its
            coordinates into the student's view, e.g. the difference of two random shifts).

    Returns:
        ``(loss, grads)``: the detached meta loss and ``{name: dL/dphi}`` for every labeller parameter; with
        ``return_imputation`` also the labeller's raw imputation ``z`` and ``dL/dz`` (both detached).
    """
    theta, buffers = _named(model, params)
    phi = _leaves(dict(labeller_params) if labeller_params is not None else theta)
    z = functional_call(model, (phi, {k: v.clone() for k, v in buffers.items()}), (x_u_labeller,))
    if offset is not None:
        z = z + offset
    loss = meta_loss(model, theta, x_u, impute(z, task), x_l, y_l, task, inner_lr, buffers)
    names = list(phi)
    grad_z, *grads = torch.autograd.grad(loss, [z] + [phi[k] for k in names], allow_unused=True)
    grads = {k: torch.zeros_like(phi[k]) if g is None else g for k, g in zip(names, grads)}
    if return_imputation:
        return loss.detach(), grads, z.detach(), grad_z
    return loss.detach(), grads


# ============================================================================================ views, metrics
def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-member rows: ``x`` ``(S, N, ...)`` and indices ``idx`` ``(S, B)`` -> ``x[s, idx[s]]`` ``(S, B, ...)``."""
    if x.ndim < 2 or idx.ndim != 2 or len(x) != len(idx):
        raise ValueError(f"take needs x (S, N, ...) and idx (S, B) with the same S, got {tuple(x.shape)} and "
                         f"{tuple(idx.shape)}")
    return x[torch.arange(len(x))[:, None], idx]


def views(x: torch.Tensor, max_shift: int, generator: torch.Generator, *, flip: bool = False, noise: float = 0.0,
          padding_mode: str = "reflection") -> tuple[torch.Tensor, torch.Tensor]:
    """Random views of images ``x`` ``(..., C, H, W)`` (any leading dimensions): each image shifted by its own
    whole-pixel ``(dx, dy)`` in ``[-max_shift, max_shift]`` (:func:`vklib.train.random_shift`, one batched
    ``grid_sample``), mirrored left-right with probability 1/2 when ``flip`` (classification only: a flip would
    swap the left and right landmarks), plus Gaussian noise of std ``noise``. Returns the views and the shifts
    ``(..., 2)`` in pixels."""
    lead, img = x.shape[:-3], x.shape[-3:]
    flat, shifts = random_shift(x.reshape(-1, *img), max_shift, generator, padding_mode)
    if flip:
        mirror = (torch.rand(len(flat), generator=generator) < 0.5).to(x.device)
        flat = torch.where(mirror[:, None, None, None], flat.flip(-1), flat)
    if noise > 0:
        flat = flat + noise * torch.randn(flat.shape, generator=generator).to(x.device)
    return flat.view(*lead, *img), shifts.view(*lead, 2).to(x.device, x.dtype)


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """RGB ``(..., 3, H, W)`` -> grey ``(..., 1, H, W)`` with PIL's ITU-R 601 luma weights (0.299, 0.587, 0.114),
    as the official regression code's ``to_grayscale``."""
    if x.shape[-3] != 3:
        raise ValueError(f"to_grey needs RGB images (..., 3, H, W), got shape {tuple(x.shape)}")
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * w).sum(-3, keepdim=True)


def imputation_quality(targets: torch.Tensor, truth: torch.Tensor, task: str) -> torch.Tensor:
    """How good imputed labels (or predictions) are, one value per member: the accuracy of ``argmax`` for
    classification (``targets`` ``(..., N, K)`` probabilities or logits, ``truth`` ``(..., N)`` class indices); for
    regression the mean landmark error as a fraction of the inter-ocular distance (``targets``, ``truth``
    ``(..., N, 2L)`` coordinates in one frame, e.g. normalised units: :func:`vklib.landmarks.iod_error`).
    Returns ``(...)``."""
    _check_task(task)
    if task == "classification":
        if targets.shape[:-1] != truth.shape:
            raise ValueError(f"targets {tuple(targets.shape)} need class indices of shape "
                             f"{tuple(targets.shape[:-1])}, got {tuple(truth.shape)}")
        return (targets.argmax(-1) == truth).float().mean(-1)
    _same_shape(targets, truth, "imputed and true coordinates")
    n, d = targets.shape[-2:]
    per_image = iod_error(targets.reshape(-1, d // 2, 2), truth.reshape(-1, d // 2, 2), reduce=False)
    return per_image.view(targets.shape[:-1]).mean(-1)


def evaluate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, task: str, *, batch_size: int = 500,
             unstandardise=None, device: str | torch.device = "auto") -> torch.Tensor:
    """Test metric of ``model`` on ``images`` ``(N, C, H, W)``: top-1 accuracy (a fraction) for classification with
    ``targets`` ``(N,)``; for regression with ``targets`` ``(N, 2L)`` normalised coordinates the mean landmark error
    as a fraction of the inter-ocular distance, the outputs first mapped to normalised coordinates by
    ``unstandardise`` (e.g. ``lambda z: z * std + mean``). Returns ``(S,)`` for a model of ``S`` members
    (:func:`build_members`), a 0-dim tensor for a plain network."""
    _check_task(task)
    if len(images) != len(targets):
        raise ValueError(f"images and targets differ in length: {len(images)} vs {len(targets)}")
    if isinstance(model, Ensemble):
        out = infer(model, images, batch_size=batch_size, device=device)  # (S, N, K)
    else:  # a plain network (N, K), or a one-member model (1, N, K)
        out = infer(model, images, batch_size=batch_size, device=device,
                    fn=lambda m, x: m(x).transpose(0, 1) if isinstance(m, _OneMember) else m(x))
        out = out.transpose(0, 1) if isinstance(model, _OneMember) else out
    if unstandardise is not None:
        out = unstandardise(out)
    return imputation_quality(out, targets.expand(*out.shape[:-2], *targets.shape), task)


# ============================================================================================ networks
class _WideBlock(nn.Module):
    """Pre-activation wide-ResNet block (BN - LeakyReLU(0.1) - conv3x3, twice, plus a 1x1 shortcut)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in, momentum=0.001), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out, momentum=0.001), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.leaky_relu(self.bn1(x), 0.1)
        y = self.conv2(F.leaky_relu(self.bn2(self.conv1(o)), 0.1))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-k of the semi-supervised benchmarks (Oliver et al. 2018; WRN-28-2: 1.5 M parameters).

    Shapes: ``(N, in_channels, 32, 32)`` -> logits ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, depth: int = 28, widen: int = 2):
        super().__init__()
        if (depth - 4) % 6 or widen < 1:
            raise ValueError(f"depth must be 6n + 4 and widen >= 1, got depth={depth}, widen={widen}")
        n, widths = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, c = [], widths[0]
        for i, w in enumerate(widths[1:]):
            for b in range(n):
                blocks.append(_WideBlock(c, w, 2 if (i > 0 and b == 0) else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c, momentum=0.001)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.bn(self.blocks(self.stem(x))), 0.1)
        return self.fc(h.mean(dim=(2, 3)))


class TCDCNN(nn.Module):
    """The landmark regressor of the official L2I code (after TCDCN, Zhang et al. 2014): grey input, four
    convolutions (5x5, 5x5, 3x3, 3x3; 20, 48, 64, 80 channels times ``width``) with hardtanh, max-pooling after the
    first three, a 256-unit fully connected layer (no activation, as in the official code) and a linear output.
    At the official 60 px the last feature map is 3 x 3 (720 features); other sizes get their own count.

    Shapes: ``(N, in_channels, S, S)`` -> ``(N, outputs)``.
    """

    def __init__(self, outputs: int = 10, in_channels: int = 1, image_size: int = 60, width: float = 1.0):
        super().__init__()
        c = [max(1, int(round(k * width))) for k in (20, 48, 64, 80)]
        self.conv1, self.conv2 = nn.Conv2d(in_channels, c[0], 5), nn.Conv2d(c[0], c[1], 5)
        self.conv3, self.conv4 = nn.Conv2d(c[1], c[2], 3), nn.Conv2d(c[2], c[3], 3)
        s = (((image_size - 4) // 2 - 4) // 2 - 2) // 2 - 2
        if s < 1:
            raise ValueError(f"TCDCNN needs images of at least 46 px, got {image_size}")
        self.fc = nn.Linear(c[3] * s * s, int(round(256 * width)))
        self.linear = nn.Linear(int(round(256 * width)), outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.max_pool2d(F.hardtanh(conv(x)), 2)
        return self.linear(self.fc(F.hardtanh(self.conv4(x)).flatten(1)))


def build_model(kind: str, in_channels: int, outputs: int, image_size: int, width: float | None = None,
                depth: int | None = None) -> nn.Module:
    """``"convnet"``: :class:`vklib.models.ConvNet` with instance norm (``width``, ``depth``); ``"wrn28_2"``:
    :class:`WideResNet`; ``"tcdcnn"``: :class:`TCDCNN` (``width`` scales its channels). ``outputs`` is the number
    of classes, or ``2L`` coordinates for regression."""
    if kind == "convnet":
        return models.ConvNet(in_channels, outputs, image_size, width=int(width or 32), depth=depth or 3,
                              norm="instancenorm")
    if kind == "wrn28_2":
        return WideResNet(outputs, in_channels, 28, 2)
    if kind == "tcdcnn":
        return TCDCNN(outputs, in_channels, image_size, width or 1.0)
    raise ValueError(f"model must be 'convnet', 'wrn28_2' or 'tcdcnn', got {kind!r}")


class _OneMember(nn.Module):
    """A network that cannot be stacked (BatchNorm) as a one-member model: ``(1, B, ...)`` or ``(B, ...)`` inputs ->
    ``(1, B, K)`` outputs, the interface of :class:`vklib.train.Ensemble`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[0] if x.ndim == 5 else x).unsqueeze(0)


def build_members(kind: str, seeds, in_channels: int, outputs: int, image_size: int, width=None, depth=None
                  ) -> nn.Module:
    """The networks of ``seeds`` as one model with ``S = len(seeds)`` members (member ``s`` initialised after
    ``torch.manual_seed(seeds[s])``): inputs ``(S, B, C, H, W)`` (or ``(B, C, H, W)`` for all) -> outputs
    ``(S, B, K)``. A :class:`vklib.train.Ensemble` (one pass for all seeds); BatchNorm networks (``wrn28_2``)
    cannot be stacked and take exactly one seed."""
    make = lambda: build_model(kind, in_channels, outputs, image_size, width, depth)  # noqa: E731
    if kind == "wrn28_2":
        if len(seeds) != 1:
            raise ValueError(f"seeds: the BatchNorm network {kind!r} trains one seed per run, got {len(seeds)} "
                             f"(use seeds=1)")
        torch.manual_seed(seeds[0])
        return _OneMember(make())
    return Ensemble(make, list(seeds))


# ============================================================================================ data
def labeled_split(n_or_labels, *, per_class: int | None = None, fraction: float | None = None, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(labelled, unlabelled)`` of a training set: ``per_class`` random samples of every class (give the
    ``(N,)`` labels) or a random ``fraction`` of ``N`` samples (give ``N`` or any labels); the rest is unlabelled."""
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class and fraction")
    g = torch.Generator().manual_seed(seed)
    if per_class is not None:
        labels = torch.as_tensor(n_or_labels)
        if labels.ndim != 1:
            raise ValueError("per_class needs the (N,) integer labels")
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        picks = []
        for c in labels.unique():
            idx = torch.nonzero(labels == c).flatten()
            if len(idx) <= per_class:
                raise ValueError(f"class {int(c)} has {len(idx)} samples; per_class={per_class} leaves none "
                                 f"unlabelled")
            picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
        lab = torch.cat(picks).sort().values
        n = len(labels)
    else:
        n = n_or_labels if isinstance(n_or_labels, int) else len(n_or_labels)
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        k = max(1, int(round(fraction * n)))
        lab = torch.randperm(n, generator=g)[:k].sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[lab] = False
    return lab, torch.nonzero(mask).flatten()


def load_landmarks(name: str, split: str, *, full: bool = False, data_dir=None, size: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Face images ``(N, C, S, S)`` and their landmarks as normalised coordinates ``(N, 2L)`` (``(x, y)`` pairs,
    :func:`vklib.data.to_normalized`) from a registered landmark dataset (``lfw_landmarks5``, ``aflw_imm``)."""
    ds = _data.load(name, split, data_dir=data_dir, full=full, size=size)
    if "landmarks" not in ds.meta:
        raise _data.DataError(f"dataset {name!r} has no landmarks")
    x = gather(ds.images, torch.arange(len(ds.images)))
    pts = _data.to_normalized(torch.as_tensor(ds.meta["landmarks"], dtype=torch.float32), x.shape[-1])
    return x, pts.reshape(len(x), -1)


# ----------------------------------------------------------------------------------------------- AFLW (IMM release)
def _aflw_imm_full(root: Path, split: str, download: bool, size):
    """The AFLW release used by the paper's code (from the IMM repository of Jakab et al.): ``aflw_release-2/``
    with ``aflw_{train,test}_images.txt`` (one file name per line, relative to ``output/``) and
    ``aflw_{train,test}_keypoints.mat`` (``gt``: ``(N, 5, 2)`` as (y, x) in image pixels; ``hw``: ``(N, 2)`` the
    images' sizes, which the images themselves give here). Faces resized to ``size`` (60 by default, the paper's
    code), landmarks ``(N, 5, 2)`` as (x, y) pixels of the resized image."""
    from PIL import Image
    from scipy.io import loadmat
    folder = root / "aflw_release-2"
    listing, keypoints = folder / f"aflw_{split}_images.txt", folder / f"aflw_{split}_keypoints.mat"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} not found")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    pts = torch.from_numpy(np.asarray(loadmat(keypoints)["gt"], np.float32)[:, :, [1, 0]])
    if pts.shape != (len(names), 5, 2):
        raise _data.DataError(f"aflw_imm: {keypoints.name} holds landmarks of shape {tuple(pts.shape)}, expected "
                              f"({len(names)}, 5, 2) for the {len(names)} images of {listing.name}")
    out = size or 60
    imgs = []
    for i, name in enumerate(names):
        with Image.open(folder / "output" / name) as im:
            w, h = im.size
            imgs.append(np.asarray(im.convert("RGB").resize((out, out), Image.BILINEAR)))
            pts[i, :, 0] *= out / w
            pts[i, :, 1] *= out / h
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div_(255)
    return _data.ImageSet("aflw_imm", split, x, None, None, {"landmarks": pts, "files": names}, "full")
