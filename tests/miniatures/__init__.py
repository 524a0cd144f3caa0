"""Miniature datasets in the official on-disk layouts of the full datasets (test fixture code, not shipped data).

Each module here has ``write(root)``, which writes a few images per class below ``root`` in exactly the format of
the official release (file names, list files, pickles, .mat, JSON), so that every full-dataset reader of ``vklib``
can be run end to end (``vklib.data.load(name, split, full=True, data_dir=root)``) without the real data, and
``SIZES`` (dataset name -> {split: number of images}), what the reader must return. :func:`write_all` writes every
miniature into one root, the ``data_dir`` of the smoke runs; :func:`sizes` merges the modules' ``SIZES``.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import numpy as np


def _modules():
    return [importlib.import_module(f"{__name__}.{m.name}")
            for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)]


def write_all(root: Path) -> Path:
    """Write every module's miniatures below ``root``; returns ``root``."""
    root = Path(root)
    for module in _modules():
        module.write(root)
    return root


def write_some(root: Path, *modules: str) -> Path:
    """Write the miniatures of the named modules (e.g. ``"landmarks"``) below ``root``; returns ``root``."""
    for name in modules:
        importlib.import_module(f"{__name__}.{name}").write(Path(root))
    return Path(root)


def sizes() -> dict[str, dict[str, int]]:
    """Every module's ``SIZES`` in one dict; a dataset written by two modules is an error."""
    out = {}
    for module in _modules():
        twice = sorted(set(out) & set(module.SIZES))
        if twice:
            raise ValueError(f"{module.__name__} writes {twice} again")
        out.update(module.SIZES)
    return out


def pixels(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random uint8 pixels of ``shape``."""
    x = rng.integers(0, 256, size=shape).astype(np.float32)
    return x.astype(np.uint8)


def save_image(path: Path, array: np.ndarray, **kw) -> Path:
    """Save ``array`` (``(H, W)`` grey or ``(H, W, 3)`` RGB uint8) with PIL, creating the folders."""
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path
