"""Unit tests of vklib.scenes, the generated captioning task of notebook 09: the scenes, their captions, the
compositional split and the caption-overlap measure."""
from __future__ import annotations

import pytest
import torch

from vklib import data
from vklib import scenes as S


def test_make_scenes_shapes_captions_and_determinism():
    a = S.make_scenes(40, 32, seed=3)
    b = S.make_scenes(40, 32, seed=3)
    c = S.make_scenes(40, 32, seed=4)
    assert isinstance(a, data.ImageSet) and a.images.shape == (40, 3, 32, 32)
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert torch.equal(a.images, b.images) and a.meta["captions"] == b.meta["captions"]
    assert not torch.equal(a.images, c.images)
    assert all(len(caps) == 5 for caps in a.meta["captions"])
    assert (a.meta["colour"][:, 0] != a.meta["colour"][:, 1]).all()
    colours = list(S.COLOURS)
    for i in range(40):
        cap = a.meta["captions"][i][1]
        rel = S.RELATIONS[int(a.meta["relation"][i])]
        assert cap.startswith(f"a {colours[int(a.meta['colour'][i, 0])]} {S.SHAPES[int(a.meta['shape'][i, 0])]} {rel}")
        # the stated relation holds between the centres (object 0 relative to object 1)
        (x0, y0), (x1, y1) = a.meta["centre"][i].tolist()
        dx, dy = x0 - x1, y0 - y1
        expected = {"to the left of": dx < 0 and abs(dx) > abs(dy), "to the right of": dx > 0 and abs(dx) > abs(dy),
                    "above": dy < 0 and abs(dy) > abs(dx), "below": dy > 0 and abs(dy) > abs(dx)}
        assert expected[rel], (i, rel, dx, dy)
        assert 0 <= min(x0, y0, x1, y1) and max(x0, y0, x1, y1) <= 32
    # the object's colour is painted at its centre
    rgb = torch.tensor(list(S.COLOURS.values()))
    ctr = a.meta["centre"][:, 0].long().clamp(0, 31)
    px = a.images[torch.arange(40), :, ctr[:, 1], ctr[:, 0]]
    assert ((px - rgb[a.meta["colour"][:, 0]]).abs().max(1).values < 0.2).float().mean() > 0.9


def test_make_scenes_errors():
    with pytest.raises(ValueError, match="n must"):
        S.make_scenes(0)
    with pytest.raises(ValueError, match="size"):
        S.make_scenes(2, size=8)


def test_compositional_scenes_hold_out_pairs_and_no_caption_overlap():
    tr = S.compositional_scenes(60, 16, seed=0, split="train")
    te = S.compositional_scenes(30, 16, seed=1, split="test")
    colours = list(S.COLOURS)
    held = {(colours.index(c), S.SHAPES.index(s)) for c, s in S.HELD_OUT}
    pairs = lambda ds: [set(zip(c, s)) for c, s in zip(ds.meta["colour"].tolist(), ds.meta["shape"].tolist())]
    assert all(not (p & held) for p in pairs(tr)) and all(p & held for p in pairs(te))
    assert len(tr) == 60 and len(te) == 30 and te.meta["_held_out"] == list(S.HELD_OUT)
    assert S.caption_overlap(tr.meta["captions"], te.meta["captions"]) == 0
    assert S.caption_overlap(tr.meta["captions"], tr.meta["captions"][:5]) == 5
    # every colour and every shape is still seen in training
    assert set(tr.meta["colour"].flatten().tolist()) == set(range(5)) and set(tr.meta["shape"].flatten().tolist()) == {0, 1, 2}
    again = S.compositional_scenes(30, 16, seed=1, split="test")
    assert torch.equal(again.images, te.images)
    with pytest.raises(ValueError, match="held_out"):
        S.compositional_scenes(4, 16, held_out=[("purple", "circle")])
    with pytest.raises(ValueError, match="held_out"):              # every pair held out: no training scene left
        S.compositional_scenes(4, 16, held_out=[(c, s) for c in S.COLOURS for s in S.SHAPES])
    with pytest.raises(ValueError, match="split"):
        S.compositional_scenes(4, 16, split="val")


def test_scene_attributes_multi_hot():
    scenes = S.make_scenes(5, 16, seed=2)
    attrs = S.scene_attributes(scenes.meta)
    assert attrs.shape == (5, 10) and set(attrs.unique().tolist()) <= {0.0, 1.0}
    for i in range(5):
        assert attrs[i, :5].sum() == 2                                # two objects of different colours
        assert attrs[i, scenes.meta["colour"][i]].all() and attrs[i, 5 + scenes.meta["shape"][i]].all()
        assert attrs[i, 8 + scenes.meta["scale"][i]].all()
