"""Sweeps: many papermill runs of the course notebooks, submitted through submitit, and one table of their results.

``python -m vklib.course sweep --only 01 -p seed=0,1,2 -p ipc=1,10,50 [--profile paper] [--out DIR]
[--executor local|slurm] [--max-parallel N] [--slurm-partition P --gpus-per-job G --cpus-per-job C --mem-gb M
--timeout-min T] [--resume] [--dry-run]``
    runs every point of the Cartesian product of the ``-p`` lists (a comma-separated list at the top level is the
    values to sweep: ``-p seed=0,1,2``; a bracketed list is one value: ``-p ks=[1,2]``; ``-p ks=[1,2],[3]`` sweeps two
    lists) as one papermill run of the notebook (:func:`vklib.course.execute`) in its own folder
    ``DIR/<notebook>/<point>/`` (``point.json`` there records the parameters). submitit does the scheduling: its
    ``LocalExecutor`` runs the points as separate local processes, at most ``--max-parallel`` at a time; its
    ``SlurmExecutor`` submits them as one Slurm job array (``--dry-run`` writes the sbatch script to
    ``DIR/sweep.sbatch`` and submits nothing). Every notebook, profile and parameter is checked before anything is
    submitted. A failed point is reported with its folder and its log; ``--resume`` submits only the points without
    a results JSON.
``python -m vklib.course collect DIR``
    one table of every point's parameters and metrics (``DIR/sweep.csv`` and ``DIR/sweep.md``), the mean +- std of
    each metric over the seeds of each setting (the parameters other than ``seed``), and, per notebook whose sweep
    varies one parameter besides the seed, a figure of its headline metrics against that parameter with error bars
    (``DIR/<notebook>.png``).
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Sequence

from . import course

__all__ = ["collect", "parse_grid", "point_folder", "points", "run_point", "slurm_parameters", "slurm_script", "submit"]

POINT_FILE = "point.json"
EXECUTORS = ("local", "slurm")


def _split_top_level(text: str) -> list[str]:
    """``"a,[1,2],{'x': 1}"`` -> ``["a", "[1,2]", "{'x': 1}"]``: commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_grid(pairs: Sequence[str]) -> dict[str, list]:
    """``["seed=0,1,2", "dataset=mnist,svhn", "ks=[1,2]"]`` -> ``{"seed": [0, 1, 2], "dataset": ["mnist", "svhn"],
    "ks": [[1, 2]]}``: each top-level comma-separated item is one value (a Python literal where it parses)."""
    grid = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"parameter {pair!r} must look like name=value[,value...]")
        name, text = (t.strip() for t in pair.split("=", 1))
        if name in course.RUNNER_PARAMETERS:
            raise ValueError(f"parameter {name} is set with {course.RUNNER_PARAMETERS[name]}, not with -p {name}=...")
        if name in grid:
            raise ValueError(f"parameter {name} is given twice; list its values once: -p {name}=a,b,c")
        items = _split_top_level(text)
        if "" in items:
            raise ValueError(f"parameter {name}: an empty value in {text!r}")
        grid[name] = [course.parse_params([f"{name}={item}"])[name] for item in items]
    return grid


