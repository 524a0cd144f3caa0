"""Captioning with conditional latent topic attention and a sentence auto-encoder regulariser
(Goel, Fernando, Nguyen, Bilen; "Injecting Prior Knowledge into Image Caption Generation", arXiv 1911.10082).

A frozen encoder turns an image into a grid of region features (computed once and cached); an LSTM decoder writes
the caption word by word and, at every word, *attends* to the regions. The paper adds two sources of prior knowledge
to the Up-Down captioner:

* **conditional latent topic attention (CLTA)**: a learned set of ``K`` latent topics. At step ``t`` the decoder
  attends to the topics with its state (which summarises the words written so far), every topic attends to the
  image regions, and the region attention is the mixture ``a_t = sum_k beta_tk * gamma_k`` (topics as anchors);
* the **sentence auto-encoder (SAE) regulariser**: an auto-encoder over captions; while the captioner is trained on
  caption ``y``, its language-LSTM states are pulled towards the frozen auto-encoder's decoder states on ``y``.

Kernels (the notebook ``09_topic_attention_captioning`` holds the profiles and the training loops):

* text: :func:`tokenize`, :class:`Vocab`, :func:`encode_references`, :func:`caption_overlap`;
* data: :func:`make_scenes` (deterministic, vectorised synthetic scenes of two coloured shapes with spatial-relation
  captions), :func:`compositional_scenes` (a split whose test colour-shape pairs never occur in training),
  :func:`scene_attributes`, :func:`load_split` (also the MS-COCO Karpathy split, registered as ``coco_karpathy``);
* encoders and features: :class:`GridEncoder`, :class:`ResNetEncoder` (ImageNet weights from a local file),
  :func:`make_encoder`, :func:`cache_features` (frozen features computed once, in memory or in a ``.npy`` file);
* models: :class:`Captioner` (Up-Down decoder over cached region features, ``attention="soft"`` or ``"clta"``),
  :class:`SentenceAutoEncoder`;
* functional kernels: :func:`additive_attention`, :func:`topic_region_attention`, :func:`clta_attention`,
  :func:`masked_cross_entropy`, :func:`sae_regulariser`, :func:`caption_loss`;
* decoding: :func:`greedy_decode`, :func:`beam_search`, :func:`caption_features`;
* metrics: :func:`caption_metrics` (pycocoevalcap BLEU-1..4, ROUGE-L, CIDEr; METEOR / SPICE only with Java).
"""
from __future__ import annotations

import functools
import json
import math
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data
from .models import ImageNetNormalize, torchvision_net
from .train import gather, infer

__all__ = ["ATTENTIONS", "COLOURS", "HELD_OUT", "RELATIONS", "SHAPES", "Captioner", "GridEncoder",
           "ResNetEncoder", "SentenceAutoEncoder", "Vocab", "additive_attention", "beam_search", "cache_features",
           "caption_features", "caption_loss", "caption_metrics", "caption_overlap", "clta_attention",
           "compositional_scenes", "encode_references", "greedy_decode", "load_split", "make_encoder", "make_scenes",
           "masked_cross_entropy", "sae_regulariser", "scene_attributes", "tokenize", "topic_region_attention"]

ATTENTIONS = ("soft", "clta")

# ----------------------------------------------------------------------------------------------- text
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of a caption, punctuation dropped (a pure-Python stand-in for the PTB tokenizer,
    which needs Java): ``"A dog's toy, red."`` -> ``["a", "dog's", "toy", "red"]``."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
    return _TOKEN.findall(text.lower())


