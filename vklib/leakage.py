"""Deep leakage from gradients: the kernels of notebook 02 (DLG, Zhu et al., NeurIPS 2019; iDLG, Zhao, Mopuri,
Bilen, arXiv 2001.02610; batch label counting; Inverting Gradients, Geiping et al. 2020). The notebook writes the
attacks themselves on these kernels.

Threat model: a client shares the gradient ``G = dL(f_theta(x), y)/dtheta`` of its loss on private samples; the
attacker knows the weights ``theta`` and ``G`` and wants ``x`` and ``y``.

Every kernel handles ``A`` attacks at once (a leading attack axis): the victims (:func:`sample_victims`,
:func:`batched_forward`: LeNets as unfold + ``bmm``) and their gradients (:func:`victim_gradients`,
:func:`dummy_gradients`); the objectives (:func:`gradient_distance`, :func:`cosine_distance`,
:func:`total_variation`); the label rules (:func:`extract_label`, :func:`count_labels`); :func:`lbfgs`, ``A``
copies of ``torch.optim.LBFGS`` without line search stepped together; metrics (:func:`mse`, :func:`psnr`,
:func:`ssim`, :func:`wilson`) and DLG's defences (:func:`defend`). :func:`attack_set` loads the attacked images
(:data:`ATTACK_SETS`); the full LFW (``lfw/<name>/*.jpg``) is registered in :mod:`vklib.data` as ``"lfw"`` and
read by :func:`_lfw_full`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data as _data
from .models import LeNetSigmoid

__all__ = [
    "ACTIVATIONS", "ATTACK_SETS", "DEFENCES", "attack_set", "batched_forward", "cosine_distance", "count_labels",
    "defend", "dummy_gradients", "extract_label", "gradient_distance", "lbfgs", "mse", "psnr", "sample_victims",
    "ssim", "total_variation", "victim_gradients", "wilson",
]

# ----------------------------------------------------------------------------------------------- settings
#: The datasets an attack can target: the image side the victim sees and the split the attacked images come from,
#: per dataset name in :mod:`vklib.data` (:func:`attack_set`).
ATTACK_SETS = {
    "mnist": {"size": 28, "split": "train"},
    "cifar10": {"size": 32, "split": "test"},
    "cifar100": {"size": 32, "split": "train"},
    "lfw_people": {"size": 32, "split": "all"},
    "lfw": {"size": 32, "split": "all"},
}
DEFENCES = ("noise", "prune")
#: The victim's activation: DLG/iDLG's sigmoid LeNet, or the same LeNet with ReLUs (Inverting Gradients' setting).
ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}
#: Per-layer gradients with a leading attack axis, ``(A, *shape)`` each: a dict by parameter name, or a sequence.
Grads = Mapping[str, torch.Tensor] | Sequence[torch.Tensor]


# ----------------------------------------------------------------------------------------------- data
def _lfw_full(root: Path, split: str, download: bool, size) -> _data.ImageSet:
    """The full LFW for :mod:`vklib.data`: ``<root>/lfw/<Person_Name>/*.jpg``, RGB, one class a person."""
    return _data.class_folders("lfw", split, root / "lfw", size=size)


def attack_set(name: str, n: int, *, generator: torch.Generator, data_dir=None, full: bool = False) -> _data.ImageSet:
    """``n`` random images of dataset ``name`` as the papers feed them to the victim: in [0, 1], not normalised;
    MNIST 28x28 grey, CIFAR 32x32 RGB, the full LFW resized to 32x32 RGB (the authors' ``Resize``), the shipped LFW
    people (62x47 grey) centre-cropped to 47x47 and resized to 32x32.

    Returns:
        An :class:`~vklib.data.ImageSet` with ``images`` ``(n, C, S, S)``, ``labels`` ``(n,)`` and ``classes``.
    """
    if name not in ATTACK_SETS:
        raise ValueError(f"unknown dataset {name!r} for the attacks; allowed: {', '.join(ATTACK_SETS)}")
    spec = ATTACK_SETS[name]
    ds = _data.load(name, spec["split"], data_dir=data_dir, full=full,
                    size=None if name == "lfw_people" else spec["size"])
    if n < 1 or n > len(ds):
        raise ValueError(f"n must be in [1, {len(ds)}] for {name}, got {n}")
    pick = torch.randperm(len(ds), generator=generator)[:n]
    ds = ds.subset(pick)
    x = ds.images if torch.is_tensor(ds.images) else torch.stack(list(ds.images))
    if name == "lfw_people":                      # 62x47 -> the central 47x47 square -> 32x32
        h, w = x.shape[-2:]
        x = F.interpolate(x[..., (h - w) // 2:(h - w) // 2 + w, :], size=(spec["size"],) * 2, mode="bilinear",
                          antialias=True, align_corners=False).clamp_(0, 1)
    return _data.ImageSet(name, ds.split, x.contiguous(), ds.labels, ds.classes, {"index": pick}, ds.source)


# ----------------------------------------------------------------------------------------------- victims
def sample_victims(model: nn.Module, n: int, *, generator: torch.Generator, init: str = "uniform",
                   low: float = -0.5, high: float = 0.5) -> dict[str, torch.Tensor]:
    """``n`` independent victims with ``model``'s architecture, as ``{name: (n, *shape)}`` in
    ``model.named_parameters()`` order. ``init="uniform"``: every parameter from U(low, high) (DLG and iDLG);
    ``"default"``: PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (the scale a ReLU network needs)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if init not in ("uniform", "default"):
        raise ValueError(f"init must be 'uniform' or 'default', got {init!r}")
    out, fan_in = {}, 1
    for k, p in model.named_parameters():
        if init == "default":
            fan_in = math.prod(p.shape[1:]) if p.ndim > 1 else fan_in   # a bias follows its weight
            low, high = -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in)
        out[k] = torch.rand((n, *p.shape), generator=generator).mul_(high - low).add_(low)
    return out


def _lenet_conv(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int) -> torch.Tensor:
    a, c, s, _ = h.shape
    cols = F.unfold(h, w.shape[-1], padding=w.shape[-1] // 2, stride=stride)       # (A, c*k*k, L)
    out = torch.baddbmm(b.unsqueeze(-1), w.reshape(a, w.shape[1], -1), cols)       # (A, c_out, L)
    side = (s + 2 * (w.shape[-1] // 2) - w.shape[-1]) // stride + 1
    return out.view(a, w.shape[1], side, side)


def batched_forward(model: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                    activation: str = "sigmoid") -> torch.Tensor:
    """``(A, K)`` logits of ``A`` victims, victim ``i`` (parameters ``params[k][i]``, ``{name: (A, *shape)}``) on
    image ``x[i]`` (``x``: ``(A, C, H, W)``); ``model`` gives the architecture only. A
    :class:`~vklib.models.LeNetSigmoid` runs as unfold + batched matrix products (fast on CPUs), with the activation
    ``activation`` (a key of :data:`ACTIVATIONS`); any other model through ``torch.func.vmap(functional_call)``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if isinstance(model, LeNetSigmoid) and list(params) == [k for k, _ in model.named_parameters()]:
        p = list(params.values())
        strides = [m.stride[0] for m in model.body if isinstance(m, nn.Conv2d)]
        h = x
        for i, stride in enumerate(strides):
            h = ACTIVATIONS[activation](_lenet_conv(h, p[2 * i], p[2 * i + 1], stride))
        return torch.baddbmm(p[-1].unsqueeze(-1), p[-2], h.flatten(1).unsqueeze(-1)).squeeze(-1)
    if activation != "sigmoid":
        raise ValueError("activation applies to a LeNetSigmoid only; other models bring their own")
    from torch.func import functional_call, vmap
    return vmap(lambda p, xi: functional_call(model, p, (xi[None],))[0])(dict(params), x)


def dummy_gradients(model: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor, soft: torch.Tensor,
                    *, create_graph: bool = True, activation: str = "sigmoid") -> list[torch.Tensor]:
    """``[(A, *shape)]`` in ``params`` order: the gradients of ``CE(f_i(x[i]), soft[i])`` with respect to victim
    ``i``'s parameters (``params``: ``{name: (A, *shape)}``; ``x``: ``(A, C, H, W)``; ``soft``: ``(A, K)``
    probabilities, a one-hot label or DLG's softmax of dummy label logits). ``create_graph`` keeps the graph so that
    a distance to the shared gradient can be differentiated with respect to ``x`` and ``soft`` (the attacks)."""
    ps = [v.detach().requires_grad_(True) for v in params.values()]
    with torch.enable_grad():
        logits = batched_forward(model, dict(zip(params, ps)), x, activation)
        loss = -(soft * logits.log_softmax(-1)).sum()        # A independent one-sample losses, summed
        return list(torch.autograd.grad(loss, ps, create_graph=create_graph))


def victim_gradients(model: nn.Module, params: Mapping[str, torch.Tensor], images: torch.Tensor,
                     labels: torch.Tensor, *, batch: int = 1, activation: str = "sigmoid") -> dict[str, torch.Tensor]:
    """The gradients the clients share, ``{name: (A, *shape)}``: victim ``i`` (``params``: ``{name: (A, *shape)}``)
    trained with cross-entropy, mean over its ``batch`` consecutive samples of ``images`` ``(A * batch, C, H, W)``
    and ``labels`` ``(A * batch,)`` (``batch=1``: DLG/iDLG's setting)."""
    n_att = len(next(iter(params.values())))
    if batch < 1 or len(images) != len(labels) or len(images) != n_att * batch or any(
            len(p) != n_att for p in params.values()):
        raise ValueError(f"params, images and labels need one entry per attack (batch={batch} images each); got "
                         f"{len(images)} images, {len(labels)} labels and parameters with "
                         f"{[len(p) for p in params.values()][:1]} rows")
    k = list(params.values())[-1].shape[1]           # the last layer's (A, K) bias or (A, K, F) weight
    rep = {name: v.repeat_interleave(batch, 0) for name, v in params.items()}
    g = dummy_gradients(model, rep, images, F.one_hot(labels, k).to(images.dtype), create_graph=False,
                        activation=activation)
    return {name: t.detach().view(n_att, batch, *t.shape[1:]).mean(1) for name, t in zip(params, g)}


# ----------------------------------------------------------------------------------------------- the core loss
def gradient_distance(dummy: Grads, target: Grads) -> torch.Tensor:
    """DLG's objective ``(A,)``: ``sum_layers ||dummy_l[i] - target_l[i]||^2`` for each attack ``i``, from
    per-layer gradients ``(A, *shape)`` (dicts with the same keys, or sequences in the same order)."""
    a, b = _layer_pairs(dummy, target)
    return sum((u - v).pow(2).flatten(1).sum(1) for u, v in zip(a, b))


def cosine_distance(dummy: Grads, target: Grads) -> torch.Tensor:
    """Inverting Gradients' objective ``(A,)`` in [0, 2]: one minus the cosine similarity of two gradients, all
    layers flattened into one vector per attack (Geiping et al. 2020, eq. 4; their code's ``cost_fn="sim"``); the
    gradients as in :func:`gradient_distance`."""
    dummy, target = _layer_pairs(dummy, target)
    dot = sum((u * v).flatten(1).sum(1) for u, v in zip(dummy, target))
    nu = sum(u.pow(2).flatten(1).sum(1) for u in dummy)
    nv = sum(v.pow(2).flatten(1).sum(1) for v in target)
    return 1 - dot / (nu.sqrt() * nv.sqrt()).clamp_min(1e-12)


def _layer_pairs(dummy: Grads, target: Grads) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The layers of two gradients (dicts or sequences) as two lists, checked to match in names, count and shapes."""
    a = list(dummy.values()) if isinstance(dummy, Mapping) else list(dummy)
    b = list(target.values()) if isinstance(target, Mapping) else list(target)
    if isinstance(dummy, Mapping) and isinstance(target, Mapping) and list(dummy) != list(target):
        raise ValueError(f"dummy and target gradients name different layers: {list(dummy)} vs {list(target)}")
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same non-zero number of layers, got {len(a)} and {len(b)}")
    for u, v in zip(a, b):
        if u.shape != v.shape:
            raise ValueError(f"layer shapes differ: {tuple(u.shape)} vs {tuple(v.shape)}")
    return a, b


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation ``(A,)`` of images ``(A, C, H, W)``: the mean absolute difference of horizontal
    neighbours plus that of vertical neighbours (the image prior of Inverting Gradients)."""
    if x.ndim != 4:
        raise ValueError(f"x must be (A, C, H, W), got shape {tuple(x.shape)}")
    return ((x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
            + (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1))


# ----------------------------------------------------------------------------------------------- iDLG's label rule
def extract_label(fc_weight_grad: torch.Tensor, *, strict: bool = True, rtol: float = 1e-3) -> torch.Tensor:
    """iDLG's label rule: the true class is the row of the last layer's weight gradient whose entries sum negative.

    Assumptions (checked when ``strict``): the gradient comes from **one** sample (batch size 1), trained with
    cross-entropy on a one-hot label, through a last layer ``o = W a + b`` whose inputs ``a`` are non-negative
    (sigmoid, ReLU). Then ``dL/dW = (p - y) a^T`` is rank one, its rows share the sign pattern of ``a``, and only
    the true class has ``p_i - y_i < 0``. A gradient averaged over a batch of several samples is a sum of such
    matrices (rank > 1, several negative rows): the rule is then no longer exact (:func:`count_labels` counts them).

    ``fc_weight_grad``: ``(K, F)`` for one shared gradient or ``(A, K, F)`` for ``A``; returns ``()`` or ``(A,)``
    int64 labels. ``strict=False`` applies the rule regardless (e.g. to noisy or pruned gradients); ``rtol``: the
    relative residual above which the gradient does not count as rank one.
    """
    g = fc_weight_grad
    if g.ndim not in (2, 3):
        raise ValueError(f"fc_weight_grad must be (K, F) or (A, K, F), got shape {tuple(g.shape)}")
    single = g.ndim == 2
    g = g.unsqueeze(0) if single else g
    if g.shape[1] < 2:
        raise ValueError(f"need at least two classes, got K={g.shape[1]}")
    sums = g.sum(-1)                                               # (A, K)
    if strict:
        gd = g.double()
        norms = gd.norm(dim=-1)                                    # (A, K)
        a = gd[torch.arange(len(gd)), norms.argmax(1)]             # the largest row ~ +-a
        if (norms.amax(1) == 0).any():
            raise ValueError("extract_label: an all-zero gradient carries no label (is the loss already zero?)")
        mixed = (a > 0).any(1) & (a < 0).any(1)
        coef = (gd @ a.unsqueeze(-1)) / a.pow(2).sum(1)[:, None, None]
        resid = (gd - coef * a.unsqueeze(1)).flatten(1).norm(dim=1) / gd.flatten(1).norm(dim=1)
        bad = resid > rtol
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"extract_label: the last layer's weight gradient {i} is not rank one (relative residual "
                f"{float(resid[i]):.2g} > rtol={rtol}): it does not come from a single sample with cross-entropy "
                f"on a one-hot label (batch size > 1, added noise, pruning?). iDLG's rule needs batch "
                f"size 1; pass strict=False to apply it anyway.")
        if mixed.any():
            raise ValueError("extract_label: the inputs of the last layer take both signs, so the row sums do not "
                             "reveal the label (the rule needs non-negative features, e.g. sigmoid or ReLU)")
        if ((sums < 0).sum(1) > 1).any():
            raise ValueError("extract_label: more than one row of the gradient sums negative; the gradient does not "
                             "come from a single sample with a one-hot label (a soft or smoothed label?)")
    labels = sums.argmin(1)
    return labels[0] if single else labels


def count_labels(fc_bias_grad: torch.Tensor, mean_probs: torch.Tensor, batch: int) -> torch.Tensor:
    """A counting rule for the labels of a batch of ``batch`` samples, from the last layer's bias gradient.

    With cross-entropy averaged over the batch, ``dL/db_i = mean_n p_ni - c_i / B``, ``c_i`` the number of samples
    of class ``i``. So ``c_i = B (pbar_i - dL/db_i)`` given the batch's mean prediction ``pbar``, which the attacker
    estimates (``mean_probs``, e.g. the victim's mean softmax on public images: it knows the weights). The labels are
    then taken one at a time, each time the class with the largest remaining count, whose count drops by one: the
    greedy step of Wainakh et al. 2022's LLG, here on the bias gradient.

    ``fc_bias_grad``: ``(A, K)`` for ``A`` shared gradients; ``mean_probs``: ``(A, K)`` estimates of ``pbar``.
    Returns ``(A, K)`` int64 counts, each row summing to ``batch``.
    """
    if fc_bias_grad.ndim != 2 or mean_probs.shape != fc_bias_grad.shape:
        raise ValueError(f"fc_bias_grad and mean_probs must both be (A, K), got {tuple(fc_bias_grad.shape)} and "
                         f"{tuple(mean_probs.shape)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    left = batch * (mean_probs.double() - fc_bias_grad.double())      # (A, K) estimated counts
    counts = torch.zeros(left.shape, dtype=torch.long, device=left.device)
    rows = torch.arange(len(left), device=left.device)
    for _ in range(batch):
        top = left.argmax(1)
        counts[rows, top] += 1
        left[rows, top] -= 1
    return counts


# ----------------------------------------------------------------------------------------------- batched L-BFGS
def lbfgs(fun: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x0: torch.Tensor, *,
          steps: int, lr: float = 1.0, max_iter: int = 20, max_eval: int | None = None,
          tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
          stop_loss: float | None = None, callback: Callable[[int, torch.Tensor], None] | None = None,
          progress: bool | str = False) -> dict:
    """``A`` independent L-BFGS runs at once, each a faithful copy of ``torch.optim.LBFGS`` without line search
    (fixed step ``lr``; the first step scaled by ``min(1, 1/|g|_1)``) called ``steps`` times.

    Args:
        fun: ``fun(x, idx)`` -> ``(loss (n,), grad (n, D))`` for the rows ``idx`` (``(n,)`` int64 indices into the
            ``A`` problems) at points ``x`` ``(n, D)``; the problems must be independent.
        x0: ``(A, D)`` starting points.
        steps: calls of the optimiser's ``step`` (the papers' "iterations").
        lr, max_iter, max_eval, tolerance_grad, tolerance_change, history_size: as ``torch.optim.LBFGS``.
        stop_loss: a problem stops once its loss falls below this (checked after each step).
        callback: ``callback(step, x)`` after every step with all ``(A, D)`` current points.

    Returns:
        dict with ``x`` ``(A, D)``, ``losses`` ``(A, steps + 1)`` (loss before the first step and after each step;
        a stopped problem keeps its last value), ``evals`` ``(A,)`` function evaluations, ``converged`` (stopped
        below ``stop_loss``) and ``diverged`` (a non-finite loss or gradient; ``x`` is then the last finite point).
    """
    if steps < 0 or max_iter < 1 or history_size < 1:
        raise ValueError(f"need steps >= 0, max_iter >= 1, history_size >= 1; got {steps}, {max_iter}, "
                         f"{history_size}")
    if x0.ndim != 2:
        raise ValueError(f"x0 must be (A, D), got shape {tuple(x0.shape)}")
    max_eval = max_eval if max_eval is not None else max_iter * 5 // 4
    n_all, dim = x0.shape
    dev, dt = x0.device, x0.dtype
    X = x0.detach().clone()
    losses = torch.zeros(n_all, steps + 1, dtype=dt, device=dev)
    evals = torch.zeros(n_all, dtype=torch.long, device=dev)
    converged = torch.zeros(n_all, dtype=torch.bool, device=dev)
    diverged = torch.zeros(n_all, dtype=torch.bool, device=dev)
    m = history_size
    # state of the running problems (rows follow `ids`)
    ids = torch.arange(n_all, device=dev)
    x = X.clone()
    d = torch.zeros_like(x)
    t = torch.zeros(n_all, dtype=dt, device=dev)
    prev_g = torch.zeros_like(x)
    prev_loss = torch.zeros(n_all, dtype=dt, device=dev)
    n_iter = torch.zeros(n_all, dtype=torch.long, device=dev)
    h_diag = torch.ones(n_all, dtype=dt, device=dev)
    S = torch.zeros(n_all, m, dim, dtype=dt, device=dev)
    Y = torch.zeros_like(S)
    SY = torch.zeros(n_all, m, m, dtype=torch.float64, device=dev)   # SY[i, j] = s_i . y_j (slot order)
    YY = torch.zeros_like(SY)
    count = torch.zeros(n_all, dtype=torch.long, device=dev)
    head = torch.zeros(n_all, dtype=torch.long, device=dev)

    def evaluate(rows: torch.Tensor, xr: torch.Tensor):
        loss, g = fun(xr, ids[rows])
        evals[ids[rows]] += 1
        return loss.detach(), g.detach()

    bar = tqdm(range(steps + 1), desc=progress if isinstance(progress, str) else "L-BFGS", disable=not progress,
               leave=False)
    for step in bar:
        if len(ids) == 0:   # every problem has stopped: the remaining steps keep the final points
            losses[:, step:] = losses[:, step - 1:step]
            if callback is not None:
                for later in range(step, steps + 1):
                    callback(later, X)
            break
        rows = torch.arange(len(ids), device=dev)
        loss, g = evaluate(rows, x)
        bad = ~torch.isfinite(loss) | ~torch.isfinite(g).all(1)
        if bad.any():   # a non-finite point: step back to the last finite point and stop the problem
            x[bad] -= d[bad] * t[bad, None]
            diverged[ids[bad]] = True
        X[ids] = x
        losses[ids[~bad], step] = loss[~bad]
        losses[ids[bad], step] = prev_loss[bad]
        done = bad.clone()
        if stop_loss is not None:
            hit = ~bad & (loss < stop_loss)
            converged[ids[hit]] = True
            done |= hit
        if callback is not None:
            callback(step, X)
        if step == steps:
            break
        if done.any():  # drop finished problems from every state tensor
            stopped = ids[done]
            losses[stopped, step + 1:] = losses[stopped, step:step + 1]
            keep = ~done
            ids, x, d, t, prev_g, prev_loss, n_iter, h_diag, S, Y, SY, YY, count, head, loss, g = (
                v[keep] for v in (ids, x, d, t, prev_g, prev_loss, n_iter, h_diag, S, Y, SY, YY, count, head, loss, g))
            if len(ids) == 0:
                continue
        active = g.abs().amax(1) > tolerance_grad
        current_evals, k = 1, 0
        while active.any():
            k += 1
            first = active & (n_iter == 0)
            n_iter += active.long()
            # L-BFGS direction from each problem's own history (compact form of the two-loop recursion)
            upd = active & ~first
            y = g - prev_g
            s = d * t[:, None]
            ys = (y * s).sum(1)
            accept = upd & (ys > 1e-10)
            if accept.any():
                head, count = _push_pair(S, Y, SY, YY, head, count, s, y, accept)
                h_diag = torch.where(accept, ys / (y * y).sum(1), h_diag)
            count = torch.where(first, 0, count)
            head = torch.where(first, 0, head)
            h_diag = torch.where(first, torch.ones_like(h_diag), h_diag)
            r = _lbfgs_direction(S, Y, SY, YY, head, count, h_diag, -g) if upd.any() else d
            d = torch.where(first[:, None], -g, torch.where(upd[:, None], r, d))
            prev_g = torch.where(active[:, None], g, prev_g)
            prev_loss = torch.where(active, loss, prev_loss)
            t_first = torch.clamp(1.0 / g.abs().sum(1), max=1.0) * lr
            t = torch.where(first, t_first, torch.where(active, torch.full_like(t, lr), t))
            gtd = (g * d).sum(1)
            active = active & ~(gtd > -tolerance_change)
            x = torch.where(active[:, None], x + t[:, None] * d, x)
            ls_evals = 0
            if k != max_iter and active.any():
                rows = active.nonzero().squeeze(1)
                l_new, g_new = evaluate(rows, x[rows])
                loss = loss.index_copy(0, rows, l_new)
                g = g.index_copy(0, rows, g_new)
                ls_evals = 1
            current_evals += ls_evals
            if k == max_iter or current_evals >= max_eval:
                break
            finite = torch.isfinite(loss) & torch.isfinite(g).all(1)
            opt_cond = g.abs().amax(1) <= tolerance_grad
            small_step = (d * t[:, None]).abs().amax(1) <= tolerance_change
            flat = (loss - prev_loss).abs() < tolerance_change
            active = active & finite & ~opt_cond & ~small_step & ~flat
        if progress and len(ids):
            bar.set_postfix(running=len(ids), refresh=False)
    return {"x": X, "losses": losses, "evals": evals, "converged": converged, "diverged": diverged}


def _dots(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(n, m, D), (n, D) -> (n, m)``: the dot products of each row's ``m`` vectors with its ``v`` (a row vector
    times the transposed matrix: much faster on CPUs than a batched matrix-vector product)."""
    return torch.bmm(v.unsqueeze(1), M.transpose(1, 2)).squeeze(1)


def _combine(M: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(n, m, D), (n, m) -> (n, D)``: each row's combination ``sum_j w_j M_j``."""
    return torch.bmm(w.unsqueeze(1), M).squeeze(1)


def _push_pair(S, Y, SY, YY, head, count, s, y, accept):
    """Store the pair ``(s, y)`` of the rows ``accept`` in each row's ring buffer slot ``head`` and update the
    inner products ``SY[i, j] = s_i . y_j`` and ``YY[i, j] = y_i . y_j``; returns the new ``head`` and ``count``."""
    rows = accept.nonzero().squeeze(1)
    h = head[rows]
    S[rows, h] = s[rows]
    Y[rows, h] = y[rows]
    col = _dots(S, y)[rows].double()     # s_i . y_new
    row = _dots(Y, s)[rows].double()     # s_new . y_j
    yy = _dots(Y, y)[rows].double()
    SY[rows, :, h] = col
    SY[rows, h, :] = row
    YY[rows, :, h] = yy
    YY[rows, h, :] = yy
    m = S.shape[1]
    return torch.where(accept, (head + 1) % m, head), torch.where(accept, (count + 1).clamp(max=m), count)


def _lbfgs_direction(S, Y, SY, YY, head, count, gamma, v):
    """``H v`` for each row, ``H`` the L-BFGS inverse-Hessian approximation built from the row's ``count`` newest
    pairs with ``H0 = gamma I``, in the compact form of Byrd, Nocedal and Schnabel (1994):
    ``H v = gamma v + S p - gamma Y u`` with ``u = R^-1 S^T v``, ``p = R^-T ((D + gamma Y^T Y) u - gamma Y^T v)``,
    ``R`` the upper triangle of ``S^T Y`` and ``D`` its diagonal (pairs in chronological order). Equal to the
    two-loop recursion of ``torch.optim.LBFGS`` in exact arithmetic, with a fixed number of batched operations."""
    n, m, _ = S.shape
    c = torch.arange(m, device=S.device)
    perm = (head[:, None] - count[:, None] + c) % m                   # slot of the c-th oldest pair
    valid = c[None] < count[:, None]
    both = valid[:, :, None] & valid[:, None, :]
    g64 = gamma.double()[:, None]
    a = _dots(S, v).double().gather(1, perm) * valid
    b = g64 * _dots(Y, v).double().gather(1, perm) * valid
    ar = torch.arange(n, device=S.device)[:, None, None]
    sy = SY[ar, perm[:, :, None], perm[:, None, :]]
    yy = YY[ar, perm[:, :, None], perm[:, None, :]]
    R = torch.where(both & (c[:, None] <= c[None, :]), sy, 0.0) + torch.diag_embed((~valid).double())
    M = torch.diag_embed(torch.where(valid, sy.diagonal(dim1=1, dim2=2), 0.0)) + g64[:, :, None] * torch.where(
        both, yy, 0.0)
    u = torch.linalg.solve_triangular(R, a.unsqueeze(-1), upper=True)
    p = torch.linalg.solve_triangular(R.transpose(1, 2), M @ u - b.unsqueeze(-1), upper=False)
    u = torch.zeros_like(a).scatter(1, perm, u.squeeze(-1) * valid).to(v.dtype)
    p = torch.zeros_like(a).scatter(1, perm, p.squeeze(-1) * valid).to(v.dtype)
    return (gamma[:, None] * v + _combine(S, p)
            - gamma[:, None] * _combine(Y, u))


# ----------------------------------------------------------------------------------------------- metrics, defences
def mse(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error ``(A,)`` between ``(A, C, H, W)`` reconstructions and the private images."""
    if recon.shape != truth.shape:
        raise ValueError(f"shapes differ: {tuple(recon.shape)} vs {tuple(truth.shape)}")
    return (recon.float() - truth.float()).pow(2).flatten(1).mean(1)


def psnr(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB ``(A,)`` for images in [0, 1]: ``10 log10(1 / MSE)`` (``inf`` for a perfect copy)."""
    return -10.0 * torch.log10(mse(recon, truth))


def ssim(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image structural similarity ``(A,)`` (scikit-image's ``structural_similarity``: 7x7 windows, data range
    1, channels averaged) between ``(A, C, H, W)`` reconstructions clamped to [0, 1] and the private images."""
    from skimage.metrics import structural_similarity
    if recon.shape != truth.shape or recon.ndim != 4:
        raise ValueError(f"need two (A, C, H, W) tensors of one shape, got {tuple(recon.shape)} and "
                         f"{tuple(truth.shape)}")
    a = recon.detach().float().clamp(0, 1).cpu().numpy()
    b = truth.detach().float().cpu().numpy()
    return torch.tensor([structural_similarity(u, v, data_range=1.0, channel_axis=0) for u, v in zip(a, b)])


def wilson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of a rate of ``successes`` in ``trials`` independent trials
    (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``)."""
    from scipy.stats import binomtest
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def defend(grads: Mapping[str, torch.Tensor], kind: str, level: float, *,
           generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A defended copy of shared gradients ``{name: (A, *shape)}``.

    ``kind="noise"``: add Gaussian noise with standard deviation ``level`` to every entry (DLG's noisy gradients;
    drawn on the CPU from ``generator``). ``kind="prune"``: in every layer of every attack, set the fraction
    ``level`` of entries with the smallest magnitude to zero (DLG's gradient pruning / compression).
    """
    if kind not in DEFENCES:
        raise ValueError(f"kind must be one of {', '.join(DEFENCES)}, got {kind!r}")
    if kind == "noise":
        if level < 0:
            raise ValueError(f"noise level (std) must be >= 0, got {level}")
        return {k: v + level * torch.randn(v.shape, generator=generator).to(v) for k, v in grads.items()}
    if not 0 <= level < 1:
        raise ValueError(f"prune level (fraction pruned) must be in [0, 1), got {level}")
    out = {}
    for k, v in grads.items():
        flat = v.flatten(1)
        n_cut = int(level * flat.shape[1])
        if n_cut == 0:
            out[k] = v.clone()
            continue
        order = torch.sort(flat.abs(), dim=1, stable=True).indices[:, :n_cut]
        out[k] = flat.scatter(1, order, 0.0).view_as(v)
    return out