def points(grid: dict[str, list]) -> list[dict]:
    """The Cartesian product of ``grid`` as parameter dicts, the first parameter varying slowest."""
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def _slug(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "empty"


def point_folder(out: Path, nb: course.Notebook, params: dict) -> Path:
    """``out/<notebook stem>/<name>-<value>_<name>-<value>...`` (``default`` for a point without parameters)."""
    name = "_".join(f"{k}-{_slug(v)}" for k, v in params.items()) or "default"
    return Path(out) / nb.stem / name


def run_point(stem: str, profile: str, folder: str, params: dict, threads: int | None = None) -> dict:
    """One point of a sweep (what a submitit job runs): :func:`vklib.course.execute` into ``folder``; ``threads``
    sets ``OMP_NUM_THREADS`` for the notebook's kernel. Raises ``course.NotebookFailed`` when the notebook fails."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
    return course.execute(course.find(stem), profile=profile, out=folder, params=params)


def slurm_parameters(partition: str | None = None, gpus: int = 1, cpus: int | None = None,
                     mem_gb: float | None = None, parallel: int | None = None) -> dict:
    """submitit ``SlurmExecutor`` parameters from the CLI's ``--slurm-partition``, ``--gpus-per-job``,
    ``--cpus-per-job``, ``--mem-gb`` and ``--max-parallel`` (the array's parallelism)."""
    params = {"gpus_per_node": int(gpus), "job_name": "vklib-sweep"}
    if partition:
        params["partition"] = partition
    if cpus:
        params["cpus_per_task"] = int(cpus)
    if mem_gb:
        params["mem"] = f"{int(math.ceil(mem_gb))}GB"
    if parallel:
        params["array_parallelism"] = int(parallel)
    return params


def slurm_script(folder: Path, n_points: int, slurm: dict) -> str:
    """The sbatch script submitit's ``SlurmExecutor`` submits for a job array of ``n_points`` runs with the
    parameters ``slurm`` (``partition``, ``gpus_per_node``, ``time``, ...), logs under ``folder``."""
    import sys

    from submitit.slurm.slurm import _make_sbatch_string
    command = f"{sys.executable} -u -m submitit.core._submit {folder}"
    return _make_sbatch_string(command=command, folder=folder, map_count=n_points, **slurm)


def _check_out(out: Path, todo: list[tuple[course.Notebook, dict, Path]], resume: bool):
    """The points to run: all, or with ``resume`` those without a results JSON. Without ``resume`` a point that
    already holds results is an error."""
    left = []
    for nb, params, folder in todo:
        done = (folder / f"{nb.stem}.json").is_file()
        if done and not resume:
            raise ValueError(f"--out {out}: {folder} already holds results; pass --resume to run only the missing "
                             f"points, or choose another --out")
        if not done:
            left.append((nb, params, folder))
    return left


def submit(notebooks: Sequence[course.Notebook], grid: dict[str, list], *, profile: str = "quick",
           out: str | Path = "runs/sweep", executor: str = "local", max_parallel: int = 2, resume: bool = False,
           dry_run: bool = False, slurm: dict | None = None, timeout_min: int = 60, log=print) -> int:
    """Validate everything, then run (local) or submit (Slurm) every point of ``grid`` for each notebook.

    Returns the number of failed points (local; 0 after a Slurm submission, whose jobs run later).
    Raises:
        ValueError: unknown profile or executor, a parameter a notebook lacks, an unwritable ``out``, results in the
            way without ``resume``.
    """
    if profile not in course.PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(course.PROFILE_NAMES)}")
    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if not isinstance(max_parallel, int) or max_parallel < 1:
        raise ValueError(f"--max-parallel must be an int >= 1, got {max_parallel!r}")
    if dry_run and executor != "slurm":
        raise ValueError("--dry-run writes the Slurm script; it needs --executor slurm")
    for nb in notebooks:
        course.check_parameters(nb, grid)
    out = course.prepare_out(out)
    todo = [(nb, p, point_folder(out, nb, p)) for nb in notebooks for p in points(grid)]
    todo = _check_out(out, todo, resume)
    if not todo:
        log(f"every point in {out} has its results already; nothing to run")
        return 0
    logs = out / ".submitit"
    if executor == "slurm":
        slurm = dict(slurm or slurm_parameters(), time=int(timeout_min))
        if dry_run:
            script = out / "sweep.sbatch"
            script.write_text(slurm_script(logs, len(todo), slurm))
            log(f"{len(todo)} point(s) would be submitted as one Slurm job array; its sbatch script: {script}")
            return 0
        import submitit
        ex = submitit.SlurmExecutor(folder=logs)
        ex.update_parameters(**slurm)
        for nb, params, folder in todo:
            _write_point(folder, nb, profile, params)
        jobs = ex.map_array(run_point, [nb.stem for nb, _, _ in todo], [profile] * len(todo),
                            [str(f) for _, _, f in todo], [p for _, p, _ in todo])
        log(f"submitted {len(jobs)} point(s) as Slurm job array {jobs[0].job_id.split('_')[0]}; logs in {logs}; "
            f"when they are done: python -m vklib.course collect {out}")
        return 0
    return _run_local(todo, profile, logs, max_parallel, timeout_min, log)


def _write_point(folder: Path, nb: course.Notebook, profile: str, params: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / POINT_FILE).write_text(json.dumps({"notebook": nb.stem, "profile": profile, "params": params},
                                                indent=1) + "\n")


def _run_local(todo, profile: str, logs: Path, max_parallel: int, timeout_min: int, log) -> int:
    """Run the points as separate local processes (submitit's ``LocalExecutor``), at most ``max_parallel`` at once,
    each kernel with ``cpu_count // max_parallel`` threads."""
    import submitit
    ex = submitit.LocalExecutor(folder=logs)
    ex.update_parameters(timeout_min=timeout_min)
    threads = max(1, (os.cpu_count() or 1) // max_parallel)
    waiting, running, failed, n = list(todo), [], [], len(todo)
    while waiting or running:
        while waiting and len(running) < max_parallel:
            nb, params, folder = waiting.pop(0)
            _write_point(folder, nb, profile, params)
            job = ex.submit(run_point, nb.stem, profile, str(folder), params, threads)
            running.append((job, folder))
        time.sleep(0.5)
        for job, folder in [r for r in running if r[0].done()]:
            running.remove((job, folder))
            error = job.exception()
            done = n - len(waiting) - len(running)
            if error is None:
                log(f"[{done}/{n}] {folder}: done in {job.result()['wall_s'] / 60:.1f} min")
            else:
                failed.append(folder)
                last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                log(f"[{done}/{n}] {folder}: FAILED ({last}); log: {job.paths.stderr}")
    if failed:
        log(f"{len(failed)} of {n} point(s) failed: {', '.join(str(f) for f in failed)}")
    return len(failed)


# ----------------------------------------------------------------------------------------------- collect
def _fmt(v) -> str:
    from .results import format_value
    if isinstance(v, float) or isinstance(v, int) and not isinstance(v, bool):
        return format_value(v)
    return json.dumps(v) if not isinstance(v, str) else v


def collect(out: str | Path, log=print) -> dict:
    """Gather every point of the sweep in ``out``: writes ``sweep.csv`` and ``sweep.md`` (and a figure per notebook
    that varies one parameter besides the seed); returns ``{"rows": [...], "summary": [...], "missing": [...],
    "figures": [...]}``."""
    import statistics
    out = Path(out)
    if not out.is_dir():
        raise ValueError(f"{out}: no such sweep folder")
    rows, missing = [], []
    for point in sorted(out.glob(f"*/*/{POINT_FILE}")):
        info = json.loads(point.read_text())
        result = point.parent / f"{info['notebook']}.json"
        if not result.is_file():
            missing.append(point.parent)
            continue
        r = json.loads(result.read_text())
        wall = r.get("wall_s", r.get("runtime_s"))
        rows.append({"notebook": info["notebook"], "profile": info["profile"], "params": info["params"],
                     "metrics": r["metrics"], "minutes": None if wall is None else wall / 60, "folder": point.parent})
    if not rows and not missing:
        raise ValueError(f"{out}: no sweep points found (expected <notebook>/<point>/{POINT_FILE})")
    params = list(dict.fromkeys(k for r in rows for k in r["params"]))
    metrics = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["notebook", "profile"] + params + metrics + ["minutes"])
        for r in rows:
            w.writerow([r["notebook"], r["profile"]] + [_fmt(r["params"][p]) if p in r["params"] else ""
                                                        for p in params] + [r["metrics"].get(m, "") for m in metrics]
                       + ["" if r["minutes"] is None else round(r["minutes"], 2)])
    # mean +- std over seeds of every setting (the parameters other than the seed)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        setting = tuple((k, json.dumps(v)) for k, v in r["params"].items() if k != "seed")
        groups.setdefault((r["notebook"], r["profile"], setting), []).append(r)
    summary = []
    for (stem, profile, setting), members in groups.items():
        stats = {}
        for m in dict.fromkeys(k for r in members for k in r["metrics"]):
            vals = [r["metrics"][m] for r in members if m in r["metrics"]]
            stats[m] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))
        summary.append({"notebook": stem, "profile": profile,
                        "setting": {k: json.loads(v) for k, v in setting}, "stats": stats})
    hours = sum(r["minutes"] or 0.0 for r in rows) / 60
    lines = [f"# Sweep {out}", "", f"{len(rows)} point(s) with results, {hours:.2f} hours of run time in all "
             "(each point's whole notebook execution: on a cluster, its job's device hours).", "", "## Every point", "",
             "| notebook | " + " | ".join(params + metrics) + " |", "|---|" + "---|" * len(params) + "---:|" * len(metrics)]
    for r in rows:
        lines.append(f"| {r['notebook']} | " + " | ".join(
            [_fmt(r["params"][p]) if p in r["params"] else "" for p in params]
            + [_fmt(r["metrics"][m]) if m in r["metrics"] else "" for m in metrics]) + " |")
    lines += ["", "## Mean +- std over seeds, per setting", "", "| notebook | setting | metric | mean | std | seeds |",
              "|---|---|---|---:|---:|---:|"]
    for s in summary:
        setting = ", ".join(f"{k}={_fmt(v)}" for k, v in s["setting"].items()) or "(seeds only)"
        for m, (mean, std, n) in s["stats"].items():
            lines.append(f"| {s['notebook']} | {setting} | {m} | {mean:.4g} | {std:.2g} | {n} |")
    if missing:
        lines += ["", "## Points without results (failed, running or not yet run)", ""]
        lines += [f"- {p}" for p in missing]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    figures = _figures(out, summary)
    log(f"{len(rows)} point(s) with results, {len(missing)} without: {out / 'sweep.md'}, {out / 'sweep.csv'}"
        + "".join(f", {f}" for f in figures))
    return {"rows": rows, "summary": summary, "missing": missing, "figures": figures}


