"""Miniature of the MS-COCO Karpathy split, the full dataset of ``vklib.captioning`` (notebook 09), registered as
``coco_karpathy``, in the layout of the official releases.

Under ``<root>/coco/``:

- ``dataset_coco.json``: Karpathy's split file from ``caption_datasets.zip`` (cs.stanford.edu/people/karpathy/
  deepimagesent), one JSON object ``{"images": [...], "dataset": "coco"}``. Every image record has ``filepath``
  (``"train2014"`` or ``"val2014"``), ``filename`` (``COCO_val2014_000000391895.jpg``: the COCO 2014 name with the
  12-digit COCO id), ``imgid`` (its index in the list), ``split`` (``"train"``, ``"restval"``, ``"val"`` or
  ``"test"``: the 82,783 train2014 images are ``train``, the 40,504 val2014 images are 5,000 ``val``, 5,000 ``test``
  and 30,504 ``restval``), ``sentences`` (five or more, each ``{"tokens": [lower-case words, punctuation dropped],
  "raw": the caption as written, "imgid", "sentid"}``), ``sentids`` (the sentences' ids) and ``cocoid``. As in the
  release, the val2014 records come first;
- ``train2014/COCO_train2014_<12-digit id>.jpg`` and ``val2014/COCO_val2014_<12-digit id>.jpg``: the COCO 2014
  images, RGB JPEG of at most 640 pixels a side (here 640 x 480 and 480 x 640).

Here: 3 ``train``, 2 ``restval``, 2 ``val`` and 3 ``test`` images with five captions each, over a small vocabulary
so that words recur (the paper profile keeps words seen at least 5 times). The reader's ``train`` split is
``train`` + ``restval`` (Karpathy's 113,287 training images).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import save_image

#: What the miniature holds, for the reader tests: name -> {split: number of images}.
SIZES = {"coco_karpathy": {"train": 5, "val": 2, "test": 3}}

#: (cocoid, folder, Karpathy split) in the release's order: the val2014 images first.
RECORDS = [(391895, "val2014", "test"), (522418, "val2014", "test"), (184613, "val2014", "test"),
           (318219, "val2014", "val"), (554625, "val2014", "val"), (397133, "val2014", "restval"),
           (37777, "val2014", "restval"), (57870, "train2014", "train"), (384029, "train2014", "train"),
           (222016, "train2014", "train")]

_SUBJECTS = ["A man", "A woman", "A dog", "Two people", "A cat"]
_VERBS = ["riding a bike", "sitting on a bench", "standing next to a car", "walking down the street",
          "playing with a ball"]
_PLACES = ["in a park.", "on a sunny day.", "near the water.", "in front of a building.", "at night."]


def captions(cocoid: int) -> list[str]:
    """The five raw captions of image ``cocoid`` (capitalised, a full stop and sometimes a trailing space, as COCO's
    crowd wrote them)."""
    k = cocoid % 5
    return [f"{_SUBJECTS[(k + j) % 5]} {_VERBS[(2 * k + j) % 5]} {_PLACES[(k + 2 * j) % 5]}" + (" " if j == 3 else "")
            for j in range(5)]


def _tokens(raw: str) -> list[str]:
    return [w.strip(".,").lower() for w in raw.split() if w.strip(".,")]


def _photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth colour field (bilinear upsampling of a 6 x 8 grid): compresses to a few kilobytes."""
    from PIL import Image
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def write(root: Path) -> None:
    folder = Path(root) / "coco"
    rng = np.random.default_rng(9)
    images, sentid = [], 770337
    for imgid, (cocoid, filepath, split) in enumerate(RECORDS):
        filename = f"COCO_{filepath}_{cocoid:012d}.jpg"
        height, width = (480, 640) if imgid % 3 else (640, 480)
        save_image(folder / filepath / filename, _photo(rng, height, width), quality=90)
        sentences = []
        for raw in captions(cocoid):
            sentences.append({"tokens": _tokens(raw), "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append({"filepath": filepath, "sentids": [s["sentid"] for s in sentences], "filename": filename,
                       "imgid": imgid, "split": split, "sentences": sentences, "cocoid": cocoid})
    (folder / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
