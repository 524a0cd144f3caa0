"""Miniatures of the full datasets that :mod:`vklib.data` itself reads (see the package docstring)."""
from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np

from . import pixels, save_image

#: What each miniature holds, for the reader tests: name -> {split: number of images}.
SIZES = {"mnist": {"train": 100, "test": 50}, "fashion_mnist": {"train": 100, "test": 50},
         "cifar10": {"train": 100, "test": 50}, "cifar100": {"train": 200, "test": 100},
         "svhn": {"train": 100, "test": 50}, "lfw_people": {"all": 40}, "orl_faces": {"all": 30},
         "lfw_landmarks5": {"train": 6, "test": 4}, "pacs": {"all": 56},
         "coco_captions_mini": {"train": 3, "val": 2}, "set12": {"test": 3}}


def _idx(path: Path, array: np.ndarray) -> None:
    """MNIST's IDX format (uncompressed, as torchvision's downloader leaves it in ``raw/``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(head + array.astype(np.uint8).tobytes())


def _mnist_like(base: Path, folder: str, rng) -> None:
    for stem, n in (("train", 100), ("t10k", 50)):
        _idx(base / folder / "raw" / f"{stem}-images-idx3-ubyte", pixels(rng, n, 28, 28))
        _idx(base / folder / "raw" / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10)


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write(root: Path) -> None:
    rng = np.random.default_rng(0)
    tv = root / "torchvision"
    _mnist_like(tv, "MNIST", rng)
    _mnist_like(tv, "FashionMNIST", rng)
    # CIFAR-10: five training batches and a test batch, rows of 3072 uint8 (R, G, B planes), plus batches.meta;
    # 10 training and 5 test images per class
    c10 = tv / "cifar-10-batches-py"
    for i in range(1, 6):
        _pickle(c10 / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5",
                                          "labels": [(20 * (i - 1) + k) % 10 for k in range(20)],
                                          "data": pixels(rng, 20, 3072),
                                          "filenames": [f"{i}_{k}.png" for k in range(20)]})
    _pickle(c10 / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": [k % 10 for k in range(50)],
                                 "data": pixels(rng, 50, 3072), "filenames": [f"t{k}.png" for k in range(50)]})
    _pickle(c10 / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                   "horse", "ship", "truck"], "num_cases_per_batch": 10000,
                                   "num_vis": 3072})
    # CIFAR-100: train and test pickles with fine and coarse labels, plus meta
    c100 = tv / "cifar-100-python"
    for split, n in (("train", 200), ("test", 100)):
        _pickle(c100 / split, {"filenames": [f"{k}.png" for k in range(n)], "fine_labels": [k % 100 for k in range(n)],
                               "coarse_labels": [k % 20 for k in range(n)], "data": pixels(rng, n, 3072)})
    _pickle(c100 / "meta", {"fine_label_names": [f"class_{k:02d}" for k in range(100)],
                            "coarse_label_names": [f"super_{k:02d}" for k in range(20)]})
    # SVHN: MATLAB files with X (32, 32, 3, N) and y (N, 1), the digit 0 labelled 10
    from scipy.io import savemat
    for split, n in (("train", 100), ("test", 50)):
        tv.mkdir(parents=True, exist_ok=True)
        savemat(tv / f"{split}_32x32.mat", {"X": pixels(rng, 32, 32, 3, n),
                                            "y": (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)})
    # LFW people, as scikit-learn's fetcher leaves it: lfw_home/ with the three pairs files and lfw_funneled/
    lfw = root / "sklearn" / "lfw_home"
    for name in ("pairsDevTrain.txt", "pairsDevTest.txt", "pairs.txt"):
        lfw.mkdir(parents=True, exist_ok=True)
        (lfw / name).write_text("1\n")
    for person in ("Ada_Lovelace", "Alan_Turing"):
        for k in range(1, 21):
            save_image(lfw / "lfw_funneled" / person / f"{person}_{k:04d}.jpg", pixels(rng, 250, 250, 3))
    # ORL / AT&T: att_faces/s<person>/<n>.pgm, 112x92 grey
    for person in range(1, 4):
        for k in range(1, 11):
            save_image(root / "att_faces" / f"s{person}" / f"{k}.pgm", pixels(rng, 112, 92))
    # CUHK CNN_FacePoint: list files with "path left right top bottom x1 y1 ... x5 y5", 250x250 LFW images
    cuhk = root / "cuhk_facepoint"
    for split, n in (("train", 6), ("test", 4)):
        lines = []
        for k in range(n):
            rel = f"lfw_5590\\Person_{split}_{k}.jpg"
            save_image(cuhk / rel.replace("\\", "/"), pixels(rng, 250, 250, 3))
            pts = [100, 110, 150, 110, 125, 135, 105, 160, 145, 160]
            lines.append(" ".join([rel, "84", "161", "92", "169"] + [f"{v:.4f}" for v in pts]))
        name = "trainImageList.txt" if split == "train" else "testImageList.txt"
        (cuhk / name).write_text("\n".join(lines) + "\n")
    # PACS: PACS/<domain>/<class>/<n>.jpg, two images per (domain, class)
    from vklib.data import PACS_CLASSES, PACS_DOMAINS
    for dom in PACS_DOMAINS:
        for cls in PACS_CLASSES:
            for k in range(2):
                save_image(root / "PACS" / dom / cls / f"pic_{k:03d}.jpg", pixels(rng, 227, 227, 3))
    # MS-COCO 2017 captions: annotations/captions_<split>2017.json and <split>2017/<12-digit id>.jpg
    for split, ids in (("train", [9, 25, 30]), ("val", [139, 285])):
        images, anns = [], []
        for i in ids:
            fname = f"{i:012d}.jpg"
            save_image(root / "coco" / f"{split}2017" / fname, pixels(rng, 48, 64, 3))
            images.append({"id": i, "file_name": fname, "height": 48, "width": 64, "license": 1})
            anns += [{"id": i * 10 + c, "image_id": i, "caption": f"a photo number {i}, caption {c}"}
                     for c in range(5)]
        (root / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "coco" / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(
            {"info": {"description": "miniature"}, "licenses": [{"id": 1, "name": "CC BY 2.0", "url": ""}],
             "images": images, "annotations": anns}))
    # Set12: set12/<name>.png grey
    for name in ("01", "02", "03"):
        save_image(root / "set12" / f"{name}.png", pixels(rng, 40, 40))
