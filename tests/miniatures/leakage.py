"""Miniature of the full LFW that :mod:`vklib.leakage` reads (``"lfw"``, :func:`vklib.leakage._lfw_full`).

The official release is ``lfw.tgz`` from vis-www.cs.umass.edu/lfw (its README.txt, section 1): unpacked, it is one
folder ``lfw/`` with a sub-folder per person, ``lfw/<Person_Name>/<Person_Name>_<xxxx>.jpg``, ``xxxx`` the image
number padded to four digits from ``0001``; every image is a 250x250 RGB JPEG (13,233 images of 5,749 people; 4,069
people have a single image). The list files of the protocols (``pairs.txt``, ``people.txt``) are separate downloads
beside the archive and not part of it; no reader of the course uses them, so none is written.

This miniature writes that layout for eight people: five with 6 to 9 images (enough for a gallery/probe split of
notebook 08's second test set) and three with 1, 2 and 3 images (the small identities every protocol has to
handle). Each person's images are noisy copies of one smooth random pattern, so identities differ.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import save_image

#: (person, number of images), LFW's own name format (underscores for spaces).
PEOPLE = (("Ada_Lovelace", 6), ("Alan_Turing", 7), ("Grace_Hopper", 8), ("Emmy_Noether", 6), ("Kurt_Goedel", 9),
          ("Marie_Curie", 1), ("Niels_Bohr", 2), ("Rosalind_Franklin", 3))
SIZES = {"lfw": {"all": sum(n for _, n in PEOPLE)}}
SIDE = 250


def _face(rng: np.random.Generator) -> np.ndarray:
    """A smooth random RGB pattern ``(250, 250, 3)`` float in [0, 255]: 10x10 blocks of 25 px."""
    return np.kron(rng.uniform(0, 255, size=(SIDE // 25, SIDE // 25, 3)), np.ones((25, 25, 1)))


def write(root: Path) -> None:
    """Write ``<root>/lfw/<Person_Name>/<Person_Name>_0001.jpg ...`` (250x250 RGB JPEG)."""
    rng = np.random.default_rng(2)
    for person, n in PEOPLE:
        base = _face(rng)
        for k in range(1, n + 1):
            img = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255).astype(np.uint8)
            save_image(Path(root) / "lfw" / person / f"{person}_{k:04d}.jpg", img, quality=90)
