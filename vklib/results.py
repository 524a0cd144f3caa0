"""Recording a notebook run: metrics, the paper's reference numbers, artifacts and the environment.

Every notebook does::

    run = results.start("01_dataset_condensation", profile=profile, seed=seed, device=str(dev),
                        results_dir=results_dir, params=cfg, setting="mnist_ipc1")
    run.log(acc_dc=0.83, acc_random=0.62)
    run.log_seeds(acc_dc=[0.83, 0.85, 0.84])   # a comparison over seeds: acc_dc (mean), acc_dc_std, n_seeds
    torch.save(synset, run.artifact("synset.pt"))
    run.save()   # -> {results_dir}/01_dataset_condensation.json

The JSON holds ``notebook``, ``profile``, ``seed``, ``device``, ``runtime_s``, ``params``, ``metrics``
(name -> number), ``paper`` (the paper's numbers for the same metric names where they exist), ``paper_metrics``
(the names of those numbers), ``artifacts`` (file names in ``results_dir``) and ``versions``. A ``smoke`` run (the
paper path on miniature data, shrunk to a minute) is compared with nothing: its ``paper`` is empty, its
``paper_metrics`` still name what the paper profile compares, and its ``note`` says so.

The paper's numbers are data: one table, ``vklib/paper_numbers.csv``, with the columns ``notebook, metric, setting,
value, unit, source`` (:func:`paper_table`). A row's ``metric`` is the name the notebook logs, ``setting`` the
experiment it belongs to (e.g. ``mnist_ipc1``; empty for a number that belongs to every run of the notebook) and
``source`` the table, figure or repository file it was read from. Units: every number is stored as the notebook
logs it; accuracies, rates, AUCs and errors relative to a length (e.g. the inter-ocular distance) are fractions in
[0, 1], never percent; PSNR is in dB; captioning scores are on pycocoevalcap's native scale (BLEU in [0, 1]);
correlations are Spearman's rho in [-1, 1]. :func:`start` picks the rows of its notebook: those of ``setting`` under
their own names and, for each setting of ``grid``, the rows of that setting as ``{metric}_{setting}`` (a run that
also covers a grid of settings logs them under those names).
"""
from __future__ import annotations

import csv
import json
import math
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["PAPER_TABLE", "UNITS", "Run", "format_value", "load", "paper_numbers", "paper_table", "start"]

#: The table of the papers' numbers (see the module docstring for its columns and units).
PAPER_TABLE = Path(__file__).resolve().parent / "paper_numbers.csv"
#: The units a row may have.
UNITS = ("fraction", "dB", "score", "rho")
_COLUMNS = ("notebook", "metric", "setting", "value", "unit", "source")
#: The profile that runs the paper path on miniature data, shrunk to about a minute (compared with no number).
SMOKE = "smoke"
SMOKE_NOTE = ("smoke run: the paper profile's code path on miniature data with loop and image counts cut to about a "
              "minute (and random weights where ImageNet weights would be loaded); its numbers mean nothing and are "
              "compared with none")

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
        """``paper``: the paper's numbers by metric name; :func:`start` fills it from the shared table. A ``smoke``
        run keeps only their names (``paper_metrics``) and compares with none of them."""
        if not notebook or "/" in notebook or notebook.endswith(".ipynb"):
            raise ValueError(f"notebook must be the notebook's stem, e.g. '01_dataset_condensation', got {notebook!r}")
        self.notebook, self.profile, self.seed, self.device = notebook, profile, seed, str(device)
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.params = dict(params or {})
        paper = {k: _number(k, v) for k, v in (paper or {}).items()}
        self.paper_metrics = sorted(paper)
        self.paper = {} if profile == SMOKE else paper
        self.metrics: dict[str, float | int] = {}
        self.artifacts: list[str] = []
        self._t0 = time.perf_counter()

    def log(self, **metrics) -> None:
        """Record (or overwrite) metrics by name: ``run.log(acc_dc=0.83)``."""
        for k, v in metrics.items():
            self.metrics[k] = _number(k, v)

    def log_seeds(self, **per_seed) -> dict[str, tuple[float, float]]:
        """Record a comparison over seeds: ``run.log_seeds(acc_dc=[0.83, 0.85, 0.84], acc_random=[...])`` logs, for
        each name, the mean under the name, the sample standard deviation (``ddof=1``, as ``torch.std``; 0 for one
        seed) as ``{name}_std``, and ``n_seeds``. Every sequence (numbers or a 1-D tensor, one value per seed) must
        have the same length. Returns ``{name: (mean, std)}``."""
        lengths = {k: len(v) for k, v in per_seed.items()}
        if not per_seed or len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError(f"log_seeds: every metric needs one value per seed, the same number for all; got "
                             f"lengths {lengths}")
        summary = {}
        for name, values in per_seed.items():
            values = [_number(name, v) for v in values]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            self.log(**{name: mean, f"{name}_std": std})
            summary[name] = (mean, std)
        self.log(n_seeds=next(iter(lengths.values())))
        return summary

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
                "metrics": dict(self.metrics), "paper": dict(self.paper), "paper_metrics": list(self.paper_metrics),
                "artifacts": list(self.artifacts), "versions": _versions()} | (
                    {"note": SMOKE_NOTE} if self.profile == SMOKE else {})

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


