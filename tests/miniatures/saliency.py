"""Miniatures of PASCAL VOC 2007, MS-COCO 2014 instances and ImageNet ILSVRC-2012, the full datasets of
``vklib.saliency`` (notebook 07), in the layouts of the official releases.

PASCAL VOC 2007 (``VOCtrainval_06-Nov-2007.tar`` and ``VOCtest_06-Nov-2007.tar`` unpacked together) under
``<root>/VOCdevkit/VOC2007/``:

- ``Annotations/<id>.xml``: one ``<annotation>`` per image, with ``folder``, ``filename``, ``source``, ``owner``,
  ``size`` (``width``, ``height``, ``depth``), ``segmented`` and one ``<object>`` per box: ``name`` (one of the 20
  classes), ``pose``, ``truncated``, ``difficult``, ``bndbox`` (``xmin ymin xmax ymax``, 1-based inclusive integer
  pixels); some ``person`` objects carry ``<part>`` elements (``head``, ``hand``, ``foot``) with their own ``name``
  and ``bndbox``, which are not objects;
- ``ImageSets/Main/{train,val,trainval,test}.txt``: one six-digit image id per line (trainval and test are
  disjoint, their ids interleave), and ``<class>_{train,val,trainval,test}.txt``: ``<id> <flag>`` per image of the
  split (``%2d``: 1 the class is present, -1 absent, 0 present only as "difficult" boxes);
- ``JPEGImages/<id>.jpg``: about 500 x 375 (either orientation) RGB JPEG.

MS-COCO 2014 under ``<root>/coco/``:

- ``annotations/instances_{train,val}2014.json``: ``info``, ``licenses``, ``images`` (``id``, ``file_name``,
  ``width``, ``height``, ``license``, ``coco_url``, ``flickr_url``, ``date_captured``), ``annotations`` (``id``,
  ``image_id``, ``category_id``, ``bbox`` ``[x, y, width, height]`` in float pixels, ``area``, ``iscrowd``,
  ``segmentation``: polygons ``[[x1, y1, x2, y2, ...]]``, or an uncompressed run-length mask ``{"counts", "size"}``
  for a crowd) and ``categories`` (``id``, ``name``, ``supercategory``: the 80 classes with their real,
  non-contiguous ids 1 to 90); a few images have no annotation (the reader leaves them out);
- ``{train,val}2014/COCO_{train,val}2014_<12-digit id>.jpg``: about 640 x 480 RGB JPEG (a few greyscale).

ImageNet ILSVRC-2012 under ``<root>/imagenet/``, torchvision's ImageFolder layout (the training tars unpacked, the
validation images sorted into class folders): ``{train,val}/<wnid>/<name>.JPEG``, training images named
``<wnid>_<n>.JPEG`` and validation images ``ILSVRC2012_val_<8-digit n>.JPEG``, about 500 x 375. As in the release,
one training file is a CMYK JPEG and one a greyscale JPEG.

Every image is a smooth colour gradient with its objects painted in as flat rectangles of a colour per class.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

#: What each miniature holds, for the reader tests: name -> {split: number of images}.
SIZES = {"voc07": {"trainval": 8, "test": 6}, "coco_instances": {"train": 8, "val": 5},
         "imagenet": {"train": 9, "val": 6}}

# ----------------------------------------------------------------------------------------------- VOC 2007
#: id -> (width, height, objects); an object is (class, (xmin, ymin, xmax, ymax), difficult[, parts]).
VOC_TRAINVAL = {
    "000005": (500, 375, [("chair", (263, 211, 324, 339), 0), ("chair", (165, 264, 253, 372), 0),
                          ("chair", (5, 244, 67, 374), 1)]),
    "000007": (500, 333, [("car", (141, 50, 500, 330), 0)]),
    "000009": (500, 375, [("horse", (69, 172, 270, 330), 0), ("person", (150, 141, 229, 284), 0),
                          ("person", (285, 201, 327, 331), 0)]),
    "000012": (500, 333, [("car", (156, 97, 351, 270), 0)]),
    "000016": (334, 500, [("bicycle", (92, 72, 305, 473), 0)]),
    "000017": (480, 364, [("person", (185, 62, 279, 199), 0, [("head", (216, 64, 254, 101))]),
                          ("horse", (90, 78, 403, 336), 0)]),
    "000019": (500, 375, [("cat", (231, 88, 483, 256), 0), ("cat", (11, 113, 266, 259), 0)]),
    "000020": (500, 375, [("car", (33, 148, 371, 374), 0)]),
}
VOC_TEST = {
    "000001": (353, 500, [("dog", (48, 240, 195, 371), 0),
                          ("person", (8, 12, 352, 498), 0, [("head", (130, 20, 200, 90)),
                                                            ("hand", (20, 200, 60, 240))])]),
    "000002": (335, 500, [("train", (139, 200, 207, 301), 0)]),
    "000003": (500, 375, [("sofa", (123, 155, 215, 195), 0), ("chair", (239, 156, 307, 205), 1)]),
    "000004": (500, 406, [("car", (13, 311, 84, 362), 0), ("car", (362, 330, 500, 389), 1),
                          ("car", (235, 328, 334, 375), 1)]),
    "000006": (500, 375, [("pottedplant", (187, 135, 282, 242), 0), ("diningtable", (154, 209, 369, 375), 0),
                          ("chair", (255, 207, 366, 375), 1), ("chair", (298, 195, 332, 247), 1)]),
    "000008": (500, 375, [("chair", (192, 16, 364, 248), 0)]),
}
VOC_TRAIN = ["000005", "000012", "000017", "000020"]   # train and val partition trainval
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
_POSES = ("Unspecified", "Left", "Right", "Frontal", "Rear")

# ----------------------------------------------------------------------------------------------- COCO 2014
#: The 80 COCO categories: (id, name, supercategory), as in the official annotation files.
COCO_CATEGORIES = [(i, n, s) for s, items in (
    ("person", [(1, "person")]),
    ("vehicle", [(2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
                 (8, "truck"), (9, "boat")]),
    ("outdoor", [(10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"),
                 (15, "bench")]),
    ("animal", [(16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"),
                (23, "bear"), (24, "zebra"), (25, "giraffe")]),
    ("accessory", [(27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase")]),
    ("sports", [(34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"),
                (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"),
                (43, "tennis racket")]),
    ("kitchen", [(44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"),
                 (51, "bowl")]),
    ("food", [(52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"),
              (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake")]),
    ("furniture", [(62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"),
                   (70, "toilet")]),
    ("electronic", [(72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
                    (77, "cell phone")]),
    ("appliance", [(78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator")]),
    ("indoor", [(84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"),
                (90, "toothbrush")]),
) for i, n in items]
#: split -> image id -> (width, height, objects); an object is (category id, [x, y, w, h], iscrowd). Images with
#: no object have no annotation.
COCO_IMAGES = {
    "train": {
        9: (640, 480, [(51, [1.08, 187.69, 611.59, 285.84], 0), (55, [311.73, 4.31, 319.28, 228.68], 0),
                       (55, [249.6, 229.27, 316.24, 245.08], 0)]),
        25: (640, 426, [(25, [385.53, 60.03, 214.97, 297.16], 0), (25, [53.01, 356.49, 132.03, 55.19], 0)]),
        30: (640, 428, [(64, [204.86, 31.02, 254.88, 324.12], 0), (86, [237.56, 155.81, 166.4, 195.25], 0)]),
        34: (640, 425, [(24, [0.96, 20.06, 554.34, 395.9], 0)]),
        36: (481, 640, [(1, [167.58, 162.89, 310.61, 465.19], 0), (28, [0.0, 50.0, 457.98, 417.6], 0)]),
        49: (381, 500, [(1, [138.64, 103.58, 88.21, 260.25], 0), (19, [251.3, 203.4, 76.6, 164.2], 0),
                        (1, [10.0, 300.0, 200.0, 150.0], 1)]),
        61: (640, 480, [(1, [273.55, 21.81, 94.57, 269.54], 0), (22, [407.48, 152.1, 220.58, 257.35], 0)]),
        64: (480, 640, [(85, [109.36, 178.19, 77.14, 73.25], 0), (90, [300.0, 400.0, 60.5, 120.25], 0)]),
        71: (640, 478, []),
    },
    "val": {
        42: (640, 478, [(18, [214.15, 41.29, 347.11, 445.71], 0)]),
        73: (427, 640, [(4, [5.45, 155.36, 421.1, 426.52], 0), (4, [0.0, 40.3, 180.6, 150.2], 1)]),
        74: (640, 426, [(18, [61.87, 276.25, 296.42, 103.18], 0), (1, [2.75, 3.66, 159.15, 312.04], 0),
                        (2, [347.0, 150.6, 120.4, 110.7], 0)]),
        133: (640, 405, [(65, [11.71, 0.0, 617.29, 398.01], 0), (88, [402.3, 126.9, 112.7, 90.3], 0)]),
        136: (500, 374, [(24, [67.87, 41.98, 305.72, 322.76], 0), (25, [14.0, 2.4, 140.7, 340.2], 0)]),
        139: (640, 426, []),
    },
}
COCO_GREY = (136,)  # COCO has a few hundred greyscale JPEGs

# ----------------------------------------------------------------------------------------------- ImageNet
IMAGENET_WNIDS = ("n01440764", "n01443537", "n01484850")   # tench, goldfish, great white shark
IMAGENET_SIZES = ((500, 375), (500, 333), (375, 500))
#: split -> wnid -> file names; the CMYK and the greyscale training file are ImageNet's own quirks.
IMAGENET_FILES = {
    "train": {w: [f"{w}_{n}.JPEG" for n in ns]
              for w, ns in zip(IMAGENET_WNIDS, ((10026, 10027, 10029), (1004, 1026, 1052), (10034, 10035, 10048)))},
    "val": {w: [f"ILSVRC2012_val_{n:08d}.JPEG" for n in ns]
            for w, ns in zip(IMAGENET_WNIDS, ((200, 310), (1087, 2411), (3001, 4020)))},
}
IMAGENET_CMYK, IMAGENET_GREY = "n01443537_1026.JPEG", "n01484850_10035.JPEG"


# ----------------------------------------------------------------------------------------------- writing
@lru_cache(maxsize=1)
def _ramp():
    from PIL import Image
    return Image.linear_gradient("L").rotate(45, resample=Image.BILINEAR, expand=True, fillcolor=128)


def _painting(rng: np.random.Generator, width: int, height: int, boxes):
    """A ``width x height`` RGB PIL image: a diagonal gradient between two random colours with each
    ``(x0, y0, x1, y1, colour)`` box filled in (drawn by PIL, fast)."""
    from PIL import Image, ImageDraw, ImageOps
    a, b = (tuple(int(v) for v in rng.integers(30, 220, size=3)) for _ in range(2))
    img = ImageOps.colorize(_ramp().resize((width, height), Image.BILINEAR), a, b)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1, colour in boxes:
        draw.rectangle((int(x0), int(y0), int(x1), int(y1)), fill=colour)
    return img


def _save(path: Path, image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=90)


def _colour(k: int) -> tuple[int, int, int]:
    return (53 * k) % 256, (97 * k + 80) % 256, (151 * k + 160) % 256


def _voc_xml(image_id: str, width: int, height: int, objects) -> str:
    def obj(k, o):
        name, (x0, y0, x1, y1), difficult = o[:3]
        parts = "".join(
            f"\t\t<part>\n\t\t\t<name>{p}</name>\n\t\t\t<bndbox>\n\t\t\t\t<xmin>{a}</xmin>\n\t\t\t\t<ymin>{b}</ymin>\n"
            f"\t\t\t\t<xmax>{c}</xmax>\n\t\t\t\t<ymax>{d}</ymax>\n\t\t\t</bndbox>\n\t\t</part>\n"
            for p, (a, b, c, d) in (o[3] if len(o) > 3 else ()))
        truncated = int(x0 <= 1 or y0 <= 1 or x1 >= width or y1 >= height)
        return (f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>{_POSES[k % len(_POSES)]}</pose>\n"
                f"\t\t<truncated>{truncated}</truncated>\n\t\t<difficult>{difficult}</difficult>\n"
                f"\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n\t\t\t<xmax>{x1}</xmax>\n"
                f"\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n{parts}\t</object>\n")
    return (f"<annotation>\n\t<folder>VOC2007</folder>\n\t<filename>{image_id}.jpg</filename>\n"
            f"\t<source>\n\t\t<database>The VOC2007 Database</database>\n\t\t<annotation>PASCAL VOC2007</annotation>\n"
            f"\t\t<image>flickr</image>\n\t\t<flickrid>{300000000 + int(image_id)}</flickrid>\n\t</source>\n"
            f"\t<owner>\n\t\t<flickrid>miniature</flickrid>\n\t\t<name>?</name>\n\t</owner>\n"
            f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
            f"\t<segmented>0</segmented>\n" + "".join(obj(k, o) for k, o in enumerate(objects)) + "</annotation>\n")


def _write_voc(root: Path, rng: np.random.Generator) -> None:
    voc = root / "VOCdevkit" / "VOC2007"
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    (voc / "Annotations").mkdir(parents=True, exist_ok=True)
    everything = {**VOC_TRAINVAL, **VOC_TEST}
    for image_id, (w, h, objects) in everything.items():
        (voc / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, w, h, objects))
        boxes = [(*box, _colour(VOC_CLASSES.index(name))) for name, box, *_ in objects]
        _save(voc / "JPEGImages" / f"{image_id}.jpg", _painting(rng, w, h, boxes))
    splits = {"train": VOC_TRAIN, "val": [i for i in VOC_TRAINVAL if i not in VOC_TRAIN],
              "trainval": list(VOC_TRAINVAL), "test": list(VOC_TEST)}
    for split, ids in splits.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for cls in VOC_CLASSES:
            lines = []
            for i in ids:
                flags = [d for name, _, d, *_ in everything[i][2] if name == cls]
                flag = -1 if not flags else 1 if 0 in flags else 0
                lines.append(f"{i} {flag:2d}\n")
            (main / f"{cls}_{split}.txt").write_text("".join(lines))


def _rle(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed run-length encoding: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [len(flat)]])).tolist()
    return ([0] + runs) if flat[0] else runs


def _write_coco(root: Path, rng: np.random.Generator) -> None:
    coco = root / "coco"
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"supercategory": s, "id": i, "name": n} for i, n, s in COCO_CATEGORIES]
    licenses = [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
                 "name": "Attribution-NonCommercial-ShareAlike License"},
                {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"}]
    ann_id = 1
    for split, images in COCO_IMAGES.items():
        records, anns = [], []
        for image_id, (w, h, objects) in images.items():
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            records.append({"license": 4 if image_id % 2 else 1, "file_name": name,
                            "coco_url": f"http://images.cocodataset.org/{split}2014/{name}", "height": h,
                            "width": w, "date_captured": "2013-11-14 16:28:13",
                            "flickr_url": f"http://farm4.staticflickr.com/miniature/{image_id}.jpg", "id": image_id})
            painted = []
            for cat, (x, y, bw, bh), crowd in objects:
                x1, y1 = x + bw, y + bh
                painted.append((x, y, x1 - 1, y1 - 1, _colour(cat)))
                if crowd:
                    mask = np.zeros((h, w), dtype=bool)
                    mask[int(round(y)):int(round(y1)), int(round(x)):int(round(x1))] = True
                    seg, area = {"counts": _rle(mask), "size": [h, w]}, float(mask.sum())
                else:  # an octagon inscribed in the box
                    cx, cy, qx, qy = x + bw / 2, y + bh / 2, bw / 4, bh / 4
                    poly = [(x + qx, y), (x1 - qx, y), (x1, cy - qy), (x1, cy + qy), (x1 - qx, y1), (x + qx, y1),
                            (x, cy + qy), (x, cy - qy)]
                    seg = [[round(v, 2) for p in poly for v in p]]
                    area = bw * bh - 2 * qx * qy   # the box less its four corner triangles
                anns.append({"segmentation": seg, "area": round(area, 4), "iscrowd": crowd, "image_id": image_id,
                             "bbox": [x, y, bw, bh], "category_id": cat, "id": ann_id})
                ann_id += 1
            image = _painting(rng, w, h, painted)
            _save(coco / f"{split}2014" / name, image.convert("L") if image_id in COCO_GREY else image)
        (coco / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(
            {"info": {"description": "This is stable 1.0 version of the 2014 MS COCO dataset.", "url":
                      "http://mscoco.org", "version": "1.0", "year": 2014, "contributor": "Microsoft COCO group",
                      "date_created": "2015-01-27 09:11:52.357475"},
             "images": records, "licenses": licenses, "annotations": anns, "categories": categories}))


def _write_imagenet(root: Path, rng: np.random.Generator) -> None:
    for split, per_wnid in IMAGENET_FILES.items():
        for k, (wnid, files) in enumerate(per_wnid.items()):
            for j, name in enumerate(files):
                w, h = IMAGENET_SIZES[(k + j) % len(IMAGENET_SIZES)]
                x0, y0 = w // 4 + 10 * j, h // 4
                img = _painting(rng, w, h, [(x0, y0, x0 + w // 2, y0 + h // 2, _colour(k))])
                mode = "CMYK" if name == IMAGENET_CMYK else "L" if name == IMAGENET_GREY else "RGB"
                _save(root / "imagenet" / split / wnid / name, img.convert(mode))


def write(root: Path) -> None:
    rng = np.random.default_rng(7)
    _write_voc(Path(root), rng)
    _write_coco(Path(root), rng)
    _write_imagenet(Path(root), rng)
