"""Learning to impute labels for semi-supervised learning (L2I; Li, Foo, Bilen; arXiv 1912.10364).

A few labelled samples ``(x_l, y_l)`` and many unlabelled ones ``x_u``. A consistency-based learner (here the
**Mean Teacher** of Tarvainen and Valpola 2017) trains the student ``f_theta`` on the labelled loss plus a
consistency loss against the labels *imputed* for ``x_u`` by an EMA teacher. L2I asks which imputed labels
``y_u`` would make one training step on them best for the labelled data, and moves the imputation that way:

    theta'(y_u) = theta - alpha * grad_theta L_u(theta; x_u, y_u)            (a virtual SGD step)
    L_meta(y_u) = L_l(theta'(y_u); x_l, y_l)                                  (labelled loss after the step)
    y_u        <- y_u - eta * dL_meta / dy_u                                 (the "targets" variant, L2I-L)
    phi        <- phi - eta * dL_meta / dphi   with  y_u = f_phi(x_u)       (the "labeller" variant, L2I-O)

The virtual step and the evaluation at ``theta'`` are functional forwards (:func:`torch.func.functional_call`
on a parameter dictionary), so no parameter is ever copied by hand; the second-order term comes from autograd
(``create_graph=True``).

Tasks
    ``"classification"``: the network outputs logits; imputed labels are ``softmax(z)`` of imputed logits ``z``;
    consistency is the squared distance between probability vectors, the labelled loss cross-entropy.
    ``"regression"`` (landmarks): outputs are coordinates ``(N, 2L)`` in normalised units; imputations are the
    coordinates themselves; consistency and labelled loss are squared distances.

Contents
    kernels: :func:`impute`, :func:`supervised_loss`, :func:`consistency_loss`, :func:`rampup`,
    :func:`ema_update`, :func:`virtual_step`, :func:`meta_loss`, :func:`meta_grad_targets`,
    :func:`meta_grad_labeller`, :func:`pull_agreement`; the shifted views come from
    :func:`vklib.train.random_shift`, the landmark error from :func:`vklib.landmarks.iod_error`;
    training: :func:`fit` (supervised, Mean Teacher, L2I), :func:`evaluate`, :func:`build_model`,
    :class:`WideResNet` (WRN-28-2); data: :func:`labeled_split`, :func:`load_landmarks` (coordinates from
    :func:`vklib.data.to_normalized`) and ``_aflw_imm_full``, the reader of the paper's AFLW release that
    :mod:`vklib.data` registers as ``aflw_imm``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from . import data as _data
from . import models
from .landmarks import iod_error  # the landmark error of notebook 04, shared
from .train import gather, infer, random_shift
from .utils import resolve_device

__all__ = [
    "METHODS", "PROFILES", "TASKS", "VARIANTS", "FitResult", "WideResNet", "build_model", "consistency_loss",
    "ema_update", "evaluate", "fit", "impute", "labeled_split", "load_landmarks", "meta_grad_labeller",
    "meta_grad_targets", "meta_loss", "pull_agreement", "rampup", "supervised_loss", "virtual_step",
]

TASKS = ("classification", "regression")
METHODS = ("supervised", "mean_teacher", "l2i")
VARIANTS = ("targets", "labeller")

# ----------------------------------------------------------------------------------------------- settings
#: Profile defaults, resolved in the notebook with ``utils.resolve_profile(impute.PROFILES, profile, ...)``.
#: ``cls_*``: classification, ``reg_*``: landmark regression. ``consistency`` weights the per-sample squared
#: distance. The paper's classification code averages it over the 10 classes beside a cross-entropy, so its
#: lambda_u = 50 is 5.0 here; its regression code averages both the labelled and the consistency loss over the 10
#: coordinates, so its lambda_u = 75 stays 75. ``inner_lr`` is the virtual step's learning rate (alpha), ``meta_lr``
#: the step on the imputation (eta; for the labeller variant the weight of its gradient beside the Mean Teacher
#: gradient).
#: ``inspect_size``: the unlabelled images whose imputations section 3 of the notebook inspects.
PROFILES = {
    # 2 CPU cores, minutes: the shipped MNIST subset (5,000 train, 10,000 test) at 16 px and the shipped LFW
    # 5-point crops (1,000 train, 500 test) at 32 px; small ConvNets; L2I's meta step every third iteration.
    "quick": {
        "cls_dataset": "mnist", "cls_full": False, "cls_image_size": 16, "cls_test_size": None,
        "labels_per_class": 5, "labels_sweep": (3, 5, 10),
        "cls_model": "convnet", "cls_width": 16, "cls_depth": 2,
        "cls_steps": 1500, "cls_batch_labeled": 16, "cls_batch_unlabeled": 64, "cls_optimizer": "adam",
        "cls_lr": 3e-3, "cls_consistency": 3.0, "cls_max_shift": 1, "cls_noise": 0.1, "cls_padding": "zeros",
        "cls_inner_lr": 0.1, "cls_meta_lr": 0.5,
        "reg_dataset": "lfw_landmarks5", "reg_full": False, "reg_image_size": 32,
        "labeled_fraction": 0.05, "fraction_sweep": (0.02, 0.05, 0.2),
        "reg_model": "convnet", "reg_width": 16, "reg_depth": 2,
        "reg_steps": 300, "reg_batch_labeled": 16, "reg_batch_unlabeled": 32, "reg_optimizer": "adam",
        "reg_lr": 3e-3, "reg_consistency": 3.0, "reg_max_shift": 2, "reg_noise": 0.02, "reg_padding": "border",
        "reg_inner_lr": 1e-3, "reg_meta_lr": 0.1,
        "weight_decay": 0.0, "ema_decay": 0.95, "rampup": 0.3,
        "variant": "labeller", "meta_every": 3, "meta_batch": 32, "inspect_size": 200,
    },
    # A GPU and the full data: CIFAR-10 with 250 / 1,000 / 4,000 labels on WRN-28-2 with the schedule of the
    # paper's code (Adam 0.002, batch 64, 1024 x 1024 iterations, EMA 0.999, consistency ramped up over 40 %,
    # virtual step 50 x the learning rate on a batch-summed loss, i.e. 0.1 * 64 here); AFLW (the IMM release) with
    # 1 % labels, 150 x 150 iterations and lambda_u 75 as in the paper's regression code. Its optimiser (SGD with
    # momentum, 0.03, virtual step 0.3) belongs to its own network and standardised coordinates: on this ConvNet it
    # diverges to NaN within a few iterations on real faces, even supervised only, and at 1e-3 the consistency term
    # still blows the loss up a thousandfold. Adam 1e-3 (the paper's classification optimiser) with a virtual step
    # of 1e-4 stays bounded (shipped LFW faces at 60 px, tests/test_impute.py); not yet run on AFLW.
    "paper": {
        "cls_dataset": "cifar10", "cls_full": True, "cls_image_size": None, "cls_test_size": None,
        "labels_per_class": 25, "labels_sweep": (25, 100, 400),
        "cls_model": "wrn28_2", "cls_width": None, "cls_depth": None,
        "cls_steps": 1024 * 1024, "cls_batch_labeled": 64, "cls_batch_unlabeled": 64, "cls_optimizer": "adam",
        "cls_lr": 0.002, "cls_consistency": 5.0, "cls_max_shift": 4, "cls_noise": 0.0, "cls_padding": "reflection",
        "cls_inner_lr": 6.4, "cls_meta_lr": 1.0,
        "reg_dataset": "aflw_imm", "reg_full": True, "reg_image_size": 60,
        "labeled_fraction": 0.01, "fraction_sweep": (0.01, 0.05, 0.1),
        "reg_model": "convnet", "reg_width": 64, "reg_depth": 3,
        "reg_steps": 150 * 150, "reg_batch_labeled": 128, "reg_batch_unlabeled": 128, "reg_optimizer": "adam",
        "reg_lr": 1e-3, "reg_consistency": 75.0, "reg_max_shift": 4, "reg_noise": 0.0, "reg_padding": "reflection",
        "reg_inner_lr": 1e-4, "reg_meta_lr": 1.0,
        "weight_decay": 0.0, "ema_decay": 0.999, "rampup": 0.4,
        "variant": "labeller", "meta_every": 1, "meta_batch": 64, "inspect_size": 200,
    },
}
#: ``smoke``: the paper profile's code path on the miniature datasets of ``tests/miniatures`` (CIFAR-10: 10 training
#: and 5 test images per class; AFLW: 20 training and 4 test faces) in about a minute on 2 CPU cores; its numbers
#: mean nothing and are compared with none. It shrinks only counts: two iterations per run, batches of 4, label
#: counts that leave unlabelled images among 10 per class, 20 test images, 8 inspected imputations.
PROFILES["smoke"] = {**PROFILES["paper"], "labels_per_class": 2, "labels_sweep": (1, 2), "cls_test_size": 20,
                     "cls_steps": 2, "cls_batch_labeled": 4, "cls_batch_unlabeled": 4,
                     "reg_steps": 2, "reg_batch_labeled": 4, "reg_batch_unlabeled": 4, "meta_batch": 4,
                     "inspect_size": 8}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


# ============================================================================================ kernels
def impute(z: torch.Tensor, task: str) -> torch.Tensor:
    """Imputed labels from raw imputations ``z``: ``softmax(z)`` ``(N, K)`` for classification (``z`` are logits),
    ``z`` itself ``(N, D)`` for regression."""
    _check_task(task)
    return torch.softmax(z, dim=1) if task == "classification" else z


def supervised_loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """The labelled loss: cross-entropy of logits ``(N, K)`` with labels ``(N,)`` (int) or soft labels ``(N, K)``;
    for regression the mean over samples of the squared distance ``sum_d (out - y)^2`` with ``out, y`` ``(N, D)``."""
    _check_task(task)
    if task == "classification":
        return F.cross_entropy(out, y)
    if out.shape != y.shape:
        raise ValueError(f"regression outputs and targets differ in shape: {tuple(out.shape)} vs {tuple(y.shape)}")
    return (out - y).pow(2).sum(1).mean()


def consistency_loss(out: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Mean over samples of ``||p - t||^2``: ``p = softmax(out)`` (classification) or ``p = out`` (regression),
    against imputed targets ``t`` of the same shape ``(N, K)`` / ``(N, D)`` (probabilities / coordinates)."""
    _check_task(task)
    if out.shape != targets.shape:
        raise ValueError(f"outputs and imputed targets differ in shape: {tuple(out.shape)} vs "
                         f"{tuple(targets.shape)}")
    p = torch.softmax(out, dim=1) if task == "classification" else out
    return (p - targets).pow(2).sum(1).mean()


