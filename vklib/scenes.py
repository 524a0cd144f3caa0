"""The generated captioning task of notebook 09: scenes of two coloured shapes with spatial-relation captions, and a
compositional split of them (test colour-shape pairs never seen in training).

The captioning method (text, networks, losses, decoding, metrics) is :mod:`vklib.captioning`; this module is the
task it is trained and scored on in the quick profile, kept apart as :mod:`vklib.pointing` is from
:mod:`vklib.saliency`. The paper's MS-COCO Karpathy split is a registered dataset (``coco_karpathy``).

* vocabulary of the scenes: :data:`COLOURS`, :data:`SHAPES`, :data:`SIZES`, :data:`RELATIONS`;
* :func:`make_scenes` (deterministic, vectorised), :func:`compositional_scenes` with the pairs :data:`HELD_OUT`,
  :func:`scene_attributes` (labels to pre-train a grid encoder on);
* :func:`caption_overlap`: how many test images have a reference caption seen in training.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from . import data
from .captioning import tokenize

__all__ = ["COLOURS", "HELD_OUT", "RELATIONS", "SHAPES", "SIZES", "caption_overlap", "compositional_scenes",
           "make_scenes", "scene_attributes"]

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
    lo = margin[:, None] + torch.clamp(-d, min=0)
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
    """How many test images have a reference caption identical (after :func:`~vklib.captioning.tokenize`) to a
    training reference: the images a captioner could score on by reciting a training caption. Any references
    (scenes or COCO): per image, a list of str."""
    seen = {" ".join(tokenize(c)) for refs in train_refs for c in refs}
    return sum(any(" ".join(tokenize(c)) in seen for c in refs) for refs in test_refs)
