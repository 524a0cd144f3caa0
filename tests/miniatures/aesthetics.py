"""Miniature of FLICKR-AES (Ren, Shen, Lin, Mech, Foran: "Personalized Image Aesthetics", ICCV 2017), the full
dataset of ``vklib.aesthetics`` (notebook 10), registered as ``flickr_aes``, in the layout of the official release.

The release (the Google Drive folder linked from github.com/alanspike/personalizedImageAesthetics) holds
``FLICKR-AES-001.zip``, whose ``40K/`` folder has the 40,988 Flickr photos, and two annotation files:

- ``FLICKR-AES_image_labeled_by_each_worker.csv``: comma separated, a header line ``worker, imagePair, score``
  (a space after each comma in the header, none in the rows), then one row per rating: the worker's Amazon
  Mechanical Turk id (e.g. ``AGXT2OHMTWBRS``), the photo's file name in ``40K/`` (Flickr's
  ``farm<f>_<server>_<id>_<secret>.jpg``, some with a ``_b`` suffix) and the integer score 1..5. 210 workers, five
  ratings per photo;
- ``FLICKR-AES_image_score.txt``: each photo's weighted mean score. The reader does not read it (it averages the
  workers' ratings itself), so the miniature leaves it out.

The photos are Flickr's 500-pixel versions (500 on the long side: 500 x 375, 375 x 500, 500 x 333, ...), RGB JPEG.
The 37 test workers of Ren et al. (each rated 105 to 171 photos, none of which any training worker rated) are not
listed in the release; the reader takes their ids from ``test_workers.txt``, one per line, beside the CSV (see the
hint of ``vklib.data.info("flickr_aes")``).

Here, under ``<root>/flickr_aes/``: 3 training workers who rate 12 photos (each photo twice, 8 ratings each) and 2
test workers who rate 105 of 108 other photos each: enough for the paper's k = 10 and k = 100 draws with at least
two held-out ratings per worker. The first training worker also rates two of the test photos, which the reader
must keep out of the training split (the generic model never sees a test photo). Ratings are fixed by a seeded
generator.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: What the miniature holds, for the reader tests: name -> {split: number of images}.
SIZES = {"flickr_aes": {"train": 12, "test": 108}}

TRAIN_WORKERS = ["A1QX7ZK3J2W9TB", "A2M4V8NDL0P5RE", "A3HC6YTQ1BFS0U"]
TEST_WORKERS = ["A2R9EW5KXJ7N3D", "AZ4LP0GQ8M6VHC"]
#: test photos each test worker rates: worker 0 photos 0..104, worker 1 photos 3..107
TEST_RATED = {TEST_WORKERS[0]: range(0, 105), TEST_WORKERS[1]: range(3, 108)}
#: test photos that the first training worker rates too
SHARED = (0, 1)
#: (height, width) of the photos, in turn
SHAPES = [(375, 500), (500, 375), (333, 500)]


def photo_name(i: int) -> str:
    """Flickr's ``farm<f>_<server>_<photo id>_<secret>.jpg`` name of photo ``i`` (every seventh a ``_b`` version)."""
    return f"farm{1 + i % 9}_{1000 + 37 * i}_{9000000000 + 7919 * i}_{(i * 2654435761) % 16 ** 10:010x}" + \
        ("_b" if i % 7 == 3 else "") + ".jpg"


def _photos(rng: np.random.Generator, n: int) -> list:
    """``n`` smooth colour fields (PIL images) of the :data:`SHAPES` in turn, compressing to a few kilobytes: three
    bilinear upsamplings of a 5 x 5 grid, each photo one of them shifted sideways with its colour bands permuted."""
    from PIL import Image, ImageChops
    fields = [Image.fromarray(rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
              for h, w in SHAPES]
    out = []
    for i in range(n):
        bands = ImageChops.offset(fields[i % len(SHAPES)], 13 * i, 0).split()
        out.append(Image.merge("RGB", [bands[c] for c in rng.permutation(3)]))
    return out


def write(root: Path) -> None:
    folder = Path(root) / "flickr_aes"
    (folder / "40K").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(10)
    n_train, n_test = SIZES["flickr_aes"]["train"], SIZES["flickr_aes"]["test"]
    names = [photo_name(i) for i in range(n_train + n_test)]
    for name, photo in zip(names, _photos(rng, len(names))):
        photo.save(folder / "40K" / name, quality=90)
    rows = []
    for j, worker in enumerate(TRAIN_WORKERS):
        rows += [(worker, names[i]) for i in range(n_train) if (i + j) % 3]
    rows += [(TRAIN_WORKERS[0], names[n_train + i]) for i in SHARED]
    for worker, rated in TEST_RATED.items():
        rows += [(worker, names[n_train + i]) for i in rated]
    scores = rng.integers(1, 6, size=len(rows))
    lines = ["worker, imagePair, score"] + [f"{w},{name},{s}" for (w, name), s in zip(rows, scores)]
    (folder / "FLICKR-AES_image_labeled_by_each_worker.csv").write_text("\n".join(lines) + "\n")
    (folder / "test_workers.txt").write_text("".join(f"{w}\n" for w in TEST_WORKERS))
