"""Recording a notebook run: metrics, the paper's reference numbers, artifacts and the environment.

Every notebook does::

    run = results.start("01_dataset_condensation", profile=profile, seed=seed, device=str(dev),
                        results_dir=results_dir, params=cfg, paper={"acc_dc": 0.917})
    run.log(acc_dc=0.83, acc_random=0.62)
    torch.save(synset, run.artifact("synset.pt"))
    run.save()   # -> {results_dir}/01_dataset_condensation.json

The JSON holds ``notebook``, ``profile``, ``seed``, ``device``, ``runtime_s``, ``params``, ``metrics``
(name -> number), ``paper`` (the paper's numbers for the same metric names where they exist), ``artifacts``
(file names in ``results_dir``) and ``versions``.
"""
from __future__ import annotations

import json
import math
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = ["Run", "format_value", "load", "start"]

_VERSIONS = ("torch", "torchvision", "numpy", "scipy", "scikit-image", "scikit-learn", "kornia", "captum",
             "pycocoevalcap", "vklib")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _number(name: str, value: Any) -> float | int:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"metric {name!r} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")
    value = int(value) if isinstance(value, int) else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"metric {name!r} is {value}; a recorded metric must be finite")
    return value


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if torch.is_tensor(obj):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


class Run:
    """One notebook run; see the module docstring. Create it with :func:`start`."""

    def __init__(self, notebook: str, *, profile: str, seed: int, device: str, results_dir: str | Path,
                 params: dict | None = None, paper: dict | None = None):
        if not notebook or "/" in notebook or notebook.endswith(".ipynb"):
            raise ValueError(f"notebook must be the notebook's stem, e.g. '01_dataset_condensation', got {notebook!r}")
        self.notebook, self.profile, self.seed, self.device = notebook, profile, seed, str(device)
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.params = dict(params or {})
        self.paper = {k: _number(k, v) for k, v in (paper or {}).items()}
        self.metrics: dict[str, float | int] = {}
        self.artifacts: list[str] = []
        self._t0 = time.perf_counter()

    def log(self, **metrics) -> None:
        """Record (or overwrite) metrics by name: ``run.log(acc_dc=0.83)``."""
        for k, v in metrics.items():
            self.metrics[k] = _number(k, v)

    def artifact(self, suffix: str) -> Path:
        """Path ``{results_dir}/{notebook}.{suffix}`` for a reusable output; it is listed in the JSON."""
        if not suffix or "/" in suffix:
            raise ValueError(f"suffix must be a plain file suffix like 'synset.pt', got {suffix!r}")
        name = f"{self.notebook}.{suffix}"
        if name not in self.artifacts:
            self.artifacts.append(name)
        return self.results_dir / name

    @property
    def path(self) -> Path:
        return self.results_dir / f"{self.notebook}.json"

    def to_dict(self) -> dict:
        return {"notebook": self.notebook, "profile": self.profile, "seed": self.seed, "device": self.device,
                "runtime_s": round(time.perf_counter() - self._t0, 2), "params": _jsonable(self.params),
                "metrics": dict(self.metrics), "paper": dict(self.paper), "artifacts": list(self.artifacts),
                "versions": _versions()}

    def save(self) -> Path:
        """Write the JSON (``runtime_s`` counts from :func:`start`) and return its path."""
        if not self.metrics:
            raise ValueError(f"{self.notebook}: no metrics recorded; call run.log(...) before run.save()")
        self.path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return self.path

    def table(self) -> str:
        """A markdown table of this run's metrics beside the paper's numbers."""
        rows = ["| metric | this run | paper |", "|---|---:|---:|"]
        for k, v in self.metrics.items():
            p = self.paper.get(k)
            rows.append(f"| {k} | {format_value(v)} | {format_value(p)} |")
        return "\n".join(rows)


def format_value(v: float | int | None) -> str:
    """A metric for a table: integers in full with thousands separators, other numbers to 4 significant digits,
    ``None`` (no paper number) as an empty cell."""
    if v is None:
        return ""
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return f"{v:.4g}"


def start(notebook: str, *, profile: str, seed: int, device: str, results_dir: str | Path,
          params: dict | None = None, paper: dict | None = None) -> Run:
    """Begin recording a run (see :class:`Run`)."""
    return Run(notebook, profile=profile, seed=seed, device=device, results_dir=results_dir, params=params,
               paper=paper)


def load(path: str | Path) -> dict:
    """Read a results JSON written by :meth:`Run.save`."""
    return json.loads(Path(path).read_text())
