"""Deep leakage from gradients: DLG (Zhu et al., NeurIPS 2019) and iDLG (Zhao, Mopuri, Bilen, arXiv 2001.02610).

Threat model
    A client of federated / collaborative learning computes the gradient of its training loss on one private
    sample ``(x, y)`` and shares it. The attacker (e.g. the server) knows the model's weights and the shared
    gradient ``G = dL(f_theta(x), y)/dtheta``, and wants ``x`` and ``y``.
Label extraction (iDLG)
    With cross-entropy on a one-hot label, the last layer ``o = W a + b`` gets the weight gradient
    ``dL/dW_i = (p_i - y_i) a``. With non-negative inputs ``a`` (sigmoid or ReLU features) the row of the true class
    is the only one whose entries are <= 0, so ``y = argmin_i sum_j dL/dW_ij`` (:func:`extract_label`).
Data reconstruction
    Optimise a dummy image ``x'`` (and, for DLG, dummy label logits ``l'``) so that its gradient matches the shared
    one: ``min ||dL(f(x'), softmax(l'))/dtheta - G||^2`` summed over layers (:func:`gradient_distance`), with L-BFGS
    (lr 1, 300 iterations). DLG optimises ``x'`` and ``l'`` together (:func:`dlg_attack`); iDLG first extracts the
    label, then optimises ``x'`` alone (:func:`idlg_attack`).

Many attacks at once
    Every trial of the papers attacks a freshly initialised victim (LeNet, sigmoid, weights U(-0.5, 0.5)) with one
    image. Here ``A`` trials run together: the victims' parameters are stacked along a leading attack axis
    (:func:`sample_victims`), :func:`batched_forward` evaluates all ``A`` LeNets with batched matrix products
    (unfold + ``bmm``), and :func:`lbfgs` is an L-BFGS that keeps one independent state per attack, a faithful
    batched copy of ``torch.optim.LBFGS`` (no line search), so each attack follows the trajectory it would follow
    alone. Finished attacks leave the batch, so converged attacks cost nothing.

Defences
    :func:`defend` adds Gaussian noise to the shared gradient or prunes its smallest entries (DLG's section 5).

Datasets
    :func:`attack_set` loads the images an attack targets (:data:`ATTACK_SETS`). The paper profile reads the full
    MNIST and CIFAR-100 (torchvision) and the full LFW; LFW (all 13,233 images of 5,749 people, the original
    ``lfw/<name>/*.jpg`` layout) is registered in :mod:`vklib.data` as ``"lfw"`` (full loader only), read by
    :func:`_lfw_full` here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data as _data
from .models import LeNetSigmoid

__all__ = [
    "ATTACK_SETS", "AttackResult", "DEFENCES", "PROFILES", "attack_set", "batched_forward", "defend", "dlg_and_idlg",
    "dlg_attack", "extract_label", "gradient_distance", "idlg_attack", "invert_gradients", "lbfgs", "mse", "psnr",
    "sample_victims", "summarise", "victim_gradients",
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

PROFILES = {
    "quick": {
        "datasets": ["mnist", "cifar10", "lfw_people"],  # shipped subsets (CIFAR-10 and LFW people stand in)
        "full_data": False,
        "n_label": 200,          # label-extraction trials per dataset (one fresh victim each)
        "n_recon": 8,            # reconstruction trials per dataset and method
        "iterations": 100,       # L-BFGS steps (the paper: 300), each up to max_iter inner iterations
        "lr": 1.0,
        "max_iter": 20,
        "history_size": 100,
        "stop_loss": 1e-6,       # an attack stops once the gradient distance is below this (the authors' code)
        "success_mse": 1e-3,     # a reconstruction succeeds when its MSE to the private image is below this
        "snapshot_every": 5,     # keep the reconstructions every this many iterations (for the figures)
        "defence_dataset": "mnist",
        "defence_n": 4,          # images per defence setting (the first trials of defence_dataset)
        "defence_iterations": 50,  # L-BFGS steps of the defence attacks
        "noise_std": [1e-4, 1e-3, 1e-2, 1e-1],
        "prune_ratio": [0.1, 0.2, 0.4, 0.7],
        "chunk": 64,             # trials whose victims and gradients are held in memory at once
    },
    "paper": {
        "datasets": ["mnist", "cifar100", "lfw"],
        "full_data": True,
        "n_label": 1000,
        "n_recon": 1000,
        "iterations": 300,
        "lr": 1.0,
        "max_iter": 20,
        "history_size": 100,
        "stop_loss": 1e-6,
        "success_mse": 1e-3,
        "snapshot_every": 10,
        "defence_dataset": "cifar100",
        "defence_n": 50,
        "defence_iterations": 300,
        "noise_std": [1e-4, 1e-3, 1e-2, 1e-1],
        "prune_ratio": [0.1, 0.2, 0.4, 0.7],
        "chunk": 50,
    },
}
#: ``smoke``: the paper profile's code path on the miniature datasets of ``tests/miniatures`` (the full readers of
#: MNIST, CIFAR-100 and LFW in their release layouts) in about a minute on 2 CPU cores; its numbers mean nothing and
#: are compared with none. It shrinks only counts: 8 label trials and 6 reconstructions per dataset in chunks of 4
#: (so that trials span two chunks), 6 L-BFGS iterations, 2 images and 2 iterations per defence setting.
PROFILES["smoke"] = {**PROFILES["paper"], "n_label": 8, "n_recon": 6, "iterations": 6, "snapshot_every": 2,
                     "defence_n": 2, "defence_iterations": 2, "chunk": 4}


# ----------------------------------------------------------------------------------------------- data
def _lfw_full(root: Path, split: str, download: bool, size) -> _data.ImageSet:
    """The full LFW for :mod:`vklib.data` (``"lfw"``): ``<root>/lfw/<Person_Name>/*.jpg``, RGB, one class a
    person, decoded lazily."""
    return _data.class_folders("lfw", split, root / "lfw", size=size)


def attack_set(name: str, n: int, *, generator: torch.Generator, data_dir=None, full: bool = False) -> _data.ImageSet:
    """``n`` random images of dataset ``name`` prepared as the papers feed them to the victim.

    Images are in [0, 1] without normalisation; MNIST stays 28x28 grey, CIFAR 32x32 RGB, the full LFW is resized to
    32x32 RGB (the authors' ``Resize``), and the shipped LFW people subset (62x47 grey) is centre-cropped to 47x47
    and resized to 32x32 grey.

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
def sample_victims(model: nn.Module, n: int, *, generator: torch.Generator, low: float = -0.5,
                   high: float = 0.5) -> dict[str, torch.Tensor]:
    """``n`` independent victims with ``model``'s architecture, every parameter drawn from U(low, high) (both papers).

    Returns:
        ``{name: (n, *shape)}`` in ``model.named_parameters()`` order.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return {k: torch.rand((n, *p.shape), generator=generator).mul_(high - low).add_(low)
            for k, p in model.named_parameters()}


def _lenet_conv(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int) -> torch.Tensor:
    a, c, s, _ = h.shape
    cols = F.unfold(h, w.shape[-1], padding=w.shape[-1] // 2, stride=stride)       # (A, c*k*k, L)
    out = torch.baddbmm(b.unsqueeze(-1), w.reshape(a, w.shape[1], -1), cols)       # (A, c_out, L)
    side = (s + 2 * (w.shape[-1] // 2) - w.shape[-1]) // stride + 1
    return out.view(a, w.shape[1], side, side)


def batched_forward(model: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of ``A`` victims, victim ``i`` (parameters ``params[k][i]``) on image ``x[i]``.

    Args:
        model: the architecture (its own parameters are not used).
        params: ``{name: (A, *shape)}`` as :func:`sample_victims` returns.
        x: ``(A, C, H, W)``.

    Returns:
        ``(A, K)`` logits. A :class:`~vklib.models.LeNetSigmoid` runs as unfold + batched matrix products (fast on
        CPUs); any other model through ``torch.func.vmap(functional_call)``.
    """
    if isinstance(model, LeNetSigmoid) and list(params) == [k for k, _ in model.named_parameters()]:
        p = list(params.values())
        strides = [m.stride[0] for m in model.body if isinstance(m, nn.Conv2d)]
        h = x
        for i, stride in enumerate(strides):
            h = torch.sigmoid(_lenet_conv(h, p[2 * i], p[2 * i + 1], stride))
        return torch.baddbmm(p[-1].unsqueeze(-1), p[-2], h.flatten(1).unsqueeze(-1)).squeeze(-1)
    from torch.func import functional_call, vmap
    return vmap(lambda p, xi: functional_call(model, p, (xi[None],))[0])(dict(params), x)


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of ``A`` independent one-sample losses; ``target`` holds probabilities ``(A, K)``."""
    return -(target * logits.log_softmax(-1)).sum()


def _grads(model, params, x, target, create_graph):
    ps = list(params.values())
    with torch.enable_grad():
        loss = _soft_ce(batched_forward(model, params, x), target)
        return torch.autograd.grad(loss, ps, create_graph=create_graph)


def victim_gradients(model: nn.Module, params: Mapping[str, torch.Tensor], images: torch.Tensor,
                     labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradients the clients share: victim ``i`` trained one step on ``(images[i], labels[i])`` with
    cross-entropy on the one-hot label (batch 1 each).

    Args:
        params: ``{name: (A, *shape)}``; images: ``(A, C, H, W)`` in [0, 1]; labels: ``(A,)`` int64.

    Returns:
        ``{name: (A, *shape)}``, detached.
    """
    if len(images) != len(labels) or any(len(p) != len(images) for p in params.values()):
        raise ValueError(f"params, images and labels need one entry per attack; got {len(images)} images, "
                         f"{len(labels)} labels and parameters with {[len(p) for p in params.values()][:1]} rows")
    ps = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    k = ps[_last_weight_name(ps)].shape[1]
    g = _grads(model, ps, images, F.one_hot(labels, k).to(images.dtype), False)
    return {name: t.detach() for name, t in zip(ps, g)}


def _last_weight_name(grads: Mapping[str, torch.Tensor]) -> str:
    names = [k for k, v in grads.items() if v.ndim == 3]
    if not names:
        raise ValueError("no last-layer weight found: expected a tensor of shape (A, K, F) among the gradients")
    return names[-1]


# ----------------------------------------------------------------------------------------------- the core loss
def gradient_distance(dummy: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                      target: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
    """DLG's objective: the squared Euclidean distance between two gradients, summed over layers.

    Args:
        dummy, target: per-layer gradients with a leading attack axis, ``(A, *shape)`` each (dicts with the same
            keys, or sequences in the same order).

    Returns:
        ``(A,)``: ``sum_layers ||dummy_l[i] - target_l[i]||^2`` for each attack ``i``.
    """
    a = list(dummy.values()) if isinstance(dummy, Mapping) else list(dummy)
    b = list(target.values()) if isinstance(target, Mapping) else list(target)
    if isinstance(dummy, Mapping) and isinstance(target, Mapping) and list(dummy) != list(target):
        raise ValueError(f"dummy and target gradients name different layers: {list(dummy)} vs {list(target)}")
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same non-zero number of layers, got {len(a)} and {len(b)}")
    for u, v in zip(a, b):
        if u.shape != v.shape:
            raise ValueError(f"layer shapes differ: {tuple(u.shape)} vs {tuple(v.shape)}")
    return sum((u - v).pow(2).flatten(1).sum(1) for u, v in zip(a, b))


# ----------------------------------------------------------------------------------------------- iDLG's label rule
def extract_label(fc_weight_grad: torch.Tensor, *, strict: bool = True, rtol: float = 1e-3) -> torch.Tensor:
    """iDLG's label rule: the true class is the row of the last layer's weight gradient whose entries sum negative.

    Assumptions (checked when ``strict``): the gradient comes from **one** sample (batch size 1), trained with
    cross-entropy on a one-hot label, through a last layer ``o = W a + b`` whose inputs ``a`` are non-negative
    (sigmoid, ReLU). Then ``dL/dW = (p - y) a^T`` is rank one, its rows share the sign pattern of ``a``, and only
    the true class has ``p_i - y_i < 0``. A gradient averaged over a batch of several samples is a sum of such
    matrices (rank > 1, several negative rows): the rule is then no longer exact (an exercise of the notebook).

    Args:
        fc_weight_grad: ``(K, F)`` for one shared gradient or ``(A, K, F)`` for ``A`` independent ones.
        strict: raise a ``ValueError`` when the assumptions visibly fail; ``False`` applies the rule regardless
            (e.g. to noisy or pruned gradients).
        rtol: relative residual above which the gradient does not count as rank one.

    Returns:
        ``()`` or ``(A,)`` int64 labels.
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
        n = len(ids)
        ar = torch.arange(n, device=dev)
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


# ----------------------------------------------------------------------------------------------- the attacks
@dataclass
class AttackResult:
    """What an attack returns.

    Attributes:
        method: ``"dlg"`` or ``"idlg"``.
        images: ``(A, C, H, W)`` reconstructions (the raw optimised dummies, not clamped).
        labels: ``(A,)`` inferred labels (DLG: argmax of the dummy logits; iDLG: :func:`extract_label`).
        losses: ``(A, iterations + 1)`` gradient distance before the first and after every iteration.
        evals: ``(A,)`` evaluations of the gradient distance; converged, diverged: ``(A,)`` bool.
        snapshots: ``(T, n, C, H, W)`` reconstructions of the first ``n`` attacks at iterations ``snapshot_at``.
        mse_history: ``(A, iterations + 1)`` MSE to the private images after every iteration (when ``truth`` was
            given; only for the figures: the attacker never sees ``truth``).
    """

    method: str
    images: torch.Tensor
    labels: torch.Tensor
    losses: torch.Tensor
    evals: torch.Tensor
    converged: torch.Tensor
    diverged: torch.Tensor
    snapshots: torch.Tensor | None = None
    snapshot_at: list[int] = field(default_factory=list)
    mse_history: torch.Tensor | None = None

    @staticmethod
    def cat(parts: Sequence["AttackResult"]) -> "AttackResult":
        """One result from the results of consecutive groups of attacks of one method (e.g. chunks of trials);
        the snapshots are those of the parts that kept any, side by side."""
        if not parts or len({p.method for p in parts}) != 1:
            raise ValueError("AttackResult.cat needs at least one result, all of one method")
        join = lambda key: None if getattr(parts[0], key) is None else torch.cat([getattr(p, key).cpu() for p in parts])
        snaps = [p.snapshots for p in parts if p.snapshots is not None and p.snapshots.shape[1]]
        return AttackResult(parts[0].method, *(join(k) for k in ("images", "labels", "losses", "evals", "converged",
                                                                  "diverged")),
                            torch.cat(snaps, 1) if snaps else None, parts[0].snapshot_at, join("mse_history"))


def _check_attack_inputs(params, target, image_shape, iterations):
    names = list(params)
    if list(target) != names:
        raise ValueError(f"target gradients must name the victim's parameters {names}, got {list(target)}")
    n_att = len(next(iter(params.values())))
    if any(len(v) != n_att for v in list(params.values()) + list(target.values())):
        raise ValueError("every parameter and target gradient needs the same number of attacks A")
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    return n_att, params[_last_weight_name(params)].shape[1]


def _invert(model, params, target, image_shape, labels, x0, *, iterations, lr, max_iter, history_size, stop_loss,
            snapshot_every, snap_rows, chunk, progress, truth=None):
    """Gradient matching for ``B`` attacks; ``labels[i] < 0`` marks an attack that optimises its label logits
    (the columns ``x0[:, n_pix:]``), the others use the one-hot ``labels[i]``."""
    dev = next(iter(params.values())).device
    n_all, k = len(labels), params[_last_weight_name(params)].shape[1]
    n_pix = math.prod(image_shape)
    x0 = x0.to(dev)
    labels = labels.to(dev)
    unknown = labels < 0
    onehot = F.one_hot(labels.clamp(min=0), k).to(x0.dtype)
    snap_at = list(range(0, iterations + 1, snapshot_every)) if snapshot_every else []
    snap_rows = torch.as_tensor(snap_rows if snap_at else [], dtype=torch.long)
    snaps = torch.zeros(len(snap_at), len(snap_rows), *image_shape)
    if truth is not None and truth.shape != (n_all, *image_shape):
        raise ValueError(f"truth must be (A, C, H, W) = {(n_all, *image_shape)}, got {tuple(truth.shape)}")
    mse_hist = torch.zeros(n_all, iterations + 1) if truth is not None else None
    chunk = chunk or n_all
    outs = []
    for c0 in range(0, n_all, chunk):
        sl = slice(c0, min(c0 + chunk, n_all))
        p_c = {kk: v[sl].detach() for kk, v in params.items()}
        t_c = [v[sl].detach() for v in target.values()]
        oh_c, unk_c = onehot[sl], unknown[sl]
        cache = {}

        def fun(xr: torch.Tensor, idx: torch.Tensor):
            if "idx" not in cache or not torch.equal(cache["idx"], idx):   # the running attacks changed
                pick = (lambda v: v) if len(idx) == len(oh_c) else (lambda v: v[idx])   # all of them: no copy
                cache.update(idx=idx.clone(), p={kk: pick(v) for kk, v in p_c.items()}, t=[pick(v) for v in t_c],
                             oh=pick(oh_c), unk=pick(unk_c)[:, None] if unk_c.any() else None)
            xr = xr.detach().requires_grad_(True)
            with torch.enable_grad():
                img = xr[:, :n_pix].view(-1, *image_shape)
                soft = cache["oh"] if cache["unk"] is None else torch.where(
                    cache["unk"], xr[:, n_pix:].softmax(-1), cache["oh"])
                ps = {kk: v.requires_grad_(True) for kk, v in cache["p"].items()}
                dist = gradient_distance(_grads(model, ps, img, soft, True), cache["t"])
                gx, = torch.autograd.grad(dist.sum(), xr)
            return dist.detach(), gx

        here = ((snap_rows >= sl.start) & (snap_rows < sl.stop)).nonzero().squeeze(1)

        truth_c = None if truth is None else truth[sl].flatten(1).to(dev)

        def callback(step: int, xs: torch.Tensor):
            if truth_c is not None:
                mse_hist[sl, step] = (xs[:, :n_pix] - truth_c).pow(2).mean(1).cpu()
            if step in snap_at and len(here):
                rows = snap_rows[here] - sl.start
                snaps[snap_at.index(step), here] = xs[rows.to(xs.device), :n_pix].reshape(-1, *image_shape).cpu()

        bar = progress if isinstance(progress, str) else "attacks"
        if n_all > chunk:
            bar = f"{bar} {c0 // chunk + 1}/{math.ceil(n_all / chunk)}"
        outs.append(lbfgs(fun, x0[sl], steps=iterations, lr=lr, max_iter=max_iter, history_size=history_size,
                          stop_loss=stop_loss, callback=callback if len(here) or truth is not None else None,
                          progress=bar if progress else False))
    out = {key: torch.cat([o[key] for o in outs]) for key in outs[0]}
    x = out.pop("x")
    out["images"] = x[:, :n_pix].reshape(n_all, *image_shape)
    out["labels"] = torch.where(unknown, x[:, n_pix:].argmax(1) if unknown.any() else labels, labels)
    out["snapshots"], out["snapshot_at"] = (snaps if snap_at else None), snap_at
    out["mse_history"] = mse_hist
    return out


def _result(method: str, out: dict, rows: slice, snap: slice) -> AttackResult:
    return AttackResult(method, out["images"][rows], out["labels"][rows], out["losses"][rows], out["evals"][rows],
                        out["converged"][rows], out["diverged"][rows],
                        None if out["snapshots"] is None else out["snapshots"][:, snap], out["snapshot_at"],
                        None if out["mse_history"] is None else out["mse_history"][rows])


def invert_gradients(model: nn.Module, params: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                     image_shape: Sequence[int], *, labels: torch.Tensor | None = None,
                     generator: torch.Generator, iterations: int = 300, lr: float = 1.0, max_iter: int = 20,
                     history_size: int = 100, stop_loss: float | None = 1e-6, snapshot_every: int = 0,
                     snapshot_n: int = 8, chunk: int | None = None, truth: torch.Tensor | None = None,
                     progress: bool | str = False) -> AttackResult:
    """Reconstruct ``A`` private images from ``A`` shared gradients by gradient matching with L-BFGS.

    Each attack ``i`` optimises a dummy image ``x'_i`` (``randn`` start) and, when ``labels`` is ``None`` (DLG),
    dummy label logits ``l'_i`` (``randn``) so that the gradient of ``CE(f(x'_i), softmax(l'_i))`` under victim ``i``
    matches ``target``; with known ``labels`` (iDLG) the one-hot label replaces ``softmax(l'_i)`` and only
    ``x'_i`` is optimised.

    Args:
        model: the victim architecture; params: ``{name: (A, *shape)}``; target: shared gradients, same shapes.
        image_shape: ``(C, H, W)``.
        labels: ``(A,)`` known labels, or ``None`` to optimise the labels too.
        generator: draws the dummy starts on the CPU (images ``(A, C*H*W)`` first, then label logits ``(A, K)``),
            so one seed gives one run on any device.
        iterations, lr, max_iter, history_size: the L-BFGS settings (the papers: 300, 1, torch's 20 and 100).
        stop_loss: stop an attack once its gradient distance is below this (the authors' code: 1e-6).
        snapshot_every: keep the dummies of the first ``snapshot_n`` attacks every this many iterations (0: none).
        chunk: at most this many attacks are optimised together (memory); ``None``: all.
        truth: ``(A, C, H, W)`` private images, only to record ``mse_history`` (never used by the attack).
        progress: a tqdm bar (``True`` or its label).

    Returns:
        An :class:`AttackResult`.
    """
    n_att, k = _check_attack_inputs(params, target, image_shape, iterations)
    if labels is not None and (labels.shape != (n_att,) or bool((labels < 0).any() | (labels >= k).any())):
        raise ValueError(f"labels must be (A,) = ({n_att},) class indices in [0, {k}), got {labels!r}")
    x_img = torch.randn((n_att, math.prod(image_shape)), generator=generator)
    x_lab = torch.randn((n_att, k), generator=generator) if labels is None else torch.zeros(n_att, 0)
    known = torch.full((n_att,), -1, dtype=torch.long) if labels is None else labels
    out = _invert(model, params, target, image_shape, known, torch.cat([x_img, x_lab], 1), iterations=iterations,
                  lr=lr, max_iter=max_iter, history_size=history_size, stop_loss=stop_loss,
                  snapshot_every=snapshot_every, snap_rows=range(min(snapshot_n, n_att)), chunk=chunk, truth=truth,
                  progress=progress and (progress if isinstance(progress, str) else "DLG" if labels is None else "iDLG"))
    return _result("dlg" if labels is None else "idlg", out, slice(None), slice(None))


def dlg_attack(model: nn.Module, params: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
               image_shape: Sequence[int], **kw) -> AttackResult:
    """DLG (Zhu et al. 2019): optimise dummy images and dummy label logits together (see :func:`invert_gradients`;
    shapes there). The inferred label is the argmax of the optimised logits."""
    return invert_gradients(model, params, target, image_shape, labels=None, **kw)


def idlg_attack(model: nn.Module, params: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                image_shape: Sequence[int], *, strict: bool = True, **kw) -> AttackResult:
    """iDLG (Zhao et al. 2020): extract each label from the last layer's weight gradient (:func:`extract_label`,
    ``strict`` as there), then optimise the dummy images alone (see :func:`invert_gradients`; shapes there)."""
    labels = extract_label(target[_last_weight_name(target)], strict=strict)
    return invert_gradients(model, params, target, image_shape, labels=labels, **kw)


def dlg_and_idlg(model: nn.Module, params: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                 image_shape: Sequence[int], *, generator: torch.Generator, strict: bool = True,
                 snapshot_every: int = 0, snapshot_n: int = 8, truth: torch.Tensor | None = None,
                 progress: bool | str = False, **kw) -> tuple[AttackResult, AttackResult]:
    """DLG and iDLG on the same ``A`` shared gradients, from the same dummy starts, optimised together in one batch
    of ``2A`` independent L-BFGS runs (one pass instead of two: the slowest attacks of both methods share the
    batch). Gives what :func:`dlg_attack` and :func:`idlg_attack` give when both are called with generators in the
    same state; arguments as :func:`invert_gradients`.

    Returns:
        ``(dlg, idlg)``, two :class:`AttackResult`.
    """
    n_att, k = _check_attack_inputs(params, target, image_shape, kw.get("iterations", 300))
    labels = extract_label(target[_last_weight_name(target)], strict=strict)
    x_img = torch.randn((n_att, math.prod(image_shape)), generator=generator)
    x_lab = torch.randn((n_att, k), generator=generator)
    x0 = torch.cat([torch.cat([x_img, x_lab], 1), torch.cat([x_img, torch.zeros_like(x_lab)], 1)])
    known = torch.cat([torch.full((n_att,), -1, dtype=torch.long), labels.cpu()])
    both = lambda d: {kk: torch.cat([v, v]) for kk, v in d.items()}
    n_snap = min(snapshot_n, n_att)
    opts = dict(iterations=300, lr=1.0, max_iter=20, history_size=100, stop_loss=1e-6, chunk=None) | kw
    out = _invert(model, both(params), both(target), image_shape, known, x0, snapshot_every=snapshot_every,
                  snap_rows=list(range(n_snap)) + list(range(n_att, n_att + n_snap)),
                  truth=None if truth is None else torch.cat([truth, truth]),
                  progress=progress and (progress if isinstance(progress, str) else "DLG + iDLG"), **opts)
    return (_result("dlg", out, slice(0, n_att), slice(0, n_snap)),
            _result("idlg", out, slice(n_att, 2 * n_att), slice(n_snap, 2 * n_snap)))


# ----------------------------------------------------------------------------------------------- metrics, defences
def mse(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error ``(A,)`` between ``(A, C, H, W)`` reconstructions and the private images."""
    if recon.shape != truth.shape:
        raise ValueError(f"shapes differ: {tuple(recon.shape)} vs {tuple(truth.shape)}")
    return (recon.float() - truth.float()).pow(2).flatten(1).mean(1)


def psnr(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB ``(A,)`` for images in [0, 1]: ``10 log10(1 / MSE)`` (``inf`` for a perfect copy)."""
    return -10.0 * torch.log10(mse(recon, truth))


def summarise(result: AttackResult, truth: torch.Tensor, true_labels: torch.Tensor,
              success_mse: float) -> dict[str, float]:
    """Label accuracy, success rate (MSE < ``success_mse``), median MSE and median PSNR (midpoint medians) of an
    attack on the private images ``truth`` ``(A, C, H, W)`` with labels ``true_labels`` ``(A,)``."""
    if success_mse <= 0:
        raise ValueError(f"success_mse must be > 0, got {success_mse}")
    e = mse(result.images.cpu(), truth.cpu()).double()
    return {"label_acc": (result.labels.cpu() == true_labels.cpu()).double().mean().item(),
            "success_rate": (e < success_mse).double().mean().item(),
            "mse_median": e.quantile(0.5).item(),
            "psnr_median": (-10.0 * torch.log10(e)).quantile(0.5).item()}


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
