"""Miniatures of CASIA-WebFace, Market-1501 and DukeMTMC-reID, the full datasets of ``vklib.continual`` (notebook 08),
in the layouts of their official releases.

CASIA-WebFace (Yi et al. 2014, the aligned release) under ``<root>/CASIA-WebFace/``:

- ``<identity>/<n>.jpg``: one folder per person named by a 7-digit id (``0000045``, ``0000099``, ...), the images
  numbered ``001.jpg``, ``002.jpg``, ...; 250 x 250 RGB JPEG faces. The real identities hold from a couple to
  hundreds of images; here 20 identities hold 4 to 7 images and 4 hold only 1 to 3 (what the protocol's
  ``min_images_per_id`` filter leaves out).

Market-1501 (Zheng et al. 2015, ``Market-1501-v15.09.15.zip``) under ``<root>/Market-1501-v15.09.15/``:

- ``bounding_box_train/``, ``query/``, ``bounding_box_test/``: 128 x 64 (height x width) JPEG person boxes named
  ``<pid>_c<camera>s<sequence>_<frame>_<box>.jpg``, e.g. ``0002_c1s1_000451_03.jpg`` (pid 4 digits, frame 6
  digits, box 2 digits); the gallery (``bounding_box_test``) also holds the distractors, pid ``0000``, and the junk
  boxes, pid ``-1`` (``-1_c1s1_000401_03.jpg``), which the protocol ignores. The release also ships
  ``gt_bag/``, ``gt_query/`` (.mat lists of good and junk gallery images per query) and ``Thumbs.db`` files; the
  reader needs none of them (one ``Thumbs.db`` is written, as the release has them, to show it is skipped).

DukeMTMC-reID (Zheng et al. 2017, ``DukeMTMC-reID.zip``) under ``<root>/DukeMTMC-reID/``:

- the same three folders, the boxes named ``<pid>_c<camera>_f<frame>.jpg``, e.g. ``0005_c2_f0046985.jpg`` (pid 4
  digits, frame 7 digits), JPEG of varying size (cropped from the videos); the gallery also holds distractor
  identities seen by one camera only (ordinary pids, never in the query).

In both re-id sets each query identity has gallery images from another camera and one from its own camera (which
the camera rule of the protocol ignores).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import pixels, save_image

#: CASIA identities: folder name -> number of images
CASIA = {f"{i:07d}": n for i, n in zip((45, 99, 100, 102, 103, 105, 107, 108, 114, 117, 119, 121, 133, 137, 141,
                                         143, 144, 145, 147, 148, 156, 157, 158, 159),
                                        (4, 5, 6, 7) * 5 + (1, 2, 3, 1))}
#: Market-1501 file names per folder (sorted as the reader lists them)
MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0002_c5s1_000626_02.jpg",
                           "0007_c2s3_070952_01.jpg", "0007_c3s3_077419_03.jpg", "0010_c1s1_002301_02.jpg",
                           "0010_c6s1_002976_02.jpg", "0011_c4s6_016533_01.jpg", "0011_c5s1_006123_01.jpg"],
    "query": ["0001_c1s1_001051_00.jpg", "0001_c2s1_000301_00.jpg", "0003_c1s6_015971_00.jpg",
              "0004_c3s1_001151_00.jpg"],
    "bounding_box_test": ["-1_c1s1_000401_03.jpg", "-1_c3s1_000551_02.jpg", "0000_c1s1_000151_01.jpg",
                          "0000_c4s1_021401_04.jpg", "0001_c1s1_001101_04.jpg", "0001_c3s1_000551_04.jpg",
                          "0001_c4s6_000810_01.jpg", "0003_c1s6_016021_02.jpg", "0003_c2s3_053853_03.jpg",
                          "0004_c3s1_001201_05.jpg", "0004_c5s3_065112_02.jpg"],
}
#: DukeMTMC-reID file names per folder, and the (height, width) of each folder's boxes in turn
DUKE = {
    "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg", "0003_c1_f0044402.jpg",
                           "0003_c4_f0060731.jpg", "0004_c1_f0045337.jpg", "0004_c6_f0033791.jpg"],
    "query": ["0005_c2_f0046985.jpg", "0005_c5_f0051781.jpg", "0008_c1_f0051622.jpg"],
    "bounding_box_test": ["0005_c2_f0047105.jpg", "0005_c6_f0027406.jpg", "0008_c1_f0051742.jpg",
                          "0008_c3_f0012683.jpg", "0012_c8_f0008651.jpg", "0012_c8_f0008771.jpg"],
}
DUKE_SIZES = [(246, 98), (310, 121), (187, 77)]

#: What each miniature holds, for the reader tests: name -> {split: number of images} (re-id junk, pid -1, left out).
SIZES = {"casia_webface": {"all": sum(CASIA.values())},
         "market1501": {"train": 9, "query": 4, "gallery": 9},
         "dukemtmc_reid": {"train": 6, "query": 3, "gallery": 6}}


def write(root: Path) -> None:
    rng = np.random.default_rng(8)
    for person, n in CASIA.items():
        for k in range(1, n + 1):
            save_image(root / "CASIA-WebFace" / person / f"{k:03d}.jpg", pixels(rng, 250, 250, 3))
    market = root / "Market-1501-v15.09.15"
    for folder, names in MARKET.items():
        for name in names:
            save_image(market / folder / name, pixels(rng, 128, 64, 3))
    (market / "bounding_box_train" / "Thumbs.db").write_bytes(b"\0" * 16)
    for folder, names in DUKE.items():
        for i, name in enumerate(names):
            save_image(root / "DukeMTMC-reID" / folder / name, pixels(rng, *DUKE_SIZES[i % 3], 3))