class Vocab:
    """Word <-> index map with ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3.

    Build it with :meth:`build` from captions (strings); words seen fewer than ``min_count`` times map to ``<unk>``.
    """

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if len(set(words)) != len(words):
            raise ValueError("Vocab: duplicate words")
        self.itos = [PAD, BOS, EOS, UNK] + [w for w in words if w not in (PAD, BOS, EOS, UNK)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    pad, bos, eos, unk = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Sequence[str], min_count: int = 1) -> "Vocab":
        """The vocabulary of ``captions`` (words sorted by decreasing count, then alphabetically)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts: dict[str, int] = {}
        for c in captions:
            for w in tokenize(c):
                counts[w] = counts.get(w, 0) + 1
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens: {' '.join(self.itos[4:14])}{' ...' if len(self) > 14 else ''})"

    def encode(self, captions: Sequence[str], max_len: int) -> torch.Tensor:
        """``(N, max_len + 2)`` int64: ``<bos>``, up to ``max_len`` word ids, ``<eos>``, then ``<pad>``."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        out = torch.zeros(len(captions), max_len + 2, dtype=torch.long)
        for i, c in enumerate(captions):
            ids = [self.stoi.get(w, self.unk) for w in tokenize(c)][:max_len]
            out[i, :len(ids) + 2] = torch.tensor([self.bos] + ids + [self.eos])
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Words of ``ids`` up to the first ``<eos>`` (``<bos>`` and ``<pad>`` skipped)."""
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        words = []
        for i in ids:
            if i == self.eos:
                break
            if i in (self.pad, self.bos):
                continue
            words.append(self.itos[i])
        return " ".join(words)

    def state_dict(self) -> dict:
        return {"itos": list(self.itos)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Vocab":
        return cls(state["itos"][4:])


def encode_references(references: Sequence[Sequence[str]], vocab: Vocab, max_len: int,
                      n_refs: int = 5) -> torch.Tensor:
    """Reference captions of every image as ``(N, n_refs, max_len + 2)`` ids; images with fewer references repeat
    theirs cyclically, extra ones are dropped (COCO has 5-7 per image)."""
    if n_refs < 1:
        raise ValueError(f"n_refs must be >= 1, got {n_refs}")
    flat = []
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"image {i} has no reference caption")
        flat += [refs[j % len(refs)] for j in range(n_refs)]
    return vocab.encode(flat, max_len).view(len(references), n_refs, max_len + 2)


# ----------------------------------------------------------------------------------------------- synthetic scenes
COLOURS = {"red": (0.9, 0.15, 0.15), "green": (0.15, 0.8, 0.2), "blue": (0.2, 0.35, 0.95),
           "yellow": (0.95, 0.85, 0.1), "white": (0.95, 0.95, 0.95)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "big")
RELATIONS = ("to the left of", "to the right of", "above", "below")
_INVERSE = (1, 0, 3, 2)


def _scene_captions(c, s, z, rel) -> list[str]:
    """Five reference captions of one scene: subject (c[0], s[0], z[0]) in relation ``rel`` to object 1."""
    col, shp, siz = list(COLOURS), SHAPES, SIZES
    a = (siz[z[0]], col[c[0]], shp[s[0]])
    b = (siz[z[1]], col[c[1]], shp[s[1]])
    r, inv = RELATIONS[rel], RELATIONS[_INVERSE[rel]]
    return [f"a {a[0]} {a[1]} {a[2]} {r} a {b[0]} {b[1]} {b[2]}",
            f"a {a[1]} {a[2]} {r} a {b[1]} {b[2]}",
            f"there is a {a[1]} {a[2]} {r} a {b[1]} {b[2]}",
            f"a {b[1]} {b[2]} is {inv} a {a[1]} {a[2]}",
            f"a {b[0]} {b[1]} {b[2]} {inv} a {a[0]} {a[1]} {a[2]}"]


def make_scenes(n: int, size: int = 32, seed: int = 0, noise: float = 0.03) -> data.ImageSet:
    """``n`` **synthetic** scenes of two coloured shapes with five spatial-relation captions each.

    Every scene holds two objects (colour from :data:`COLOURS`, shape from :data:`SHAPES`, size small/big) placed so
    that one relation of :data:`RELATIONS` holds clearly (the displacement along its axis exceeds the other axis's).
    All scenes are drawn at once with tensor ops (no loop over scenes or pixels); the same ``(n, size, seed)`` gives
    the same scenes on every machine.

    Returns:
        An :class:`~vklib.data.ImageSet` named ``"scenes"``: images ``(n, 3, size, size)`` in [0, 1], and ``meta``
        with ``captions`` (list of 5 str per scene), ``colour``, ``shape``, ``scale`` ``(n, 2)`` int64,
        ``relation`` ``(n,)`` int64 (index into :data:`RELATIONS`, object 0 relative to object 1) and ``centre``
        ``(n, 2, 2)`` (x, y) in pixels.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16 (pixels), got {size!r}")
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(len(COLOURS), (n, 2), generator=g)
    clash = colour[:, 1] == colour[:, 0]                      # two objects of one colour would be ambiguous ...
    colour[:, 1] = torch.where(clash, (colour[:, 1] + 1 + torch.randint(len(COLOURS) - 1, (n,), generator=g))
                               % len(COLOURS), colour[:, 1])  # ... so the second gets another colour
    shape = torch.randint(len(SHAPES), (n, 2), generator=g)
    scale = torch.randint(len(SIZES), (n, 2), generator=g)
    relation = torch.randint(len(RELATIONS), (n,), generator=g)
    radius = torch.tensor([0.11, 0.17])[scale] * size          # (n, 2) pixels
    # displacement of object 0 from object 1: along the relation's axis 0.40-0.55 of the side, across it < 0.15
    along = (0.40 + 0.15 * torch.rand(n, generator=g)) * size
    across = (torch.rand(n, generator=g) - 0.5) * 0.30 * size
    sign = torch.tensor([-1.0, 1.0, -1.0, 1.0])[relation]      # left / up = negative x / y
    horizontal = relation < 2
    d = torch.stack([torch.where(horizontal, sign * along, across), torch.where(horizontal, across, sign * along)], 1)
    margin = radius.max(1).values + 1.0                       # keep both shapes inside the frame
    lo = margin[:, None] + torch.clamp(-d, min=0) / 1.0
    hi = size - margin[:, None] - torch.clamp(d, min=0)
    c1 = lo + (hi - lo).clamp(min=0) * torch.rand(n, 2, generator=g)   # (n, 2) centre of object 1 (x, y)
    centre = torch.stack([c1 + d, c1], 1)                     # (n, 2 objects, 2)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dx = xs[None, None] - centre[..., 0, None, None]           # (n, 2, S, S)
    dy = ys[None, None] - centre[..., 1, None, None]
    r = radius[..., None, None]
    circle = dx ** 2 + dy ** 2 <= r ** 2
    square = torch.maximum(dx.abs(), dy.abs()) <= 0.82 * r
    triangle = (dy <= 0.8 * r) & (dy >= -r) & (dx.abs() <= 0.62 * (dy + r))
    sh = shape[..., None, None]
    mask = torch.where(sh == 0, circle, torch.where(sh == 1, square, triangle)).float()   # (n, 2, S, S)
    rgb = torch.tensor(list(COLOURS.values()))[colour]                                     # (n, 2, 3)
    rgb = (rgb + 0.08 * (torch.rand(n, 2, 3, generator=g) - 0.5)).clamp(0, 1)
    background = 0.1 + 0.15 * torch.rand(n, 3, 1, 1, generator=g)
    img = background.expand(n, 3, size, size).clone()
    for k in (1, 0):                                          # the two objects (object 0 painted last)
        m = mask[:, k, None]
        img = img * (1 - m) + rgb[:, k, :, None, None] * m
    img = (img + noise * torch.randn(img.shape, generator=g)).clamp(0, 1)
    caps = [_scene_captions(c, s, z, int(rel)) for c, s, z, rel in
            zip(colour.tolist(), shape.tolist(), scale.tolist(), relation.tolist())]
    return data.ImageSet("scenes", "generated", img, None, None,
                         {"captions": caps, "colour": colour, "shape": shape, "scale": scale, "relation": relation,
                          "centre": centre, "_synthetic": True}, "generated")

#: Colour-shape pairs of the compositional split: no training scene shows them, every test scene shows one.
HELD_OUT = (("red", "circle"), ("green", "square"), ("blue", "triangle"))


def compositional_scenes(n: int, size: int = 32, seed: int = 0, split: str = "train",
                         held_out: Sequence[tuple[str, str]] = HELD_OUT) -> data.ImageSet:
    """``n`` scenes of :func:`make_scenes` split by composition: ``"train"`` keeps scenes in which no object is one
    of the ``held_out`` (colour, shape) pairs, ``"test"`` scenes in which at least one object is. Every colour and
    every shape still occurs in training (with other partners); only their combinations are new at test time, so no
    test reference caption can occur among the training references (see :func:`caption_overlap`).

    Scenes are drawn from ``make_scenes(4 n + 32, size, seed)`` and the first ``n`` that qualify are kept (same
    arguments, same scenes). ``meta["_held_out"]`` records the pairs.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    colours = list(COLOURS)
    novel_pair = torch.zeros(len(COLOURS), len(SHAPES), dtype=torch.bool)
    for pair in held_out:
        if len(pair) != 2 or pair[0] not in colours or pair[1] not in SHAPES:
            raise ValueError(f"held_out: (colour, shape) pairs with colour in {colours} and shape in {list(SHAPES)} "
                             f"expected, got {pair!r}")
        novel_pair[colours.index(pair[0]), SHAPES.index(pair[1])] = True
    pool = make_scenes(4 * n + 32, size, seed=seed)
    novel = novel_pair[pool.meta["colour"], pool.meta["shape"]].any(1)        # (4n + 32,)
    idx = (novel if split == "test" else ~novel).nonzero()[:, 0][:n]
    if len(idx) < n:
        raise ValueError(f"held_out: only {len(idx)} of {4 * n + 32} scenes fit the {split} split; hold out fewer "
                         f"pairs")
    out = pool.subset(idx)
    out.meta["_held_out"] = [tuple(p) for p in held_out]
    return out


def scene_attributes(meta: dict) -> torch.Tensor:
    """Which colours, shapes and sizes a scene shows: ``(N, 5 + 3 + 2)`` multi-hot float (order of :data:`COLOURS`,
    :data:`SHAPES`, :data:`SIZES`), from :func:`make_scenes` ``meta``. The quick profile pre-trains its grid encoder
    on these labels (as a ResNet is pre-trained on ImageNet classes) before freezing it."""
    parts = [F.one_hot(meta[k], n).amax(1) for k, n in (("colour", len(COLOURS)), ("shape", len(SHAPES)),
                                                        ("scale", len(SIZES)))]
    return torch.cat(parts, 1).float()


def caption_overlap(train_refs: Sequence[Sequence[str]], test_refs: Sequence[Sequence[str]]) -> int:
    """How many test images have at least one reference caption (tokenised, see :func:`tokenize`) identical to a
    training reference: the test images a captioner could score on by reciting a training caption."""
    seen = {" ".join(tokenize(c)) for refs in train_refs for c in refs}
    return sum(any(" ".join(tokenize(c)) in seen for c in refs) for refs in test_refs)


# ----------------------------------------------------------------------------------------------- functional kernels
def additive_attention(keys: torch.Tensor, query: torch.Tensor, w: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bahdanau attention weights ``softmax_n(w . tanh(keys_n + query))``.

    Args:
        keys: ``(B, N, A)`` projected items (regions or topics); a ``(N, A)`` tensor is shared by the batch.
        query: ``(B, A)`` projected decoder state.
        w: ``(A,)`` scoring vector.
        mask: optional ``(B, N)`` bool, ``False`` for items to ignore.

    Returns:
        ``(B, N)`` weights summing to one over ``N``.
    """
    if query.ndim != 2 or w.ndim != 1 or keys.shape[-1] != query.shape[-1] or w.shape[0] != query.shape[-1]:
        raise ValueError(f"additive_attention: keys (B, N, A) or (N, A), query (B, A), w (A,) expected; got "
                         f"{tuple(keys.shape)}, {tuple(query.shape)}, {tuple(w.shape)}")
    scores = torch.tanh(keys + query[:, None, :]) @ w
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1)