def _figures(out: Path, summary: list[dict]) -> list[Path]:
    """Per notebook whose settings differ in exactly one parameter: its headline metrics (mean +- std over seeds)
    against that parameter."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figures = []
    for stem in dict.fromkeys(s["notebook"] for s in summary):
        mine = [s for s in summary if s["notebook"] == stem]
        varying = [k for k in dict.fromkeys(k for s in mine for k in s["setting"])
                   if len({json.dumps(s["setting"].get(k)) for s in mine}) > 1]
        if len(varying) != 1 or len(mine) < 2:
            continue
        (param,) = varying
        entry = next((nb for nb in course.CATALOGUE if nb.stem == stem), None)
        names = [m for m in (entry.headline if entry else ()) if any(m in s["stats"] for s in mine)]
        names = names or list(mine[0]["stats"])[:4]
        xs = [s["setting"][param] for s in mine]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        order = sorted(range(len(mine)), key=lambda i: xs[i] if numeric else str(xs[i]))
        fig, ax = plt.subplots(figsize=(5, 3.2))
        pos = [xs[i] for i in order] if numeric else list(range(len(order)))
        for m in names:
            mean = [mine[i]["stats"].get(m, (math.nan,) * 3)[0] for i in order]
            std = [mine[i]["stats"].get(m, (math.nan,) * 3)[1] for i in order]
            ax.errorbar(pos, mean, yerr=std, marker="o", capsize=3, label=m)
        if not numeric:
            ax.set_xticks(pos, [_fmt(xs[i]) for i in order])
        seeds = max(s["stats"][m][2] for s in mine for m in names if m in s["stats"])
        ax.set(xlabel=param, ylabel="metric", title=f"{stem}: mean +- std over up to {seeds} seed(s)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        figures.append(path)
    return figures
