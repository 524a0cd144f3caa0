"""The pointing game (Zhang et al., ECCV 2016) with TorchRay's protocol, and the detection sets it is played on.

A saliency method "points" at the maximum of its map; a trial (one image and one class present in it) is a hit when
a pixel of that class lies within 15 pixels of the pointed pixel, measured in the *original* image frame. The
accuracy is averaged per class, then over classes. This module is the benchmark, kept apart from the saliency
methods of :mod:`vklib.saliency` as TorchRay keeps ``torchray.benchmark`` apart from ``torchray.attribution``.

Protocol
    :func:`pointing_pairs` (the trials; VOC's all-"difficult" pairs skipped), :func:`class_mask` (the class's pixels:
    COCO instance masks rasterised by pycocotools, :func:`segmentation_mask`, or VOC boxes), :func:`pointing_hits`
    (maps upsampled to the original size, the tolerance disc), :func:`class_averaged`, and the
    :func:`centre_saliency` baseline.
Readers
    ``voc07`` and ``coco_instances`` (full data, registered in :mod:`vklib.data`) and :func:`coco_mini_instances`
    (the shipped COCO photos with masks). Images are resized for the network; boxes, masks and ``orig_size`` stay in
    the original frame.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from . import data
from .data import ImageSet, LazyImages

__all__ = [
    "COCO_NAMES", "VOC_CLASSES", "centre_saliency", "class_averaged", "class_mask", "coco_mini_instances",
    "pointing_hits", "pointing_pairs", "segmentation_mask",
]


# ----------------------------------------------------------------------------------------------- protocol
def segmentation_mask(segmentation, height: int, width: int) -> torch.Tensor:
    """One COCO instance's mask at the annotation's (original) resolution, ``(height, width)`` bool, rasterised by
    pycocotools as COCO's ``annToMask`` (and TorchRay's COCO pointing game) does: polygons
    (``[[x0, y0, x1, y1, ...], ...]``) or an RLE (``{"counts": ..., "size": [h, w]}``, COCO's format of crowd regions)."""
    from pycocotools import mask as mask_utils
    if isinstance(segmentation, dict) and list(segmentation.get("size", ())) != [height, width]:
        raise ValueError(f"segmentation: an RLE of size {[height, width]} expected, got size {segmentation.get('size')}")
    decoded = mask_utils.decode(mask_utils.frPyObjects(segmentation, height, width))   # (h, w) or (h, w, parts)
    return torch.from_numpy(decoded.reshape(height, width, -1).any(axis=2))


def class_mask(meta: Mapping, i: int, c: int) -> torch.Tensor:
    """The pixels of class ``c`` in image ``i`` of a detection set, in the *original* image frame
    ``meta["orig_size"][i] = (H0, W0)``: the union of the class's instance masks (``meta["segmentation"]``, COCO) or,
    without masks, of its boxes (``meta["boxes"]``, ``(K, 4)`` inclusive ``(x0, y0, x1, y1)`` in that frame, VOC).
    Returns ``(H0, W0)`` bool."""
    h, w = meta["orig_size"][i]
    pick = (meta["box_labels"][i] == c).nonzero().flatten().tolist()
    if "segmentation" in meta:
        out = torch.zeros(h, w, dtype=torch.bool)
        for k in pick:
            out |= segmentation_mask(meta["segmentation"][i][k], h, w)
        return out
    ys, xs = torch.arange(h).view(-1, 1, 1), torch.arange(w).view(1, -1, 1)
    b = meta["boxes"][i][pick].round()
    return ((xs >= b[:, 0]) & (xs <= b[:, 2]) & (ys >= b[:, 1]) & (ys <= b[:, 3])).any(-1)


def pointing_hits(saliency: torch.Tensor, masks: Sequence[torch.Tensor], tolerance: float = 15.0) -> torch.Tensor:
    """The pointing game (Zhang et al.) with TorchRay's protocol: each map is upsampled (bilinear) to its mask's
    original image size, its maximum (the first in row-major order on ties) is the pointed pixel, and it is a hit
    when a pixel of the class lies within ``tolerance`` pixels (Euclidean, in the original frame) of it.

    Args:
        saliency: ``(N, h, w)`` maps at the network's input resolution, or ``(N, M, h, w)``: the maps of ``M``
            methods for each trial (upsampled together).
        masks: N bool tensors ``(H0_i, W0_i)``, the pixels of the explained class in the original image
            (:func:`class_mask`); images differ in size, hence one upsampling per trial.

    Returns:
        ``(N,)`` or ``(N, M)`` bool.
    """
    if saliency.ndim not in (3, 4) or len(masks) != len(saliency):
        raise ValueError(f"saliency must be (N, h, w) or (N, M, h, w) with one mask per trial, got "
                         f"{tuple(saliency.shape)} and {len(masks)} masks")
    if any(m.ndim != 2 or m.dtype != torch.bool for m in masks):
        raise ValueError("each masks[i] must be a (H0, W0) bool tensor")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    maps = saliency if saliency.ndim == 4 else saliency[:, None]
    t = int(tolerance)
    offsets = torch.arange(-t, t + 1, dtype=torch.float32)
    disc = offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2 <= tolerance ** 2   # (2t+1, 2t+1)
    hits = torch.zeros(maps.shape[:2], dtype=torch.bool)
    for i, (m, mask) in enumerate(zip(maps, masks)):
        h0, w0 = mask.shape
        up = F.interpolate(m[None].float().cpu(), size=(h0, w0), mode="bilinear", align_corners=False)[0]
        py, px = up.flatten(1).argmax(1).div(w0, rounding_mode="floor"), up.flatten(1).argmax(1) % w0   # (M,)
        padded = F.pad(mask, (t, t, t, t))                  # (H0 + 2t, W0 + 2t): the disc may leave the image
        for k in range(len(m)):
            hits[i, k] = (padded[py[k]:py[k] + 2 * t + 1, px[k]:px[k] + 2 * t + 1] & disc).any()
    return hits if saliency.ndim == 4 else hits[:, 0]


def centre_saliency(images: torch.Tensor) -> torch.Tensor:
    """The centre baseline of the pointing game: a Gaussian bump at the image centre, ``(N, H, W)`` (its maximum,
    after upsampling to any size, is the centre pixel)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    ys = torch.arange(h, dtype=torch.float32, device=images.device) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32, device=images.device) - (w - 1) / 2
    bump = torch.exp(-(ys.view(-1, 1) / h) ** 2 - (xs.view(1, -1) / w) ** 2)
    return bump.expand(n, h, w).clone()


def pointing_pairs(ds: ImageSet, limit: int | None = None) -> list[tuple[int, int]]:
    """The trials of the pointing game: one per (image, class present) pair of a detection set, in image order; as
    in TorchRay, a VOC pair whose boxes of the class are all "difficult" (``meta["difficult"]``) is skipped."""
    if "box_labels" not in ds.meta or "orig_size" not in ds.meta:
        raise ValueError(f"{ds.name}: the pointing game needs meta['box_labels'] and meta['orig_size']")
    n = len(ds) if limit is None else min(limit, len(ds))
    difficult, labels = ds.meta.get("difficult"), ds.meta["box_labels"]
    pairs = [(i, int(c)) for i in range(n) for c in torch.unique(labels[i]).tolist()
             if difficult is None or not bool(difficult[i][labels[i] == c].all())]
    if not pairs:
        raise ValueError(f"{ds.name}: no (image, class) pairs with objects among the first {n} images")
    return pairs


def class_averaged(hits: torch.Tensor, classes: torch.Tensor) -> float:
    """TorchRay's pointing accuracy: the mean over the classes present of each class's hit rate. ``hits`` ``(P,)``
    bool, ``classes`` ``(P,)`` the class of each trial."""
    present = classes.unique()
    return torch.stack([hits[classes == c].float().mean() for c in present]).mean().item()


# ----------------------------------------------------------------------------------------------- detection sets
VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
COCO_NAMES: list[str] = []  # filled from the annotation file's categories when COCO is loaded


def _detection_set(name, split, paths, boxes, box_labels, classes, size, extra) -> ImageSet:
    """Boxes ``(K, 4)`` (inclusive ``x0, y0, x1, y1``), masks and ``orig_size`` stay in the original image frame
    (TorchRay's pointing protocol); the images are resized to ``size x size`` for the network."""
    targets = torch.zeros(len(paths), len(classes))
    for i, lab in enumerate(box_labels):
        targets[i, lab] = 1.0
    return ImageSet(name, split, LazyImages(paths, "RGB", size), None, list(classes),
                    {"boxes": boxes, "box_labels": box_labels, "targets": targets, **extra}, "full")


def _voc07_full(root: Path, split: str, download: bool, size):
    folder = next((f for f in (root / "VOCdevkit" / "VOC2007", root / "VOC2007") if f.is_dir()), None)
    if folder is None:
        raise FileNotFoundError(f"no VOCdevkit/VOC2007 or VOC2007 folder in {root}")
    ids = (folder / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    paths, boxes, labels, difficult, sizes = [], [], [], [], []
    for i in ids:
        ann = ET.parse(folder / "Annotations" / f"{i}.xml").getroot()
        sizes.append((int(ann.find("size/height").text), int(ann.find("size/width").text)))
        objs = ann.findall("object")
        bb = [[float(o.find(f"bndbox/{k}").text) - 1 for k in ("xmin", "ymin", "xmax", "ymax")] for o in objs]
        paths.append(folder / "JPEGImages" / f"{i}.jpg")
        boxes.append(torch.tensor(bb, dtype=torch.float32).view(-1, 4))
        labels.append(torch.tensor([VOC_CLASSES.index(o.find("name").text.strip()) for o in objs], dtype=torch.long))
        difficult.append(torch.tensor([o.findtext("difficult", "0").strip() == "1" for o in objs]))
    return _detection_set("voc07", split, paths, boxes, labels, VOC_CLASSES, size,
                          {"difficult": difficult, "files": ids, "orig_size": sizes})


def _coco_instances(name, split, ann_path: Path, image_folder: Path, size) -> ImageSet:
    """A COCO instances file (official JSON) as a detection set with its masks: ``meta["segmentation"][i]`` lists the
    segmentation of each of image ``i``'s annotations (crowd regions included), aligned with ``boxes``."""
    ann = json.loads(ann_path.read_text())
    cats = sorted(ann["categories"], key=lambda c: c["id"])
    index = {c["id"]: k for k, c in enumerate(cats)}
    COCO_NAMES[:] = [c["name"] for c in cats]
    per_image: dict[int, list] = {}
    for a in ann["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    images = sorted((r for r in ann["images"] if r["id"] in per_image), key=lambda r: r["id"])
    paths, boxes, labels, segs = [], [], [], []
    for r in images:
        objs = per_image[r["id"]]
        bb = [[x, y, x + bw - 1, y + bh - 1] for x, y, bw, bh in (o["bbox"] for o in objs)]
        paths.append(image_folder / r["file_name"])
        boxes.append(torch.tensor(bb, dtype=torch.float32).view(-1, 4))
        labels.append(torch.tensor([index[o["category_id"]] for o in objs], dtype=torch.long))
        segs.append([o["segmentation"] for o in objs])
    return _detection_set(name, split, paths, boxes, labels, list(COCO_NAMES), size,
                          {"image_id": [r["id"] for r in images], "segmentation": segs,
                           "orig_size": [(r["height"], r["width"]) for r in images]})


def _coco_instances_full(root: Path, split: str, download: bool, size):
    folder = root / "coco"
    return _coco_instances("coco_instances", split, folder / "annotations" / f"instances_{split}2014.json",
                           folder / f"{split}2014", size)


def coco_mini_instances(split: str, *, size: int, data_dir=None) -> ImageSet:
    """The 159 photos of the shipped ``coco_captions_mini`` subset that have COCO 2017 instance annotations (80
    train2017, 79 val2017; ``split`` ``"train"`` or ``"val"``), as a detection set with masks in the original
    frame (the shipped JPEGs are downscaled; the masks are not), images resized to ``size x size``."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be one of train, val, got {split!r}")
    folder = data.verify("coco_captions_mini", data_dir)
    ann = folder / f"instances_{split}2017.json"
    if not ann.is_file():
        raise FileNotFoundError(f"{ann} is missing: copy it from the COCO 2017 instances annotations "
                                f"(see data/README.md, coco_captions_mini)")
    ds = _coco_instances("coco_captions_mini", split, ann, folder / "images" / f"{split}2017", size)
    ds.images = torch.stack([data.read_image(p, "RGB", size) for p in ds.images.paths])
    ds.source = "subset"
    return ds
