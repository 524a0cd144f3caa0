"""Continual representation learning for identification (Zhao, Tang, Chen, Bilen, Zhao; WACV 2021, arXiv 2006.04455).

An identity embedding is learnt over a sequence of *steps*; each step brings identities never seen before and only
that step's images are available. The model of the previous step is frozen and serves as a teacher. What counts is
not the classifier but the embedding: it is judged by retrieval on identities that no step ever trained on.

Kernels (the notebook ``08_continual_representation`` holds the profiles and runs the method's loop with them):

* protocol: :func:`split_identities` (held-out identities + identities per step), :func:`split_images` (per
  identity train / test images), :func:`local_labels`;
* data: :func:`decode_images` (a step's image files decoded once, by a ``DataLoader``'s worker processes);
* model: :class:`IdentityNet` (a backbone giving an L2-normalised embedding, one cosine classifier head per step);
* losses: :func:`select_neighbours` and :func:`distillation_loss`, which is full knowledge distillation (LwF) with
  ``k=None, margin=0`` and the paper's loss with neighbourhood selection (``k``) and consistency relaxation
  (``margin``); :func:`step_loss` adds cross-entropy on the new identities;
* evaluation: embeddings through :func:`vklib.train.infer` (``fn=IdentityNet.embed``; without ``fn`` the model's
  forward gives ``(embeddings, logits)``), :func:`retrieval_ranks` / :func:`retrieval_metrics` (rank-k and mAP with
  cosine similarity), :func:`average_forgetting` and :func:`backward_transfer`.

The readers of the full-size benchmarks the notebook's paper profile needs, ``casia_webface``, ``market1501`` and
``dukemtmc_reid``, are here; :mod:`vklib.data` registers them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import data, models

__all__ = ["METHODS", "IdentityNet", "average_forgetting", "backward_transfer", "decode_images", "distillation_loss",
           "local_labels", "retrieval_metrics", "retrieval_ranks", "select_neighbours", "split_identities",
           "split_images", "step_loss"]

METHODS = ("finetune", "lwf", "crl", "joint")

# ----------------------------------------------------------------------------------------------- protocol
def split_identities(labels: torch.Tensor, n_steps: int, n_holdout: int, seed: int = 0,
                     first_step: int | None = None, min_images: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Split the identities present in ``labels`` into held-out identities and ``n_steps`` steps.

    Identities with fewer than ``min_images`` images are left out of both: too small for the protocol (a trained
    identity needs its kept-back test images plus at least one to train on, see :func:`split_images`; a held-out one
    at least two, to be retrieved). Real face sets have such identities (most of LFW's people have one image);
    when none is left out, the split is the one ``min_images=1`` gives.

    Args:
        labels: ``(N,)`` int64 identity of every image.
        n_steps: number of steps; the non-held-out identities are shared out as evenly as possible.
        n_holdout: identities kept for evaluation only (never trained on).
        seed: fixes the random assignment.
        first_step: identities of the first (base) step; the others share the rest evenly. ``None``: all steps
            get (nearly) the same number.
        min_images: the fewest images an identity needs to take part.

    Returns:
        ``(steps, holdout)``: a list of ``n_steps`` sorted ``(n_t,)`` int64 tensors of identities, and the sorted
        ``(n_holdout,)`` held-out identities. Every identity with at least ``min_images`` images is in exactly one
        of them.
    """
    if min_images < 1:
        raise ValueError(f"min_images must be >= 1, got {min_images}")
    ids, counts = torch.unique(torch.as_tensor(labels), return_counts=True)
    ids = ids[counts >= min_images]
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if n_holdout < 0:
        raise ValueError(f"n_holdout must be >= 0, got {n_holdout}")
    rest_n = len(ids) - n_holdout
    if rest_n < 2 * n_steps:
        raise ValueError(f"{len(ids)} identities with at least min_images={min_images} images cannot give "
                         f"n_holdout={n_holdout} held-out identities and n_steps={n_steps} steps of at least 2 "
                         f"identities each")
    if first_step is not None and not (2 <= first_step <= rest_n - 2 * (n_steps - 1)):
        raise ValueError(f"first_step must leave at least 2 identities to each later step: between 2 and "
                         f"{rest_n - 2 * (n_steps - 1)} here, got {first_step}")
    g = torch.Generator().manual_seed(seed)
    ids = ids[torch.randperm(len(ids), generator=g)]
    holdout, rest = ids[:n_holdout], ids[n_holdout:]
    if first_step is None or n_steps == 1:
        parts = list(torch.tensor_split(rest, n_steps))
    else:
        parts = [rest[:first_step]] + list(torch.tensor_split(rest[first_step:], n_steps - 1))
    return [s.sort().values for s in parts], holdout.sort().values


