"""Miniature of AFLW as released with the IMM code (Jakab et al., NeurIPS 2018; github.com/tomasjakab/imm), the full
dataset of ``vklib.impute`` (registry name ``aflw_imm``, notebook 05's landmark regression; the L2I code,
github.com/WeiHongLee/Learning-to-impute ``Regression/``, reads the same release from ``./data/aflw_release-2/``).

``<root>/aflw_release-2/``, as ``aflw_release-2.zip`` unpacks and as IMM's ``imm/datasets/aflw_dataset.py`` reads it:

- ``aflw_train_images.txt``, ``aflw_test_images.txt``: one image file name per line, relative to ``output/``;
- ``aflw_train_keypoints.mat``, ``aflw_test_keypoints.mat``: MATLAB files holding ``gt``, ``(N, 5, 2)`` floats, the
  five landmarks of each listed image (left eye, right eye, nose, left and right mouth corner) as ``(y, x)`` pixels
  (IMM turns them into ``(x, y)`` with ``gt[:, :, [1, 0]]``), and ``hw``, ``(N, 2)``, each image's height and width
  (IMM scales the landmarks by ``new_size / hw`` when it resizes the image);
- ``output/<name>``: the face images, JPEG, of differing sizes.

The names follow those of IMM's own AFLW examples (``examples/resources/visualize/image00597_55319.jpg``:
``image<AFLW image>_<face id>.jpg``). Every face is dim, blocky noise with a white 5 x 5 square centred on its
left-eye landmark, so that a test can check that the landmarks still sit on the face after the reader's resize.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import pixels, save_image

#: What each miniature holds, for the reader tests: name -> {split: number of images}.
SIZES = {"aflw_imm": {"train": 20, "test": 4}}

#: (height, width) of the faces, in turn: square and not (the reader resizes each to a square)
FACE_SIZES = [(64, 64), (72, 60), (58, 70)]
#: (x, y) of the five landmarks as fractions of the width and height
LANDMARKS = np.array([[0.32, 0.38], [0.68, 0.37], [0.5, 0.55], [0.36, 0.75], [0.64, 0.76]])


def faces(split: str) -> list[tuple[str, tuple[int, int], np.ndarray]]:
    """``(file name, (height, width), (5, 2) landmarks as (x, y) pixels)`` of every face of ``split``, in list order;
    the left eye sits on a whole pixel."""
    out = []
    for k in range(SIZES["aflw_imm"][split]):
        h, w = FACE_SIZES[k % len(FACE_SIZES)]
        pts = LANDMARKS * [w, h] + (k % 3 - 1)
        pts[0] = np.round(pts[0])
        name = f"image{(100 * k + 7) if split == 'train' else (90000 + k):05d}_{40000 + 17 * k}.jpg"
        out.append((name, (h, w), pts))
    return out


def _face(rng: np.random.Generator, h: int, w: int, eye: np.ndarray) -> np.ndarray:
    coarse = pixels(rng, -(-h // 8), -(-w // 8), 3) // 3
    img = np.kron(coarse, np.ones((8, 8, 1), np.uint8))[:h, :w].copy()
    x, y = int(eye[0]), int(eye[1])
    img[y - 2:y + 3, x - 2:x + 3] = 255
    return img


def write(root: Path) -> None:
    from scipy.io import savemat
    rng = np.random.default_rng(5)
    folder = Path(root) / "aflw_release-2"
    for split in ("train", "test"):
        listed = faces(split)
        for name, (h, w), pts in listed:
            save_image(folder / "output" / name, _face(rng, h, w, pts[0]), quality=95)
        (folder / f"aflw_{split}_images.txt").write_text("".join(f"{name}\n" for name, _, _ in listed))
        gt = np.stack([pts[:, ::-1] for _, _, pts in listed])                      # (N, 5, 2) as (y, x)
        hw = np.array([size for _, size, _ in listed], np.float64)                 # (N, 2) height, width
        savemat(folder / f"aflw_{split}_keypoints.mat", {"gt": gt, "hw": hw})