def rampup(step: float, length: float, kind: str = "sigmoid") -> float:
    """Consistency weight schedule in [0, 1]: ``exp(-5 (1 - t)^2)`` (Mean Teacher's sigmoid ramp-up) or ``t``
    (linear, the paper's code), ``t = clip(step / length, 0, 1)``; 1 when ``length <= 0``."""
    if kind not in ("sigmoid", "linear"):
        raise ValueError(f"rampup kind must be 'sigmoid' or 'linear', got {kind!r}")
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2)) if kind == "sigmoid" else float(t)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, step: int) -> float:
    """Mean Teacher: ``teacher <- a teacher + (1 - a) student`` for every parameter, ``a = min(1 - 1/(step + 1),
    decay)`` (a plain average early on); buffers (BatchNorm statistics) are copied. Returns ``a``."""
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


def _leaves(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def virtual_step(model: nn.Module, params: dict[str, torch.Tensor], x_u: torch.Tensor, targets: torch.Tensor,
                 task: str, inner_lr: float, buffers: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
    """One differentiable SGD step on the consistency loss against imputed ``targets``:
    ``theta' = theta - inner_lr * grad_theta consistency_loss(f_theta(x_u), targets)``.

    Args:
        model: the network (its own parameters are not used: ``params`` are, through ``functional_call``).
        params: name -> tensor, every tensor requiring grad (e.g. ``{k: v.detach().requires_grad_()}``).
        x_u: ``(N, C, H, W)`` unlabelled inputs; targets: ``(N, K)`` imputed labels (may require grad).
        buffers: BatchNorm statistics to run with (pass copies: a training-mode forward updates them).

    Returns:
        The adapted parameters ``theta'`` (same keys), still attached to the graph (``create_graph=True``), so a
        loss at ``theta'`` can be differentiated with respect to ``targets`` or to whatever produced them.
    """
    if inner_lr <= 0:
        raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
    names = list(params)
    out = functional_call(model, (params, buffers or {}), (x_u,))
    loss = consistency_loss(out, targets, task)
    grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=True, allow_unused=True)
    return {k: params[k] if g is None else params[k] - inner_lr * g for k, g in zip(names, grads)}


def meta_loss(model: nn.Module, params: dict[str, torch.Tensor], x_u: torch.Tensor, targets: torch.Tensor,
              x_l: torch.Tensor, y_l: torch.Tensor, task: str, inner_lr: float,
              buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The one-step learning-to-learn objective ``L_l(theta'(targets); x_l, y_l)``: the labelled loss of the
    parameters after :func:`virtual_step` on ``(x_u, targets)``. ``x_l`` ``(M, C, H, W)``; ``y_l`` ``(M,)`` class
    indices or ``(M, D)`` coordinates. Returns a scalar attached to ``targets``."""
    buf = {k: v.clone() for k, v in (buffers or {}).items()}
    adapted = virtual_step(model, params, x_u, targets, task, inner_lr, buf)
    return supervised_loss(functional_call(model, (adapted, buf), (x_l,)), y_l, task)


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
        x_u: ``(N, C, H, W)`` unlabelled batch; z: ``(N, K)`` raw imputations (logits, or coordinates).
        x_l, y_l: a labelled batch ``(M, C, H, W)`` and its labels.

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
    parameters: the paper's single network); it imputes ``z = f_phi(x_u_labeller) (+ offset)``, and the meta loss
    ``L_l(theta'(impute(z)))`` is differentiated with respect to ``phi``.

    Args:
        x_u: ``(N, C, H, W)`` the student's view of the unlabelled batch; x_u_labeller: the labeller's view (e.g.
            another augmentation of the same images).
        offset: optional ``(N, D)`` added to the labeller's raw outputs (regression: maps its coordinates into the
            student's view, e.g. the difference of two random shifts).

    Returns:
        ``(loss, grads)``: the detached meta loss and ``{name: dL/dphi}`` for every labeller parameter; with
        ``return_imputation`` also the labeller's raw imputation ``z`` ``(N, K)`` and ``dL/dz`` (both detached).
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


def build_model(kind: str, in_channels: int, outputs: int, image_size: int, width: int | None = None,
                depth: int | None = None) -> nn.Module:
    """``"convnet"``: :class:`vklib.models.ConvNet` with instance norm (``width``, ``depth``); ``"wrn28_2"``:
    :class:`WideResNet`. ``outputs`` is the number of classes, or ``2L`` coordinates for regression."""
    if kind == "convnet":
        return models.ConvNet(in_channels, outputs, image_size, width=width or 32, depth=depth or 3,
                              norm="instancenorm")
    if kind == "wrn28_2":
        return WideResNet(outputs, in_channels, 28, 2)
    raise ValueError(f"model must be 'convnet' or 'wrn28_2', got {kind!r}")


# ============================================================================================ training
@dataclass
class FitResult:
    """What :func:`fit` returns: the student, the EMA teacher (evaluate this one) and the logged history
    (lists keyed by name; ``step`` gives the iteration of each entry)."""

    student: nn.Module
    teacher: nn.Module
    history: dict[str, list[float]] = field(default_factory=dict)


def pull_agreement(grad_z: torch.Tensor, z: torch.Tensor, truth: torch.Tensor, task: str) -> float:
    """How well the labelled data pull the imputations towards the truth: the mean over samples of the cosine
    between ``-dL_meta/dz`` and ``-d loss(z, truth)/dz`` (``onehot(truth) - softmax(z)`` for classification,
    ``truth - z`` for regression). +1: the meta step moves every imputation straight towards its true label."""
    _check_task(task)
    if grad_z.shape != z.shape:
        raise ValueError(f"grad_z and z differ in shape: {tuple(grad_z.shape)} vs {tuple(z.shape)}")
    if task == "classification":
        towards = F.one_hot(truth, z.shape[1]).to(z.dtype) - torch.softmax(z, 1)
    else:
        towards = truth - z
    return F.cosine_similarity(-grad_z, towards, dim=1).mean().item()


def _imputation_quality(targets: torch.Tensor, truth: torch.Tensor, task: str) -> float:
    if task == "classification":
        return (targets.argmax(1) == truth).float().mean().item()
    return iod_error(targets.view(len(targets), -1, 2), truth.view(len(truth), -1, 2))


def fit(model: nn.Module, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, *, task: str, method: str,
        steps: int, batch_labeled: int = 32, batch_unlabeled: int = 64, lr: float = 3e-3, optimizer: str = "adam",
        weight_decay: float = 0.0, ema_decay: float = 0.95, consistency: float = 3.0, rampup_fraction: float = 0.3,
        variant: str = "labeller", inner_lr: float = 0.1, meta_lr: float = 0.5, meta_every: int = 1,
        meta_batch: int | None = None, max_shift: int = 2, noise: float = 0.0, padding_mode: str = "zeros",
        y_u: torch.Tensor | None = None, log_every: int = 10, seed: int = 0, device: str | torch.device = "auto",
        progress: bool = False, desc: str | None = None) -> FitResult:
    """Train ``model`` with the labelled set only, with Mean Teacher, or with Mean Teacher plus L2I.

    Every iteration draws a labelled batch and (unless ``method == "supervised"``) an unlabelled batch seen
    in two random views (shift by up to ``max_shift`` pixels plus Gaussian noise ``noise``): the EMA teacher
    imputes labels on one view, the student is trained on the other with ``supervised + w(t) * consistency``,
    ``w`` ramped up over the first ``rampup_fraction`` of the iterations. With ``method == "l2i"`` the imputation
    is improved by the meta-gradient of :func:`meta_loss` on another labelled batch every ``meta_every`` iterations:
    ``variant="targets"`` moves the teacher's imputed logits / coordinates by ``-meta_lr * grad`` before they are
    used; ``variant="labeller"`` adds ``meta_lr`` times the gradient with respect to the labeller (the student
    itself, on the teacher's view) to the student's gradient, one combined update per iteration (the paper's code
    takes a second optimiser step with it instead).

    Args:
        x_l, y_l: labelled images ``(M, C, H, W)`` and labels ``(M,)`` (int) or coordinates ``(M, 2L)``
            (normalised units, ``(x, y)`` pairs).
        x_u: unlabelled images ``(U, C, H, W)``.
        y_u: optional true labels of ``x_u``, used only to log how good the imputations are (never for training).
        seed: fixes batches, views and the initial teacher copy (the model's own initialisation is the caller's).

    Returns:
        :class:`FitResult` with history keys ``step``, ``supervised``, ``consistency``, ``weight`` and, for L2I,
        ``meta_loss`` (NaN at logged iterations without a meta step). With ``y_u``: ``impute_before`` (quality of
        the teacher's imputations: accuracy, or the IOD error as a fraction), for L2I ``pull``
        (:func:`pull_agreement` of the meta-gradient, NaN without a meta step) and, for the targets variant,
        ``impute_after`` (after the meta step).
    """
    _check_task(task)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if steps < 1 or batch_labeled < 1 or batch_unlabeled < 1 or meta_every < 1 or log_every < 1:
        raise ValueError("steps, batch sizes, meta_every and log_every must be >= 1")
    if len(x_l) != len(y_l) or len(x_l) == 0:
        raise ValueError(f"need a non-empty labelled set with one label per image, got {len(x_l)} images and "
                         f"{len(y_l)} labels")
    if method != "supervised" and len(x_u) == 0:
        raise ValueError(f"method {method!r} needs unlabelled images")
    if y_u is not None and len(y_u) != len(x_u):
        raise ValueError(f"y_u must hold one label per unlabelled image: {len(y_u)} vs {len(x_u)}")
    regression = task == "regression"
    dev = resolve_device(device)
    student = model.to(dev).train()
    teacher = copy.deepcopy(student).to(dev).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = list(student.parameters())
    opt = (torch.optim.Adam(params, lr=lr, weight_decay=weight_decay) if optimizer == "adam" else
           torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True))
    g = torch.Generator().manual_seed(seed)
    size = x_l.shape[-1]
    hist: dict[str, list[float]] = {k: [] for k in ("step", "supervised", "consistency", "weight")}
    if method == "l2i":
        hist["meta_loss"] = []
    if y_u is not None and method != "supervised":
        hist["impute_before"] = []
        if method == "l2i":
            hist["pull"] = []
            if variant == "targets":
                hist["impute_after"] = []

    def view(x):
        xs, s = random_shift(x.to(dev), max_shift, g, padding_mode)
        if noise > 0:
            xs = xs + noise * torch.randn(xs.shape, generator=g).to(dev)
        return xs, s.to(dev, torch.float32) * (2.0 / size)  # shifts in normalised units

    def shift_targets(y, s):  # (N, 2L) coordinates moved with their image
        return y + s.repeat(1, y.shape[1] // 2)

    for step in tqdm(range(steps), desc=desc or method, disable=not progress, leave=False):
        log = step % log_every == 0 or step == steps - 1
        do_meta = method == "l2i" and step % meta_every == 0
        il = torch.randint(len(x_l), (batch_labeled,), generator=g)
        xl, sl = view(x_l[il])
        yl = y_l[il].to(dev)
        if regression:
            yl = shift_targets(yl, sl)
        w = consistency * rampup(step, rampup_fraction * steps)
        truth = None
        if method == "supervised":
            sup = supervised_loss(student(xl), yl, task)
            loss, cons = sup, torch.zeros(())
        else:
            iu = torch.randint(len(x_u), (batch_unlabeled,), generator=g)
            xu = x_u[iu]
            xu1, s1 = view(xu)
            xu2, s2 = view(xu)
            offset = shift_targets(torch.zeros(len(iu), y_l.shape[1], device=dev), s1 - s2) if regression else None
            with torch.no_grad():
                z = teacher(xu2)  # the teacher imputes on view 2 (regression: moved into view 1)
                if regression:
                    z = z + offset
            if do_meta:
                im = (torch.randperm(len(x_l), generator=g) if meta_batch is None or meta_batch >= len(x_l) else
                      torch.randint(len(x_l), (meta_batch,), generator=g))
                xm, sm = view(x_l[im])
                ym = y_l[im].to(dev)
                if regression:
                    ym = shift_targets(ym, sm)
            if log and y_u is not None:  # diagnostics only: the true labels never enter training
                truth = shift_targets(y_u[iu].to(dev), s1) if regression else y_u[iu].to(dev)
                hist["impute_before"].append(_imputation_quality(impute(z, task), truth, task))
            if do_meta and variant == "targets":
                mloss, gz = meta_grad_targets(student, xu1, z, xm, ym, task, inner_lr)
                if truth is not None:
                    hist["pull"].append(pull_agreement(gz, z, truth, task))
                z = z - meta_lr * gz
            if truth is not None and "impute_after" in hist:
                hist["impute_after"].append(_imputation_quality(impute(z, task), truth, task))
                if not do_meta:
                    hist["pull"].append(float("nan"))
            out = student(torch.cat([xl, xu1]))
            sup = supervised_loss(out[:batch_labeled], yl, task)
            cons = consistency_loss(out[batch_labeled:], impute(z, task).detach(), task)
            loss = sup + w * cons
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if do_meta and variant == "labeller":
            if truth is not None:
                mloss, grads, zl, gz = meta_grad_labeller(student, xu1, xu2, xm, ym, task, inner_lr, offset=offset,
                                                          return_imputation=True)
                hist["pull"].append(pull_agreement(gz, zl, truth, task))
            else:
                mloss, grads = meta_grad_labeller(student, xu1, xu2, xm, ym, task, inner_lr, offset=offset)
            for name, p in student.named_parameters():
                p.grad.add_(grads[name], alpha=meta_lr)
        elif truth is not None and method == "l2i" and variant == "labeller":
            hist["pull"].append(float("nan"))
        opt.step()
        ema_update(teacher, student, ema_decay, step)
        if log:
            hist["step"].append(step)
            hist["supervised"].append(sup.item())
            hist["consistency"].append(float(cons.detach()))
            hist["weight"].append(w)
            if method == "l2i":
                hist["meta_loss"].append(mloss.item() if do_meta else float("nan"))
    return FitResult(student.eval(), teacher.eval(), hist)


def evaluate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, task: str, *, batch_size: int = 500,
             device: str | torch.device = "auto") -> float:
    """Test metric of ``model`` on ``images`` ``(N, C, H, W)``: top-1 accuracy (a fraction) for classification with
    ``targets`` ``(N,)``; for regression with ``targets`` ``(N, 2L)`` normalised coordinates the mean landmark error
    as a fraction of the inter-ocular distance (:func:`vklib.landmarks.iod_error`)."""
    _check_task(task)
    if len(images) != len(targets):
        raise ValueError(f"images and targets differ in length: {len(images)} vs {len(targets)}")
    out = infer(model, images, batch_size=batch_size, device=device)
    if task == "classification":
        return (out.argmax(1) == targets).float().mean().item()
    return iod_error(out.view(len(out), -1, 2), targets.view(len(targets), -1, 2))


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