def topic_region_attention(topic_queries: torch.Tensor, region_keys: torch.Tensor) -> torch.Tensor:
    """How every latent topic distributes over the regions of each image: ``gamma = softmax_n(q_k . k_n / sqrt(A))``.

    Args:
        topic_queries: ``(K, A)`` projected topic embeddings.
        region_keys: ``(B, N, A)`` projected region features.

    Returns:
        ``(B, K, N)``, each row a distribution over the ``N`` regions.
    """
    if topic_queries.ndim != 2 or region_keys.ndim != 3 or topic_queries.shape[1] != region_keys.shape[2]:
        raise ValueError(f"topic_region_attention: topic_queries (K, A) and region_keys (B, N, A) expected; got "
                         f"{tuple(topic_queries.shape)}, {tuple(region_keys.shape)}")
    return (torch.einsum("ka,bna->bkn", topic_queries, region_keys) / math.sqrt(region_keys.shape[-1])).softmax(-1)


def clta_attention(topic_keys: torch.Tensor, query: torch.Tensor, w: torch.Tensor,
                   gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional latent topic attention: ``beta_t = softmax_k(w . tanh(topic_keys_k + query))`` (topics given the
    words so far), and the region attention marginalised over topics ``a_t = sum_k beta_tk gamma_k``.

    Args:
        topic_keys: ``(K, A)`` projected topic embeddings (the keys of the topic attention).
        query: ``(B, A)`` projected attention-LSTM state.
        w: ``(A,)`` scoring vector.
        gamma: ``(B, K, N)`` from :func:`topic_region_attention`.

    Returns:
        ``(a, beta)``: region weights ``(B, N)`` and topic weights ``(B, K)``.
    """
    if gamma.ndim != 3 or gamma.shape[1] != topic_keys.shape[0]:
        raise ValueError(f"clta_attention: gamma must be (B, K, N) with K = {topic_keys.shape[0]} topics, "
                         f"got {tuple(gamma.shape)}")
    beta = additive_attention(topic_keys, query, w)
    return (beta[:, :, None] * gamma).sum(1), beta    # broadcasting: tiny batched matmuls are slow on CPU


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, pad: int = Vocab.pad) -> torch.Tensor:
    """Mean cross-entropy over the non-padding targets: ``logits (B, T, V)``, ``targets (B, T)`` -> scalar."""
    if logits.ndim != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"masked_cross_entropy: logits (B, T, V) and targets (B, T) expected; got "
                         f"{tuple(logits.shape)}, {tuple(targets.shape)}")
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad)


def sae_regulariser(states: torch.Tensor, targets: torch.Tensor, proj: torch.Tensor | None,
                    mask: torch.Tensor) -> torch.Tensor:
    """The SAE regulariser: mean over valid steps ``t`` of ``|| h_t - s_t ||^2 / Z`` (the paper's form, both sizes
    equal), or ``|| P h_t - s_t ||^2 / Z`` with a learned projection ``P`` where the sizes differ.

    Args:
        states: ``(B, T, H)`` language-LSTM states ``h_t`` of the captioner (teacher-forced on caption ``y``).
        targets: ``(B, T, Z)`` the frozen SAE decoder's states ``s_t`` while it reconstructs the same caption ``y``
            from its sentence code ``z(y)`` (or ``(B, Z)``: one code for every step).
        proj: ``(Z, H)`` learned projection ``P``, or ``None`` when ``Z = H`` (no projection).
        mask: ``(B, T)`` bool, ``True`` at steps that predict a real token (words and ``<eos>``).

    Returns:
        A scalar.
    """
    if targets.ndim == 2 and states.ndim == 3:
        targets = targets[:, None, :].expand(-1, states.shape[1], -1)
    want = (targets.shape[-1], states.shape[-1]) if proj is not None else (states.shape[-1],) * 2
    if states.ndim != 3 or targets.shape[:2] != states.shape[:2] or mask.shape != states.shape[:2] \
            or (targets.shape[-1], states.shape[-1]) != (want if proj is None else tuple(proj.shape)):
        raise ValueError(f"sae_regulariser: states (B, T, H), targets (B, T, Z) or (B, Z), proj (Z, H) or None when "
                         f"Z = H, mask (B, T) expected; got {tuple(states.shape)}, {tuple(targets.shape)}, "
                         f"{None if proj is None else tuple(proj.shape)}, {tuple(mask.shape)}")
    mapped = states if proj is None else states @ proj.T
    sq = ((mapped - targets) ** 2).mean(-1)             # (B, T)
    m = mask.to(sq.dtype)
    return (sq * m).sum() / m.sum().clamp(min=1)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, states: torch.Tensor | None = None,
                 sae_states: torch.Tensor | None = None, proj: torch.Tensor | None = None,
                 sae_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The training loss ``L = CE(logits, targets) + lambda * R_SAE`` (``R_SAE`` only when ``sae_weight > 0``).

    Shapes as in :func:`masked_cross_entropy` and :func:`sae_regulariser` (``sae_states`` are its ``targets``; the
    mask is ``targets != <pad>``; ``proj`` ``None`` when the sizes match).
    Returns ``(loss, {"xent": float, "sae": float})``.
    """
    if sae_weight < 0:
        raise ValueError(f"sae_weight must be >= 0, got {sae_weight}")
    xent = masked_cross_entropy(logits, targets)
    if sae_weight == 0:
        return xent, {"xent": xent.item(), "sae": 0.0}
    if states is None or sae_states is None:
        raise ValueError("caption_loss: sae_weight > 0 needs states and sae_states")
    reg = sae_regulariser(states, sae_states, proj, targets != Vocab.pad)
    return xent + sae_weight * reg, {"xent": xent.item(), "sae": reg.item()}


# ----------------------------------------------------------------------------------------------- models
class GridEncoder(nn.Module):
    """A small CNN giving a grid of region features: four 3x3 convs (stride 2, 2, 2, 1), batch norm and ReLU.

    Shapes: ``(B, 3, S, S)`` -> ``(B, (S/8)^2, feat_dim)`` (row-major regions); :attr:`grid` = ``S / 8``.
    Being fully convolutional it also encodes other sizes divisible by 8 (a finer grid).
    """

    def __init__(self, image_size: int = 40, feat_dim: int = 64, width: int = 32):
        super().__init__()
        if image_size % 8 or image_size < 8:
            raise ValueError(f"image_size must be a positive multiple of 8, got {image_size}")
        self.grid = image_size // 8
        layers, c = [], 3
        for c_out, stride in ((width, 2), (2 * width, 2), (feat_dim, 2), (feat_dim, 1)):
            layers += [nn.Conv2d(c, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c = c_out
        self.net = nn.Sequential(*layers)
        self.feat_dim = feat_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(2).transpose(1, 2)


class ResNetEncoder(nn.Module):
    """A torchvision ResNet's last convolutional grid as region features (ImageNet normalisation inside).

    ``weights``: the ImageNet weights as :func:`vklib.models.torchvision_net` reads them (a torchvision weights name
    such as ``"IMAGENET1K_V1"`` from the torch hub cache, or a ``.pth`` path); a missing file raises
    :class:`~vklib.models.WeightsNotFoundError` saying where to put it (nothing is downloaded); ``None`` starts from
    random weights. ``frozen`` keeps the backbone in eval mode without gradients (the paper's regions are fixed).

    Shapes: ``(B, 3, S, S)`` in [0, 1] -> ``(B, (S/32)^2, C)`` with ``C`` = 2048 for resnet50/101/152, 512 for
    resnet18/34.
    """

    def __init__(self, arch: str = "resnet101", weights: str | Path | None = "IMAGENET1K_V1", frozen: bool = True):
        super().__init__()
        if arch not in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
            raise ValueError(f"arch must be a torchvision resnet18/34/50/101/152, got {arch!r}")
        net = torchvision_net(arch, weights)
        self.normalize = ImageNetNormalize()
        self.body = nn.Sequential(*list(net.children())[:-2])
        self.feat_dim = net.fc.in_features
        self.frozen = frozen
        if frozen:
            self.body.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.body(self.normalize(images)).flatten(2).transpose(1, 2)


class Captioner(nn.Module):
    """The Up-Down decoder (Anderson et al. 2018) over cached region features, with soft attention or conditional
    latent topic attention.

    Per step ``t`` (``v_n`` region features, ``vbar`` their mean, ``w_{t-1}`` the previous word):

    * attention LSTM: ``h1_t = LSTM1([h2_{t-1}, vbar, E w_{t-1}], h1_{t-1})``;
    * ``attention="soft"``: ``a_t = softmax_n(w . tanh(W_v v_n + W_h h1_t))``;
      ``attention="clta"``: ``beta_t = softmax_k(w . tanh(W_T T_k + W_h h1_t))`` over the ``K`` learned topics
      ``T``, ``gamma_k = softmax_n((U T_k) . (W_v v_n) / sqrt(A))`` and ``a_t = sum_k beta_tk gamma_k``;
    * context ``vhat_t = sum_n a_tn v_n`` (for CLTA also the topic context ``tau_t = sum_k beta_tk T_k``);
    * language LSTM: ``h2_t = LSTM2([vhat_t, (tau_t,) h1_t], h2_{t-1})``, ``p(w_t) = softmax(W_o h2_t)``.

    Args:
        feat_dim: size ``D`` of the region features ``(B, N, D)`` (a frozen encoder's output, :func:`cache_features`).
        vocab_size, embed_dim, hidden_dim, att_dim: sizes.
        attention: ``"soft"`` or ``"clta"``.
        n_topics: ``K`` (CLTA only).
        dropout: before the output layer.
        sae_dim: size ``Z`` of the SAE decoder states the language-LSTM states are matched to. ``0`` or
            ``hidden_dim``: no projection (``sae_proj`` is ``None``; the paper's sizes match); any other size creates
            the learned projection ``sae_proj`` ``(Z, H)`` of :func:`sae_regulariser`.
    """

    def __init__(self, feat_dim: int, vocab_size: int, *, embed_dim: int = 64, hidden_dim: int = 128,
                 att_dim: int = 64, attention: str = "soft", n_topics: int = 8, dropout: float = 0.1,
                 sae_dim: int = 0):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        if attention == "clta" and n_topics < 1:
            raise ValueError(f"n_topics must be >= 1 for CLTA, got {n_topics}")
        d = feat_dim
        self.feat_dim, self.attention, self.hidden_dim = feat_dim, attention, hidden_dim
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm1 = nn.LSTMCell(hidden_dim + d + embed_dim, hidden_dim)
        self.w_v = nn.Linear(d, att_dim)
        self.w_h = nn.Linear(hidden_dim, att_dim, bias=False)
        self.w_a = nn.Parameter(torch.randn(att_dim) / math.sqrt(att_dim))
        extra = 0
        if attention == "clta":
            self.topics = nn.Parameter(torch.randn(n_topics, d) / math.sqrt(d))
            self.w_t = nn.Linear(d, att_dim)       # topic keys for the topic attention
            self.u_t = nn.Linear(d, att_dim)       # topic queries over the regions
            extra = d
        self.lstm2 = nn.LSTMCell(d + extra + hidden_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)
        self.n_topics = n_topics if attention == "clta" else 0
        self.sae_proj = nn.Parameter(torch.randn(sae_dim, hidden_dim) / math.sqrt(hidden_dim)) \
            if sae_dim and sae_dim != hidden_dim else None

    def init_state(self, feats: torch.Tensor) -> tuple[dict, tuple]:
        """Per-image tensors reused at every step (``cache``) and the zero LSTM states."""
        b = feats.shape[0]
        cache = {"feats": feats, "mean": feats.mean(1), "keys": self.w_v(feats)}
        if self.attention == "clta":
            cache["gamma"] = topic_region_attention(self.u_t(self.topics), cache["keys"])   # (B, K, N)
            cache["topic_keys"] = self.w_t(self.topics)                                     # (K, A)
        z = feats.new_zeros(b, self.hidden_dim)
        return cache, (z, z, z, z)

    def step(self, words: torch.Tensor, state: tuple, cache: dict):
        """One decoding step: ``words (B,)`` -> ``(logits (B, V), state, a (B, N), beta (B, K) or None, h2 (B, H))``."""
        h1, c1, h2, c2 = state
        h1, c1 = self.lstm1(torch.cat([h2, cache["mean"], self.embed(words)], 1), (h1, c1))
        q = self.w_h(h1)
        if self.attention == "soft":
            a, beta = additive_attention(cache["keys"], q, self.w_a), None
            ctx = (a[:, :, None] * cache["feats"]).sum(1)
        else:
            a, beta = clta_attention(cache["topic_keys"], q, self.w_a, cache["gamma"])
            ctx = torch.cat([(a[:, :, None] * cache["feats"]).sum(1), beta @ self.topics], 1)
        h2, c2 = self.lstm2(torch.cat([ctx, h1], 1), (h2, c2))
        return self.out(self.drop(h2)), (h1, c1, h2, c2), a, beta, h2

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> dict:
        """Teacher forcing on region features ``feats (B, N, D)`` and ``tokens (B, L)`` (``<bos>`` w_1 ... ``<eos>``
        pad).

        Returns a dict with ``logits (B, L-1, V)`` (predicting ``tokens[:, 1:]``), ``attention (B, L-1, N)``,
        ``topics (B, L-1, K)`` (CLTA; else ``None``) and ``states (B, L-1, H)`` (language-LSTM states).
        """
        cache, state = self.init_state(feats.float())
        logits, att, top, states = [], [], [], []
        for t in range(tokens.shape[1] - 1):
            lo, state, a, beta, h2 = self.step(tokens[:, t], state, cache)
            logits.append(lo), att.append(a), states.append(h2)
            if beta is not None:
                top.append(beta)
        return {"logits": torch.stack(logits, 1), "attention": torch.stack(att, 1),
                "topics": torch.stack(top, 1) if top else None, "states": torch.stack(states, 1)}


class SentenceAutoEncoder(nn.Module):
    """Sentence auto-encoder: a GRU reads the caption into a code ``z = tanh(W h_last)`` ``(B, Z)``; an LSTM
    decoder, started from a state computed from ``z`` and fed ``[E w_{t-1}, z]`` at every step, reconstructs the
    caption (teacher forcing). Its states ``s_t`` (:meth:`states`) are what the captioner is pulled towards.

    Shapes: ``tokens (B, L)`` -> :meth:`encode` ``(B, Z)``; :meth:`states` ``(B, L-1, H)``; :meth:`forward`
    logits ``(B, L-1, V)``.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden_dim: int = 128, code_dim: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=Vocab.pad)
        self.enc = nn.GRU(embed_dim, hidden_dim, batch_first=True)
        self.to_code = nn.Linear(hidden_dim, code_dim)
        self.from_code = nn.Linear(code_dim, 2 * hidden_dim)
        self.dec = nn.LSTM(embed_dim + code_dim, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim, vocab_size)
        self.code_dim, self.hidden_dim = code_dim, hidden_dim

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sentence codes ``(B, Z)`` of ``tokens (B, L)`` (the GRU state at each caption's ``<eos>``)."""
        out, _ = self.enc(self.embed(tokens))
        last = (tokens != Vocab.pad).sum(1).clamp(min=1) - 1
        return torch.tanh(self.to_code(out[torch.arange(len(tokens)), last]))

    def states(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decoder states ``(B, L-1, H)`` while reconstructing ``tokens`` from their own code."""
        z = self.encode(tokens)
        h0, c0 = torch.tanh(self.from_code(z)).chunk(2, 1)
        x = self.embed(tokens[:, :-1])
        x = torch.cat([x, z[:, None, :].expand(-1, x.shape[1], -1)], 2)
        out, _ = self.dec(x, (h0[None].contiguous(), c0[None].contiguous()))
        return out

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.states(tokens))


def make_encoder(name: str, image_size: int, feat_dim: int = 64, *, weights: str | Path | None) -> nn.Module:
    """The encoder a profile names (``encoder`` and ``weights``): ``"grid"`` (:class:`GridEncoder`, trained end to
    end from random weights; ``weights=None``) or a torchvision ResNet (:class:`ResNetEncoder`, frozen, ``weights``
    as :func:`vklib.models.torchvision_net` reads them: ``"IMAGENET1K_V1"`` from the torch hub cache or a ``.pth``
    path, a missing file raising :class:`~vklib.models.WeightsNotFoundError` that names it and the folder it goes
    in; ``None`` starts from random weights, said explicitly)."""
    if name == "grid":
        if weights is not None:
            raise ValueError(f"weights: the grid encoder has no pretrained weights, pass weights=None "
                             f"(got {weights!r})")
        return GridEncoder(image_size, feat_dim)
    if not name.startswith("resnet"):
        raise ValueError(f"encoder must be 'grid' or a torchvision resnet name (e.g. 'resnet101'), got {name!r}")
    return ResNetEncoder(name, weights=weights, frozen=True)


def load_split(cfg: dict, split: str, *, seed: int = 0, data_dir=None) -> data.ImageSet:
    """The ``"train"`` or ``"test"`` split a profile names: generated scenes (``dataset="scenes"``: ``n_train`` /
    ``n_test`` i.i.d. scenes; ``"compositional_scenes"``: :func:`compositional_scenes` with ``cfg["held_out"]``;
    disjoint seeds derived from ``seed``) or the MS-COCO Karpathy split (``"coco_karpathy"``, full data;
    ``n_train`` / ``n_test`` cap the number of images when not ``None``)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    n = cfg[f"n_{split}"]
    if cfg["dataset"] == "scenes":
        return make_scenes(n, cfg["image_size"], seed=2 * seed + (split == "test"))
    if cfg["dataset"] == "compositional_scenes":
        return compositional_scenes(n, cfg["image_size"], seed=2 * seed + (split == "test"), split=split,
                                    held_out=cfg["held_out"])
    if cfg["dataset"] != "coco_karpathy":
        raise ValueError(f"dataset must be 'scenes', 'compositional_scenes' or 'coco_karpathy', got "
                         f"{cfg['dataset']!r}")
    ds = data.load("coco_karpathy", split, full=True, data_dir=data_dir, size=cfg["image_size"])
    if n is None or n >= len(ds):
        return ds
    from dataclasses import replace          # slice lazily: ImageSet.subset would decode every image
    return replace(ds, images=ds.images[:n], meta={k: v if k.startswith("_") else v[:n] for k, v in ds.meta.items()})


# ----------------------------------------------------------------------------------------------- cached features
def cache_features(encoder: nn.Module, images, *, path: str | Path | None = None, batch_size: int = 256,
                   device: str | torch.device = "auto") -> torch.Tensor:
    """Region features of a **frozen** encoder, computed once: ``(N, R, D)`` for ``images`` (an ``(N, 3, S, S)``
    tensor or a sequence of ``(3, S, S)`` images, e.g. lazily read COCO photos), batch by batch in eval mode.

    With ``path`` (a ``.npy`` file, e.g. in the results folder; never in ``data/``) the features are written there
    as float16 and memory-mapped, so a paper run (113k images x 49 x 2048) does not hold them in memory; an existing
    file with ``N`` rows is reused without running the encoder (delete it after changing the encoder or the images).
    Without ``path`` they stay in memory as float32. Rows are read with ordinary indexing, ``feats[idx]``.
    """
    n = len(images)
    if n == 0:
        raise ValueError("cache_features: images is empty")
    if path is not None:
        path = Path(path)
        if path.suffix != ".npy":
            raise ValueError(f"path must name a .npy file, got {str(path)!r}")
        if path.is_file():
            cached = np.load(path, mmap_mode="c")
            if len(cached) == n:
                return torch.from_numpy(cached)
    starts = range(0, n, batch_size)
    first = infer(encoder, gather(images, torch.arange(min(batch_size, n))), batch_size=batch_size, device=device)
    if path is None:
        rest = [infer(encoder, gather(images, torch.arange(s, min(s + batch_size, n))), batch_size=batch_size,
                      device=device) for s in starts[1:]]
        return torch.cat([first, *rest])
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, *first.shape[1:]))
    out[:len(first)] = first.numpy()
    for s in starts[1:]:
        idx = torch.arange(s, min(s + batch_size, n))
        out[s:s + len(idx)] = infer(encoder, gather(images, idx), batch_size=batch_size, device=device).numpy()
    out.flush()
    del out
    return torch.from_numpy(np.load(path, mmap_mode="c"))


# ----------------------------------------------------------------------------------------------- decoding
@torch.no_grad()
def greedy_decode(model: Captioner, feats: torch.Tensor, max_len: int = 16) -> dict:
    """Greedy decoding of the region features ``(B, N, D)`` of a batch of images (eval mode).

    Returns ``{"tokens": (B, T) ids, "attention": (B, T, N), "topics": (B, T, K) or None}`` with ``T <= max_len + 1``
    (the words, ``<eos>``, then ``<pad>`` once a caption has ended); ``attention[:, t]`` is the region attention
    used to emit token ``t``. ``<pad>`` and ``<bos>`` are never emitted.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    was = model.training
    model.eval()
    cache, state = model.init_state(feats.float())
    b = feats.shape[0]
    words = torch.full((b,), Vocab.bos, dtype=torch.long, device=feats.device)
    done = torch.zeros(b, dtype=torch.bool, device=feats.device)
    toks, att, top = [], [], []
    for _ in range(max_len + 1):
        logits, state, a, beta, _ = model.step(words, state, cache)
        logits[:, [Vocab.pad, Vocab.bos]] = float("-inf")
        words = logits.argmax(-1).masked_fill(done, Vocab.pad)
        toks.append(words), att.append(a)
        if beta is not None:
            top.append(beta)
        done = done | (words == Vocab.eos)
        if bool(done.all()):
            break
    model.train(was)
    tokens = torch.stack(toks, 1)
    return {"tokens": tokens, "attention": torch.stack(att, 1), "topics": torch.stack(top, 1) if top else None}


@torch.no_grad()
def beam_search(model: Captioner, feats: torch.Tensor, beam: int = 3, max_len: int = 16) -> torch.Tensor:
    """Beam search over region features ``feats (B, N, D)`` (sum of log-probabilities, ``beam`` hypotheses per image,
    all images and beams in one batch).

    Returns the best sequence of every image, ``(B, max_len + 1)`` ids ending with ``<eos>`` (or cut at
    ``max_len + 1``), padded with ``<pad>``. ``beam=1`` equals greedy decoding.
    """
    if beam < 1 or max_len < 1:
        raise ValueError(f"beam and max_len must be >= 1, got beam={beam}, max_len={max_len}")
    was = model.training
    model.eval()
    b, dev = feats.shape[0], feats.device
    feats = feats.float().repeat_interleave(beam, 0)                         # (B*k, N, D), beams of an image adjacent
    cache, state = model.init_state(feats)
    words = torch.full((b * beam,), Vocab.bos, dtype=torch.long, device=dev)
    score = torch.zeros(b, beam, device=dev)
    score[:, 1:] = float("-inf")                                      # all beams start identical: keep one
    done = torch.zeros(b * beam, dtype=torch.bool, device=dev)
    seqs = torch.zeros(b * beam, 0, dtype=torch.long, device=dev)
    for _ in range(max_len + 1):
        logits, state, _, _, _ = model.step(words, state, cache)
        logits[:, [Vocab.pad, Vocab.bos]] = float("-inf")
        logp = logits.log_softmax(-1)
        v = logp.shape[-1]
        # a finished hypothesis only extends with <pad> at no cost
        fin = torch.full_like(logp, float("-inf"))
        fin[:, Vocab.pad] = 0.0
        logp = torch.where(done[:, None], fin, logp)
        cand = (score.view(-1, 1) + logp).view(b, beam * v)
        score, flat = cand.topk(beam, dim=1)                          # (B, k)
        src = (flat // v + torch.arange(b, device=dev)[:, None] * beam).view(-1)
        words = (flat % v).view(-1)
        state = tuple(s[src] for s in state)
        seqs = torch.cat([seqs[src], words[:, None]], 1)
        done = done[src] | (words == Vocab.eos)
        if bool(done.all()):
            break
    model.train(was)
    best = score.argmax(1) + torch.arange(b, device=dev) * beam
    return seqs[best]


def caption_features(model: Captioner, feats: torch.Tensor, vocab: Vocab, *, beam: int = 1, max_len: int = 16,
                     batch_size: int = 256, device: str | torch.device = "auto") -> list[str]:
    """Captions (strings) of the images whose region features are ``feats`` ``(N, R, D)`` (:func:`cache_features`), by
    :func:`greedy_decode` when ``beam=1``, else :func:`beam_search`, batch by batch (:func:`vklib.train.infer`)."""
    def decode(m: Captioner, x: torch.Tensor) -> torch.Tensor:
        ids = greedy_decode(m, x, max_len)["tokens"] if beam == 1 else beam_search(m, x, beam, max_len)
        return F.pad(ids, (0, max_len + 1 - ids.shape[1]), value=Vocab.pad)   # (B, max_len + 1) in every batch

    return [vocab.decode(row) for row in infer(model, feats, fn=decode, batch_size=batch_size, device=device)]


# ----------------------------------------------------------------------------------------------- metrics
@functools.cache
def _meteor():
    """pycocoevalcap's METEOR scorer, started once per process: its Java process spends tens of seconds loading its
    paraphrase tables before the first score, and every later call reuses it."""
    from pycocoevalcap.meteor.meteor import Meteor
    return Meteor()


def caption_metrics(references: Sequence[Sequence[str]], hypotheses: Sequence[str], *, java: bool | None = False,
                    scale: float = 1.0) -> dict[str, float]:
    """Corpus metrics of pycocoevalcap: ``bleu1`` .. ``bleu4``, ``rouge_l``, ``cider`` (pure Python), and with
    ``java`` (``None``: whenever a ``java`` executable exists) also ``meteor`` and, if its Stanford models are
    installed, ``spice``. Captions are tokenised with :func:`tokenize` (not the Java PTB tokenizer), so numbers
    can differ slightly from the official toolkit's. The course records the native scale (``scale=1``) in every
    profile, as ``vklib/paper_numbers.csv`` does; ``scale=100`` gives the numbers papers print.

    Args:
        references: per image, a list of reference captions (str).
        hypotheses: per image, one generated caption (str).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    if len(references) != len(hypotheses) or not hypotheses:
        raise ValueError(f"need one hypothesis per image and at least one image; got {len(references)} reference "
                         f"lists and {len(hypotheses)} hypotheses")
    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(references)}
    if any(not refs for refs in gts.values()):
        raise ValueError("every image needs at least one reference caption")
    res = {i: [" ".join(tokenize(h)) or "<empty>"] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    if java is None:
        java = shutil.which("java") is not None
    if java:
        if shutil.which("java") is None:
            raise RuntimeError("java=True but no java executable is on PATH (METEOR and SPICE need Java)")
        try:
            out["meteor"] = float(_meteor().compute_score(gts, res)[0])
        except Exception:
            _meteor.cache_clear()        # a scorer that failed mid-call keeps its lock: the next call starts afresh
            raise
        import pycocoevalcap.spice as spice_pkg
        if any((Path(spice_pkg.__file__).parent / "lib").glob("stanford-corenlp-*.jar")):
            from pycocoevalcap.spice.spice import Spice
            out["spice"] = float(Spice().compute_score(gts, res)[0])
    return {k: v * scale for k, v in out.items()}


# ----------------------------------------------------------------------------------------------- MS-COCO Karpathy
def _karpathy_full(root: Path, split: str, download: bool, size):
    folder = root / "coco"
    listing = folder / "dataset_coco.json"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} (Karpathy's split file) is missing")
    records = json.loads(listing.read_text())["images"]
    keep = ("train", "restval") if split == "train" else (split,)
    records = [r for r in records if r["split"] in keep]
    paths = [folder / r["filepath"] / r["filename"] for r in records]
    if paths and not paths[0].is_file():
        raise FileNotFoundError(f"image {paths[0]} is missing (expected <data_dir>/coco/train2014, val2014)")
    return data.ImageSet("coco_karpathy", split, data.LazyImages(paths, "RGB", size or 224), None, None,
                         {"captions": [[s["raw"] for s in r["sentences"]] for r in records],
                          "image_id": [r.get("cocoid") for r in records]}, "full")