def split_images(labels: torch.Tensor, identities: torch.Tensor, n_test: int = 0, max_train: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per identity of ``identities``, pick ``n_test`` test images and up to ``max_train`` training images.

    Args:
        labels: ``(N,)`` identity of every image.
        identities: ``(M,)`` identities to split (the others are ignored).
        n_test: test images per identity (taken first from a seeded shuffle of the identity's images).
        max_train: cap on the training images per identity (``None``: all the rest).

    Returns:
        ``(train_idx, test_idx)``: sorted int64 indices into ``labels``.
    """
    labels = torch.as_tensor(labels)
    if n_test < 0:
        raise ValueError(f"n_test must be >= 0, got {n_test}")
    if max_train is not None and max_train < 1:
        raise ValueError(f"max_train must be >= 1 or None, got {max_train}")
    identities = torch.as_tensor(identities)
    keep = torch.isin(labels, identities)
    counts = torch.bincount(labels[keep], minlength=int(labels.max()) + 1 if len(labels) else 0)
    missing = identities[(counts[identities] if len(counts) else torch.zeros_like(identities)) <= n_test]
    if len(missing):
        raise ValueError(f"identities {missing.tolist()[:5]} have at most n_test={n_test} images, leaving none "
                         f"to train on; leave them out with split_identities(min_images={n_test + 1})")
    g = torch.Generator().manual_seed(seed)
    idx = torch.nonzero(keep).flatten()
    idx = idx[torch.randperm(len(idx), generator=g)]                 # random order ...
    idx = idx[torch.sort(labels[idx], stable=True).indices]          # ... grouped by identity
    lab = labels[idx]
    start = torch.searchsorted(lab, lab, side="left")                # first position of each identity's group
    rank = torch.arange(len(idx)) - start                             # rank of each image inside its identity
    test = rank < n_test
    train = ~test if max_train is None else (~test) & (rank < n_test + max_train)
    return idx[train].sort().values, idx[test].sort().values


def local_labels(labels: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
    """Map identities to positions in the sorted ``identities`` (a step's head index); others raise ``ValueError``.

    ``(N,)`` int64 -> ``(N,)`` int64 in ``[0, len(identities))``.
    """
    identities = torch.as_tensor(identities).sort().values
    labels = torch.as_tensor(labels)
    pos = torch.searchsorted(identities, labels).clamp(max=max(len(identities) - 1, 0))
    if len(identities) == 0 or not torch.equal(identities[pos], labels):
        raise ValueError("local_labels: some labels are not among the given identities")
    return pos


# ----------------------------------------------------------------------------------------------- data
def decode_images(images, workers: int = 0, batch_size: int = 256) -> torch.Tensor:
    """All of ``images`` as one ``(N, C, S, S)`` float32 tensor on the CPU.

    A tensor is returned as it is. A sequence decoded on access (:class:`vklib.data.LazyImages`, the full
    datasets' image files) is read once, in batches, by a ``torch.utils.data.DataLoader`` with ``workers`` worker
    processes (``0``: in this process): a step's images are then decoded once for all its epochs instead of once
    per epoch in the training process. (About 150 kB per 112 x 112 RGB image: a step of CASIA-WebFace's ten, some
    45,000 images, takes about 7 GB of memory.)
    """
    if torch.is_tensor(images):
        return images
    if workers < 0 or batch_size < 1:
        raise ValueError(f"workers must be >= 0 and batch_size >= 1, got workers={workers}, batch_size={batch_size}")
    if len(images) == 0:
        raise ValueError("decode_images: images is empty")
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=workers)
    return torch.cat(list(loader))


# ----------------------------------------------------------------------------------------------- model
class IdentityNet(nn.Module):
    """An identity embedding network with one cosine classifier head per step.

    ``embed(x)``: ``(N, C, S, S)`` -> ``(N, emb_dim)`` L2-normalised embeddings (the representation that is judged).
    ``logits(e)``: ``(N, emb_dim)`` -> ``(N, num_ids)`` cosine logits ``s * <e, w_c / |w_c|>`` over the identities
    of every head so far, in head order; ``forward(x)`` returns ``(embedding, logits)``.

    Args:
        in_channels, image_size: input images.
        emb_dim: embedding size.
        arch: ``"convnet"`` (:class:`vklib.models.ConvNet`, ``width`` channels, ``depth`` blocks, batch norm) or
            ``"resnet"`` (:class:`vklib.models.SmallResNet` with ``depth`` stages of widths ``width * 2**i``,
            two blocks each).
        scale: the cosine classifier's scale ``s``.
        stem_stride: ``"resnet"`` only: the stride of the 3x3 stem convolution (2 at 112 px, as ResNet-18's stem
            downsamples; 1 keeps the full resolution, for 32-64 px inputs).
    """

    ARCHS = ("convnet", "resnet")

    def __init__(self, in_channels: int = 1, image_size: int = 32, emb_dim: int = 128, arch: str = "convnet",
                 width: int = 32, depth: int = 3, scale: float = 16.0, norm: str = "batchnorm", stem_stride: int = 1):
        super().__init__()
        if arch not in self.ARCHS:
            raise ValueError(f"arch must be one of {', '.join(self.ARCHS)}, got {arch!r}")
        if emb_dim < 1 or scale <= 0:
            raise ValueError(f"emb_dim must be >= 1 and scale > 0, got emb_dim={emb_dim}, scale={scale}")
        if stem_stride not in (1, 2) or (stem_stride == 2 and arch != "resnet"):
            raise ValueError(f"stem_stride must be 1, or 2 with arch='resnet'; got {stem_stride} with arch={arch!r}")
        if arch == "convnet":
            self.backbone = models.ConvNet(in_channels, emb_dim, image_size, width, depth, norm=norm)
        else:
            self.backbone = models.SmallResNet(in_channels, emb_dim, tuple(width * 2 ** i for i in range(depth)), 2)
            self.backbone.stem[0].stride = (stem_stride, stem_stride)
        self.emb_dim, self.scale = emb_dim, float(scale)
        self.heads = nn.ParameterList()

    @property
    def num_ids(self) -> int:
        return sum(h.shape[0] for h in self.heads)

    def add_head(self, n_ids: int, generator: torch.Generator | None = None) -> None:
        """Append a head for ``n_ids`` new identities (random unit-scale weights)."""
        if n_ids < 1:
            raise ValueError(f"n_ids must be >= 1, got {n_ids}")
        w = torch.randn(n_ids, self.emb_dim, generator=generator) / self.emb_dim ** 0.5
        ref = next(self.backbone.parameters())
        self.heads.append(nn.Parameter(w.to(ref.device, ref.dtype)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(x), dim=1)

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        if not len(self.heads):
            raise RuntimeError("IdentityNet has no classifier head yet; call add_head(n_ids) first")
        w = F.normalize(torch.cat(list(self.heads)), dim=1)
        return self.scale * emb @ w.T

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed(x)
        return e, self.logits(e)


# ----------------------------------------------------------------------------------------------- losses
def select_neighbours(teacher_logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Neighbourhood selection: the indices ``(B, k)`` of each sample's ``k`` largest teacher logits, in descending
    order (``torch.topk``: O(C) per row, so it scales to many old identities). ``k=None`` or ``k >= C`` selects all
    ``C`` old identities, in index order."""
    if teacher_logits.ndim != 2:
        raise ValueError(f"teacher_logits must be (B, C), got shape {tuple(teacher_logits.shape)}")
    c = teacher_logits.shape[1]
    if k is None or k >= c:
        return torch.arange(c, device=teacher_logits.device).expand(teacher_logits.shape[0], c)
    if k < 1:
        raise ValueError(f"k must be >= 1 or None, got {k}")
    return torch.topk(teacher_logits, k, dim=1, largest=True, sorted=True).indices


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
                      k: int | None = None, margin: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Knowledge distillation on the old identities, with the paper's neighbourhood selection and relaxation.

    With ``N_i`` the ``k`` old identities the teacher ranks highest for sample ``i`` (all of them if ``k=None``),
    ``q_i = softmax(z^t_i[N_i] / T)`` and ``p_i = softmax(z^s_i[N_i] / T)``:

    ``loss_i = T^2 * max(KL(q_i || p_i) - margin * H(q_i), 0)``

    ``k=None, margin=0`` is LwF's full distillation; ``margin > 0`` forgives a student whose distribution is within
    ``margin`` times the teacher's entropy ``H(q_i)`` of the teacher's (consistency relaxation).

    Args:
        student_logits, teacher_logits: ``(B, C)`` logits over the ``C`` old identities (the teacher's are
            treated as constants).
        temperature: ``T > 0``.
        k: neighbourhood size (``None``: all ``C``).
        margin: relaxation factor ``>= 0``.
        reduction: ``"mean"`` (a scalar), ``"sum"`` or ``"none"`` (``(B,)``).
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(f"student and teacher logits must both be (B, C); got {tuple(student_logits.shape)} and "
                         f"{tuple(teacher_logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    teacher_logits = teacher_logits.detach()
    idx = select_neighbours(teacher_logits, k)
    log_q = F.log_softmax(teacher_logits.gather(1, idx) / temperature, dim=1)
    log_p = F.log_softmax(student_logits.gather(1, idx) / temperature, dim=1)
    q = log_q.exp()
    kl = (q * (log_q - log_p)).sum(1)
    if margin > 0:
        kl = torch.clamp(kl - margin * -(q * log_q).sum(1), min=0)
    loss = temperature ** 2 * kl
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def step_loss(logits: torch.Tensor, labels: torch.Tensor, n_old: int, teacher_logits: torch.Tensor | None = None,
              *, method: str, temperature: float = 2.0, k: int | None = None, margin: float = 0.0,
              kd_weight: float = 1.0) -> torch.Tensor:
    """The training loss of one batch of a step.

    ``logits`` ``(B, n_old + n_new)`` of the student (old heads first), ``labels`` ``(B,)`` in ``[0, n_new)`` (the
    new head's identities). Cross-entropy on the new head, plus for ``"lwf"`` full distillation and for ``"crl"``
    distillation with neighbourhood selection (``k``) and consistency relaxation (``margin``), both against
    ``teacher_logits`` ``(B, n_old)``. ``"finetune"`` and ``"joint"`` use cross-entropy only.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    loss = F.cross_entropy(logits[:, n_old:], labels)
    if method in ("lwf", "crl") and n_old > 0:
        if teacher_logits is None:
            raise ValueError(f"method {method!r} after the first step needs teacher_logits")
        kd = distillation_loss(logits[:, :n_old], teacher_logits, temperature,
                               k=None if method == "lwf" else k, margin=0.0 if method == "lwf" else margin)
        loss = loss + kd_weight * kd
    return loss


# ----------------------------------------------------------------------------------------------- evaluation
def _check_retrieval(query, query_labels, gallery, gallery_labels, query_groups, gallery_groups):
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("give both gallery and gallery_labels, or neither")
    g, gl = (query, query_labels) if gallery is None else (gallery, gallery_labels)
    gg = query_groups if gallery is None else gallery_groups
    if (query_groups is None) != (gg is None):
        raise ValueError("give query_groups and gallery_groups together")
    if query.ndim != 2 or g.ndim != 2 or query.shape[1] != g.shape[1]:
        raise ValueError(f"embeddings must be (Q, D) and (G, D); got {tuple(query.shape)} and {tuple(g.shape)}")
    if len(query_labels) != len(query) or len(gl) != len(g):
        raise ValueError("every embedding needs one label")
    return g, gl, gg


@torch.no_grad()
def retrieval_ranks(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor | None = None,
                    gallery_labels: torch.Tensor | None = None, *, query_groups: torch.Tensor | None = None,
                    gallery_groups: torch.Tensor | None = None, chunk: int = 1024
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, the rank of its first correct match and its average precision (cosine similarity).

    Without a gallery every query searches all the *other* query images (leave-one-out). With groups (e.g. camera
    ids, the re-id protocol) gallery images of the query's identity *and* group are ignored. Ties are ranked by
    gallery order.

    Args:
        query: ``(Q, D)`` embeddings; query_labels ``(Q,)``.
        gallery: ``(G, D)`` embeddings and gallery_labels ``(G,)``, or ``None`` (leave-one-out).
        chunk: queries per block (bounds memory at ``chunk x G``).

    Returns:
        ``(first_rank, ap)``: ``(Q,)`` float tensors; the 1-based rank of the first correct match (``inf`` when the
        query has no valid match) and the average precision (``nan`` when it has none).
    """
    g, gl, gg = _check_retrieval(query, query_labels, gallery, gallery_labels, query_groups, gallery_groups)
    loo = gallery is None
    q, g = F.normalize(query.float(), dim=1), F.normalize(g.float(), dim=1)
    first_rank, ap = torch.full((len(q),), float("inf")), torch.full((len(q),), float("nan"))
    for start in range(0, len(q), chunk):
        rows = torch.arange(start, min(start + chunk, len(q)))
        valid = torch.ones(len(rows), len(g), dtype=torch.bool)
        if loo:
            valid[torch.arange(len(rows)), rows] = False
        if query_groups is not None:
            valid &= ~((gl[None, :] == query_labels[rows, None]) & (gg[None, :] == query_groups[rows, None]))
        sim = (q[rows] @ g.T).masked_fill(~valid, float("-inf"))
        order = torch.sort(sim, dim=1, descending=True, stable=True).indices
        keep = valid.gather(1, order)                    # invalid items sort last; they take no rank
        match = (gl[order] == query_labels[rows, None]) & keep
        n_pos = match.sum(1)
        rank_of = keep.long().cumsum(1).float()         # 1-based rank among the valid gallery items
        first = torch.where(match, rank_of, torch.full_like(rank_of, float("inf"))).min(1).values
        precision = match.cumsum(1) / rank_of.clamp(min=1)
        ok = n_pos > 0
        first_rank[rows] = first
        ap[rows] = torch.where(ok, (precision * match).sum(1) / n_pos.clamp(min=1), float("nan"))
    return first_rank, ap


def retrieval_metrics(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor | None = None,
                      gallery_labels: torch.Tensor | None = None, *, ks: Sequence[int] = (1, 5),
                      query_groups: torch.Tensor | None = None, gallery_groups: torch.Tensor | None = None,
                      chunk: int = 1024) -> dict[str, float]:
    """Retrieval by cosine similarity: rank-k accuracy (CMC) and mean average precision.

    The arguments are those of :func:`retrieval_ranks` (leave-one-out without a gallery; the re-id camera rule with
    groups), plus ``ks``, the ranks of the ``rank{k}`` metrics. Queries without any valid match are left out.

    Returns:
        ``{"rank1": ..., "rank5": ..., "map": ..., "n_queries": ...}`` (fractions in [0, 1]).
    """
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive ranks, got {tuple(ks)}")
    first, ap = retrieval_ranks(query, query_labels, gallery, gallery_labels, query_groups=query_groups,
                                gallery_groups=gallery_groups, chunk=chunk)
    ok = torch.isfinite(first)
    if not ok.any():
        raise ValueError("no query has a matching identity in the gallery; retrieval metrics are undefined")
    out = {f"rank{int(k)}": (first[ok] <= int(k)).double().mean().item() for k in ks}
    out["map"] = ap[ok].double().mean().item()
    out["n_queries"] = int(ok.sum())
    return out


def average_forgetting(acc: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """Average forgetting (Chaudhry et al. 2018) from ``acc`` ``(T, T)``, where ``acc[i, j]`` is a score on step
    ``j``'s data after training step ``i`` (only ``j <= i`` is read).

    ``F = sum_{j < T-1} w_j ( max_{j <= i < T-1} acc[i, j] - acc[T-1, j] ) / sum_{j < T-1} w_j``; positive means the
    score dropped. ``weights`` ``(T,)`` (e.g. the number of test images of each step; only the first ``T-1`` are
    used) default to equal weights.
    """
    acc = torch.as_tensor(acc, dtype=torch.float64)
    if acc.ndim != 2 or acc.shape[0] != acc.shape[1] or acc.shape[0] < 2:
        raise ValueError(f"acc must be a (T, T) matrix with T >= 2, got shape {tuple(acc.shape)}")
    t = acc.shape[0]
    w = torch.ones(t, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (t,) or (w < 0).any() or w[:-1].sum() <= 0:
        raise ValueError(f"weights must be {t} non-negative numbers, not all zero before the last step")
    lower = torch.tril(torch.ones(t - 1, t - 1, dtype=torch.bool))
    best = acc[:-1, :-1].masked_fill(~lower, float("-inf")).max(0).values
    return ((best - acc[-1, :-1]) * w[:-1]).sum().item() / w[:-1].sum().item()


def backward_transfer(acc: torch.Tensor) -> float:
    """Backward transfer (Lopez-Paz and Ranzato 2017) from ``acc`` ``(T, T)`` as in :func:`average_forgetting`:
    ``BWT = mean_{j < T-1} (acc[T-1, j] - acc[j, j])``, how the score on each step's data changed from right after
    that step to the end; negative means forgetting."""
    acc = torch.as_tensor(acc, dtype=torch.float64)
    if acc.ndim != 2 or acc.shape[0] != acc.shape[1] or acc.shape[0] < 2:
        raise ValueError(f"acc must be a (T, T) matrix with T >= 2, got shape {tuple(acc.shape)}")
    return (acc[-1, :-1] - acc.diagonal()[:-1]).mean().item()


# ----------------------------------------------------------------------------------------------- full datasets
def _casia_full(root: Path, split: str, download: bool, size):
    return data.class_folders("casia_webface", split, root / "CASIA-WebFace", size=size or 112)


_REID_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_REID_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def _reid_full(name: str, folder_name: str):
    """The reader of a re-id release in Market-1501's layout (``<folder_name>/{bounding_box_train,query,
    bounding_box_test}/<pid>_c<camera>...jpg``; Market-1501 and DukeMTMC-reID).

    ``classes`` are the person ids of all three folders (the file names' 4-digit prefixes, sorted), so the labels of
    the query and the gallery agree; Market-1501's distractors (pid ``0000``) are a class that no query has, its
    junk boxes (pid ``-1``) are skipped, as the protocol ignores them. ``meta["camera"]`` ``(N,)`` holds the camera
    of every image (the camera rule of the protocol)."""
    def boxes(folder: Path) -> list[tuple[Path, str, int]]:
        if not folder.is_dir():
            raise FileNotFoundError(f"no {folder.name} folder in {folder.parent}")
        out = []
        for p in sorted(p for p in folder.iterdir() if p.suffix.lower() in data.IMAGE_SUFFIXES):
            m = _REID_NAME.match(p.name)
            if m is not None and int(m.group(1)) >= 0:
                out.append((p, m.group(1), int(m.group(2))))
        return out

    def load_full(root: Path, split: str, download: bool, size):
        listing = {s: boxes(root / folder_name / sub) for s, sub in _REID_FOLDERS.items()}
        if not listing[split]:
            raise FileNotFoundError(f"no <pid>_c<cam>... images in {root / folder_name / _REID_FOLDERS[split]}")
        classes = sorted({pid for rows in listing.values() for _, pid, _ in rows}, key=int)
        index = {pid: i for i, pid in enumerate(classes)}
        paths, pids, cams = zip(*listing[split])
        return data.ImageSet(name, split, data.LazyImages(paths, "RGB", size or 128),
                             torch.tensor([index[p] for p in pids]), classes,
                             {"camera": torch.tensor(cams), "files": [str(p) for p in paths]}, "full")
    return load_full