def paper_table(path: str | Path = PAPER_TABLE) -> list[dict]:
    """The rows of the papers' numbers table (lines starting with ``#`` are comments), ``value`` as a float.

    Raises:
        ValueError: a row lacks a column, has an unknown unit, a value that is not a number, a fraction outside
            [0, 1], no source, or repeats a (notebook, metric, setting).
    """
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    rows, seen = [], set()
    for i, row in enumerate(csv.DictReader(lines), 2):
        if tuple(row) != _COLUMNS or any(row[c] is None for c in _COLUMNS):
            raise ValueError(f"{path}: row {i} must have the columns {', '.join(_COLUMNS)}, got {row}")
        where = f"{path}: row {i} ({row['notebook']}, {row['metric']}, {row['setting'] or 'every setting'})"
        try:
            row["value"] = float(row["value"])
        except ValueError:
            raise ValueError(f"{where}: value {row['value']!r} is not a number") from None
        if row["unit"] not in UNITS:
            raise ValueError(f"{where}: unit must be one of {', '.join(UNITS)}, got {row['unit']!r}")
        if row["unit"] == "fraction" and not 0 <= row["value"] <= 1:
            raise ValueError(f"{where}: a fraction must lie in [0, 1], got {row['value']}")
        if not row["source"].strip():
            raise ValueError(f"{where}: no source (name the paper's table or figure, or the repository file)")
        key = (row["notebook"], row["metric"], row["setting"])
        if key in seen:
            raise ValueError(f"{where}: repeated")
        seen.add(key)
        rows.append(row)
    return rows


def paper_numbers(notebook: str, setting: str | None = None, grid: Sequence[str] = ()) -> dict[str, float]:
    """The paper's numbers for a run of ``notebook``: the table's rows of that notebook whose setting is empty or
    ``setting``, under their metric names, and for each setting ``s`` of ``grid`` (other than ``setting``) its rows
    as ``{metric}_{s}``."""
    rows = [r for r in paper_table() if r["notebook"] == notebook]
    out = {r["metric"]: r["value"] for r in rows if r["setting"] in ("", setting)}
    for s in grid:
        if s != setting:
            out.update({f"{r['metric']}_{s}": r["value"] for r in rows if r["setting"] == s})
    return out


def start(notebook: str, *, profile: str, seed: int, device: str, results_dir: str | Path,
          params: dict | None = None, setting: str | None = None, grid: Sequence[str] = ()) -> Run:
    """Begin recording a run (see :class:`Run`); the paper's numbers come from :func:`paper_numbers`
    (``notebook``, ``setting``, ``grid``)."""
    return Run(notebook, profile=profile, seed=seed, device=device, results_dir=results_dir, params=params,
               paper=paper_numbers(notebook, setting, grid))


def load(path: str | Path) -> dict:
    """Read a results JSON written by :meth:`Run.save`."""
    return json.loads(Path(path).read_text())
