"""Miniatures of CelebA (with MAFL's lists) and AFLW-MTFL, the full datasets of ``vklib.landmarks`` (notebook 04), in
the layouts of the releases that DVE's official loaders read (github.com/jamt9000/DVE, data_loader/data_loaders.py).

CelebA under ``<root>/celeba/``, as the official release and DVE's ``celeba.tar.gz`` lay it out:

- ``Img/img_align_celeba/000001.jpg ...``: the aligned faces, 178 x 218 JPEG;
- ``Anno/list_landmarks_align_celeba.txt``: a count line, a header line, then ``<file> lefteye_x lefteye_y
  righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y`` (integer pixels);
- ``Eval/list_eval_partition.txt``: ``<file> <partition>``, 0 train, 1 val, 2 test;
- ``MAFL/training.txt``, ``MAFL/testing.txt``: one CelebA file name per line (TCDCN's MAFL release), drawn from
  every partition.

AFLW-MTFL under ``<root>/aflw_mtfl/``, as DVE's ``aflw-mtfl.tar.gz`` lays it out:

- ``aflw_cropped/facedata_cropped.csv``: comma separated with a header line; DVE reads the columns ``image_file``
  (the AFLW image), ``set`` (1: the 10,122 training faces), ``crop_file`` (relative to ``aflw_cropped/``) and
  positions 5 to 14, ``x1, y1, ..., x5, y5`` (1-based pixels of the crop). The names of the first column and of
  the coordinate columns, and the ``set`` code of faces outside the training set (MatConvNet's 3, "test"), are
  not given by DVE's code and are this miniature's choice;
- ``aflw_cropped/cropped/<face id>.jpg``: 150 x 150 JPEG crops;
- ``MTFL/testing.txt``: MTFL's AFLW test faces, `` AFLW/<n>-image<id>.jpg x1..x5 y1..y5 gender smile glasses
  pose`` (1-based pixels, a leading space as in MTFL's files);
- ``MTFL/AFLW/<n>-image<id>.jpg``: 150 x 150 JPEG.

Every face is dim, smooth noise with a white 5 x 5 square centred on its left-eye landmark, so that a test can check
that the landmarks still sit on the face after the readers' crops and resizes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import pixels, save_image

#: What each miniature holds, for the reader tests: name -> {split: number of images}.
SIZES = {"celeba": {"train": 5, "val": 2, "test": 5, "all": 12}, "mafl": {"train": 4, "test": 8},
         "aflw_mtfl": {"train": 5, "test": 3}}

# ----------------------------------------------------------------------------------------------- CelebA + MAFL
CELEBA_SIZE = (178, 218)  # width, height of an aligned CelebA image
#: file -> CelebA partition (0 train, 1 val, 2 test)
CELEBA_PARTITION = {f"{k:06d}.jpg": 0 if k <= 14 else 1 if k <= 18 else 2 for k in range(1, 25)}
#: MAFL's lists, in their file order (not sorted, as in the release); from several CelebA partitions
MAFL = {"train": ["000009.jpg", "000002.jpg", "000005.jpg", "000016.jpg"],
        "test": ["000010.jpg", "000003.jpg", "000017.jpg", "000006.jpg", "000012.jpg", "000023.jpg", "000001.jpg",
                 "000008.jpg"]}
#: what the readers should give: CelebA's partitions without any MAFL face (DVE leaves both lists out)
CELEBA_SPLITS = {"train": ["000004.jpg", "000007.jpg", "000011.jpg", "000013.jpg", "000014.jpg"],
                 "val": ["000015.jpg", "000018.jpg"],
                 "test": ["000019.jpg", "000020.jpg", "000021.jpg", "000022.jpg", "000024.jpg"]}


def celeba_landmarks(file: str) -> list[int]:
    """The ten integers ``lefteye_x lefteye_y ... rightmouth_y`` of ``file`` in the landmark list."""
    k = int(file[:6])
    dx, dy = k % 3 - 1, k % 4 - 1
    base = [69, 109, 106, 113, 77, 142, 73, 152, 108, 154]
    return [v + (dx if i % 2 == 0 else dy) for i, v in enumerate(base)]


# ----------------------------------------------------------------------------------------------- AFLW-MTFL
AFLW_SIDE = 150  # the crops are 150 x 150
#: facedata_cropped.csv rows (face id, AFLW image, set): set 1 is training, the others are MTFL's test faces
AFLW_ROWS = [(39495, "image00042.jpg", 1), (50749, "image20056.jpg", 3), (41829, "image00550.jpg", 1),
             (43027, "image01210.jpg", 1), (51109, "image04733.jpg", 3), (46450, "image02340.jpg", 1),
             (49285, "image03014.jpg", 1)]
#: MTFL/testing.txt image paths, relative to MTFL/
MTFL_TEST = ["AFLW/0001-image20056.jpg", "AFLW/0002-image04733.jpg", "AFLW/0003-image07098.jpg"]


def aflw_landmarks(key: int) -> list[float]:
    """``x1, y1, ..., x5, y5`` (1-based pixels of a 150 x 150 crop) of face ``key``; the left eye on whole pixels."""
    dx, dy = key % 5 - 2, key % 3 - 1
    base = [(57.0, 44.0), (101.25, 43.5), (80.5, 70.75), (59.25, 96.5), (93.75, 104.25)]
    return [c + (dx if j == 0 else dy) for x, y in base for j, c in enumerate((x, y))]


# ----------------------------------------------------------------------------------------------- writing
def _face(rng: np.random.Generator, width: int, height: int, eye: tuple[int, int]) -> np.ndarray:
    """Dim, blocky noise (compresses well) with a white 5 x 5 square centred on pixel ``eye`` (0-based x, y)."""
    coarse = pixels(rng, -(-height // 8), -(-width // 8), 3) // 3
    img = np.kron(coarse, np.ones((8, 8, 1), np.uint8))[:height, :width].copy()
    x, y = eye
    img[y - 2:y + 3, x - 2:x + 3] = 255
    return img


def write(root: Path) -> None:
    root = Path(root)
    rng = np.random.default_rng(4)
    # CelebA: images, landmark list, partition list; MAFL's two file lists
    celeba = root / "celeba"
    files = sorted(CELEBA_PARTITION)
    for f in files:
        pts = celeba_landmarks(f)
        save_image(celeba / "Img" / "img_align_celeba" / f, _face(rng, *CELEBA_SIZE, (pts[0], pts[1])),
                   quality=95)
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    rows = [f + "".join(f"{v:5d}" for v in celeba_landmarks(f)) for f in files]
    (celeba / "Anno").mkdir(parents=True, exist_ok=True)
    (celeba / "Anno" / "list_landmarks_align_celeba.txt").write_text(
        f"{len(files)}\n{header}\n" + "\n".join(rows) + "\n")
    (celeba / "Eval").mkdir(parents=True, exist_ok=True)
    (celeba / "Eval" / "list_eval_partition.txt").write_text(
        "".join(f"{f} {CELEBA_PARTITION[f]}\n" for f in files))
    (celeba / "MAFL").mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "training.txt"), ("test", "testing.txt")):
        (celeba / "MAFL" / name).write_text("".join(f"{f}\n" for f in MAFL[split]))
    # AFLW-MTFL: the training crops with their CSV, MTFL's test faces with testing.txt
    aflw = root / "aflw_mtfl"
    lines = ["face_id,image_file,set,crop_file,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5"]
    for face_id, image, subset in AFLW_ROWS:
        pts = aflw_landmarks(face_id)
        crop = f"cropped/{face_id}.jpg"
        save_image(aflw / "aflw_cropped" / crop,
                   _face(rng, AFLW_SIDE, AFLW_SIDE, (int(pts[0]) - 1, int(pts[1]) - 1)), quality=95)
        lines.append(",".join([str(face_id), image, str(subset), crop] + [f"{v:g}" for v in pts]))
    (aflw / "aflw_cropped" / "facedata_cropped.csv").write_text("\n".join(lines) + "\n")
    test = []
    for n, rel in enumerate(MTFL_TEST, 1):
        pts = aflw_landmarks(n)
        save_image(aflw / "MTFL" / rel, _face(rng, AFLW_SIDE, AFLW_SIDE, (int(pts[0]) - 1, int(pts[1]) - 1)),
                   quality=95)
        xs, ys = pts[0::2], pts[1::2]
        test.append(" " + " ".join([rel] + [f"{v:.6f}" for v in xs + ys] + ["1", "2", "2", "3"]))
    (aflw / "MTFL" / "testing.txt").write_text("\n".join(test) + "\n")
