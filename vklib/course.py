"""The course catalogue and the command line behind ``make course``.

``python -m vklib.course list``
    the table of notebooks (paper, arXiv id, data, measured quick runtime on 2 CPU cores, GPU need).
``python -m vklib.course run [--profile quick|paper|smoke] [--only 01 04] [--out DIR] [-p name=value ...] [--store]``
    executes notebooks through papermill into ``DIR`` (default ``runs/``): the executed notebooks, one results JSON
    per notebook and ``DIR/summary.md``. ``--store`` copies the executed outputs back into ``notebooks/`` (to refresh
    the outputs stored with the course).
``python -m vklib.course sweep --only 01 -p seed=0,1,2 -p ipc=1,10 [--executor local|slurm] ...``
    many runs (the product of the ``-p`` lists) through submitit, locally or on Slurm; see :mod:`vklib.sweep`.
``python -m vklib.course collect DIR``
    one table (Markdown, CSV), means +- std over seeds and a figure of a sweep's results; see :mod:`vklib.sweep`.
"""
from __future__ import annotations

import argparse
import ast
import copy
import html
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["CATALOGUE", "NOTEBOOKS_DIR", "Notebook", "available", "check_parameters", "execute", "find", "main",
           "parse_params", "prepare_out", "solution", "store_outputs", "summary_markdown"]

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
#: The profiles every notebook has (a notebook's settings for each are its ``PROFILES`` dict).
PROFILE_NAMES = ("quick", "paper", "smoke")


@dataclass(frozen=True)
class Notebook:
    """One entry of the course. ``quick_minutes`` is measured on 2 CPU cores (None until measured)."""

    id: str
    stem: str
    title: str
    arxiv: str
    data: str
    gpu: str
    headline: tuple[str, ...]
    quick_minutes: float | None = None

    @property
    def path(self) -> Path:
        return NOTEBOOKS_DIR / f"{self.stem}.ipynb"

    @property
    def exists(self) -> bool:
        return self.path.is_file()


CATALOGUE: tuple[Notebook, ...] = (
    Notebook("00", "00_course_tour", "Course tour: data, models, results", "", "all shipped subsets", "no",
             ("tour_convnet_acc",), 0.3),
    Notebook("01", "01_dataset_condensation", "Dataset Condensation with gradient matching", "2006.05929",
             "MNIST", "paper profile", ("acc_dc", "acc_random", "acc_herding", "acc_kcenter", "acc_dm"), 2.9),
    Notebook("02", "02_gradient_leakage", "iDLG: improved deep leakage from gradients", "2001.02610",
             "MNIST, CIFAR-10, LFW", "paper profile", ("idlg_label_acc", "dlg_label_acc", "idlg_success_rate",
                                                       "dlg_success_rate", "ig_psnr"), 3.8),
    Notebook("03", "03_deep_image_kernel_priors", "Blind deconvolution with deep image and kernel priors",
             "1910.08386", "Set12, Levin kernels", "paper profile",
             ("psnr_blurred", "psnr_tv_blind", "psnr_selfdeblur_blind", "psnr_dikp_blind", "psnr_dip_nonblind"), 4.2),
    Notebook("04", "04_descriptor_vector_exchange", "Unsupervised landmarks by descriptor vector exchange",
             "1908.06427", "LFW 5-point landmarks", "paper profile", ("iod_error_dve", "iod_error_no_dve"), 4.4),
    Notebook("05", "05_learning_to_impute", "Learning to impute labels for semi-supervised learning",
             "1912.10364", "MNIST, LFW landmarks", "paper profile",
             ("acc_supervised", "acc_mean_teacher", "acc_l2i", "iod_error_l2i"), 2.8),
    Notebook("06", "06_latent_domain_adapters", "Latent domain learning with dynamic residual adapters",
             "2006.00996", "PACS", "paper profile",
             ("acc_bn_head", "acc_single_adapter", "acc_dynamic_adapters", "gate_nmi"), 2.3),
    Notebook("07", "07_normgrad_saliency", "NormGrad: training-specific saliency and meta-saliency",
             "1910.08823", "CIFAR-10", "paper profile", ("deletion_auc_normgrad", "insertion_auc_normgrad"), 1.3),
    Notebook("08", "08_continual_representation", "Continual representation learning for identification",
             "2006.04455", "LFW people, ORL", "paper profile", ("rank1_finetune", "rank1_lwf", "rank1_crl"), 2.3),
    Notebook("09", "09_topic_attention_captioning", "Captioning with latent-topic attention and a sentence auto-encoder",
             "1911.10082", "generated scenes (compositional split), COCO sample", "paper profile",
             ("bleu4_baseline", "bleu4_clta_sae", "cider_baseline", "cider_clta_sae"), 1.6),
    Notebook("10", "10_personalised_aesthetics", "Personalised aesthetics with residual adapters", "1907.03802",
             "COCO + PACS photos, simulated users", "paper profile",
             ("spearman_generic", "spearman_head_k100", "spearman_adapter_k100"), 1.9),
)


def available() -> list[Notebook]:
    """The catalogue entries whose notebook exists."""
    return [nb for nb in CATALOGUE if nb.exists]


def solution(stem: str):
    """The worked solutions of notebook ``stem``'s exercises: ``notebooks/solutions/{stem}.py`` loaded as a module
    (its file name starts with the notebook's number, so it cannot be imported by name). The notebook's exercise cell
    and the unit test that checks the solution against the library kernel both load it so."""
    import importlib.util
    path = NOTEBOOKS_DIR / "solutions" / f"{stem}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no worked solutions for {stem}: expected {path}")
    spec = importlib.util.spec_from_file_location(f"solutions_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find(key: str) -> Notebook:
    """A notebook by id (``"01"`` or ``"1"``) or stem; unknown or unwritten ones raise ``ValueError``."""
    key = str(key)
    for nb in CATALOGUE:
        if key in (nb.id, nb.stem, nb.id.lstrip("0") or "0"):
            if not nb.exists:
                raise ValueError(f"notebook {nb.id} ({nb.stem}) is not written yet; available: "
                                 f"{', '.join(n.id for n in available())}")
            return nb
    raise ValueError(f"unknown notebook {key!r}; available: {', '.join(f'{n.id} ({n.stem})' for n in available())}")


#: Parameters the runner sets itself (from ``--profile`` and ``--out``); ``-p`` may not set them.
RUNNER_PARAMETERS = {"profile": "--profile", "results_dir": "--out"}


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _injectable(name: str, value):
    """``value`` as papermill injects it faithfully: tuples become lists (papermill would inject a tuple as the string
    of its repr); a literal papermill cannot translate (a set, bytes, a complex number) is an error."""
    if isinstance(value, (tuple, list)):
        return [_injectable(name, v) for v in value]
    if isinstance(value, dict):
        return {k: _injectable(name, v) for k, v in value.items()}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ValueError(f"parameter {name}: a {type(value).__name__} cannot be passed to a notebook; use a number, a "
                     f"string, True/False/None, a list or a dict")


def parse_params(pairs: list[str]) -> dict:
    """``["name=value", ...]`` -> dict; values are Python literals where they parse, else strings; tuples become
    lists. ``profile`` and ``results_dir`` are refused (the runner sets them from ``--profile`` and ``--out``)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"parameter {pair!r} must look like name=value")
        k, v = (t.strip() for t in pair.split("=", 1))
        if k in RUNNER_PARAMETERS:
            raise ValueError(f"parameter {k} is set with {RUNNER_PARAMETERS[k]}, not with -p {k}=...")
        out[k] = _injectable(k, _parse_value(v))
    return out


def notebook_parameters(nb: Notebook) -> dict:
    """The names and defaults of the notebook's ``parameters`` cell."""
    import papermill
    return {k: v["default"] for k, v in papermill.inspect_notebook(str(nb.path)).items()}


def check_parameters(nb: Notebook, params: dict) -> None:
    """Raise a ``ValueError`` naming ``nb``'s parameters when ``params`` has a name its parameters cell lacks."""
    known = notebook_parameters(nb)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"notebook {nb.stem} has no parameter(s) {', '.join(unknown)}; its parameters: "
                         f"{', '.join(known)}")


def prepare_out(out: str | Path) -> Path:
    """Create the output folder (with parents) and check that it is writable; a ``ValueError`` says why not."""
    out = Path(out).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".vklib-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror or e}); choose another folder") from None
    return out


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook and the failing cell."""


def _quiet_kernel_manager():
    """A kernel manager whose kernels talk over local IPC sockets (no TCP ports, so ipykernel has no unencrypted-TCP
    warning to give) and log only errors of their own."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.transport = "ipc"
            self.ip = str(Path(tempfile.mkdtemp(prefix="vklib-kernel-")) / "kernel")

    return QuietKernelManager


def execute(nb: Notebook, *, profile: str = "quick", out: str | Path = "runs", params: dict | None = None,
            log_output: bool = False) -> dict:
    """Execute ``nb`` through papermill into ``out`` and return its results JSON as a dict (plus ``wall_s``).

    The notebook's previous results in ``out`` (``{stem}.*``: executed notebook, JSON, artifacts) are removed first,
    so that a failed run leaves nothing that looks like a result.

    Raises:
        ValueError: unknown profile, a parameter the notebook does not have, or an unwritable ``out``.
        NotebookFailed: the notebook raised; the message names the cell.
    """
    import papermill as pm
    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILE_NAMES)}")
    params = dict(params or {})
    for k in RUNNER_PARAMETERS:
        if k in params:
            raise ValueError(f"parameter {k} is set by execute's own argument ({'out' if k == 'results_dir' else k}=)")
    params = {k: _injectable(k, v) for k, v in params.items()}
    check_parameters(nb, params)
    out = prepare_out(out)
    for old in out.glob(f"{nb.stem}.*"):
        if old.is_file():
            old.unlink()
    target = out / f"{nb.stem}.ipynb"
    params.update(profile=profile, results_dir=str(out))
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(nb.path), str(target), parameters=params, kernel_name="python3",
                            progress_bar=False, log_output=log_output, cwd=str(NOTEBOOKS_DIR),
                            execution_timeout=3600, kernel_manager_class=_quiet_kernel_manager(),
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except pm.PapermillExecutionError as e:
        (out / f"{nb.stem}.json").unlink(missing_ok=True)
        raise NotebookFailed(f"notebook {nb.stem} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); "
                             f"see {target}") from None
    wall = time.perf_counter() - t0
    result_path = out / f"{nb.stem}.json"
    if not result_path.is_file():
        raise NotebookFailed(f"notebook {nb.stem} ran but wrote no {result_path.name}; it must call run.save()")
    result = json.loads(result_path.read_text())
    result["wall_s"] = round(wall, 1)  # the notebook's whole execution, kernel start included
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------------------------- stored outputs
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _html_text(value: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", value)).replace("\u2007", " ")


def widget_text(model_id: str, state: dict) -> str:
    """A plain-text stand-in for widget ``model_id`` as it looked at the end of the run (``state``: the notebook's
    widget state): a tqdm bar as its final line (``condense: 100%|##########| 150/150 [...]``), other widgets as a
    short description of their controls."""
    model = state[model_id]
    children = [state.get(c.replace("IPY_MODEL_", ""), {}) for c in model["state"].get("children", [])]
    progress = [c for c in children if c.get("model_name") in ("FloatProgressModel", "IntProgressModel")]
    if progress:
        p = progress[0]["state"]
        frac = 0.0 if not p.get("max") else min(1.0, max(0.0, (p.get("value", 0) - p.get("min", 0)) / p["max"]))
        texts = [_html_text(c["state"].get("value", "")) for c in children if c.get("model_name") == "HTMLModel"]
        left, right = (texts + ["", ""])[:2]
        if re.match(r"^\s*0/0\b", right):  # a loop over nothing: tqdm's bar for total=0
            return f"{left.strip()} 0/0 (nothing to iterate over)"
        # the counts come from the progress model (its final value): a bar that finished between two refreshes of
        # its text would otherwise read "0/1" beside a full bar
        left = re.sub(r"\s*\d+%$", "", left) + f"{round(100 * frac):4d}%"
        if p.get("max"):
            right = re.sub(r"^\s*\d+/\d+", f" {int(p.get('value', 0))}/{int(p['max'])}", right)
        bar = "\u2588" * int(round(10 * frac))
        return f"{left}|{bar:<10}|{right}"
    names = [c["state"].get("description") or c.get("model_name", "").replace("Model", "") for c in children
             ] or [model["state"].get("description") or model.get("model_name", "").replace("Model", "")]
    return f"[interactive controls: {', '.join(names)}; live when the notebook runs in JupyterLab]"


def store_outputs(executed: str | Path, nb: Notebook) -> None:
    """Copy the outputs of an executed copy of ``nb`` back into ``notebooks/`` (cells matched by id), so that the
    stored notebook renders as it looked when run: the widget state is stored with it (sliders and dropdowns render
    as widgets, progress bars at their final value), each widget's plain-text fallback is its final look (never
    ``HBox(children=...`` or a ``0%|`` bar), bars that closed themselves when done (``leave=False``) are gone as they
    were in the live run, and the kernel metadata is what ipykernel writes (the notebook opens unmodified)."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    run = nbformat.read(str(executed), as_version=4)
    src = nbformat.read(str(nb.path), as_version=4)
    state = run.metadata.get("widgets", {}).get(_WIDGET_STATE, {}).get("state", {})
    by_id = {c.get("id"): c for c in run.cells if c.cell_type == "code"}
    for cell in src.cells:
        if cell.cell_type != "code":
            continue
        done = by_id.get(cell.get("id"))
        if done is None:
            raise ValueError(f"{nb.stem}: cell {cell.get('id')} is missing from {executed}")
        outputs = []
        for o in copy.deepcopy(done.outputs):
            view = o.get("data", {}).get(_WIDGET_VIEW)
            if view is not None:
                if view["model_id"] not in state:  # closed by the run (tqdm's leave=False): gone when it ended
                    continue
                o["data"]["text/plain"] = widget_text(view["model_id"], state)
            outputs.append(o)
        cell.outputs = outputs
        cell.execution_count = done.execution_count
    if state:
        src.metadata["widgets"] = run.metadata["widgets"]
    else:
        src.metadata.pop("widgets", None)
    spec = KernelSpecManager().get_kernel_spec("python3")
    src.metadata["kernelspec"] = {"display_name": spec.display_name, "language": spec.language, "name": "python3"}
    src.metadata["language_info"] = run.metadata.get("language_info", src.metadata.get("language_info"))
    nbformat.write(src, str(nb.path))


def summary_markdown(results: list[dict], profile: str, failed: Sequence[str] = ()) -> str:
    """``summary.md``: per notebook its headline metrics beside the paper's numbers, and its runtime; a notebook of
    ``failed`` (stems) gets a FAILED row."""
    from .results import format_value
    lines = [f"# Course run ({profile} profile)", "",
             "| notebook | metric | this run | paper | runtime (min) |", "|---|---|---:|---:|---:|"]
    rows = {r["notebook"]: r for r in results}
    for nb in CATALOGUE:
        if nb.stem in failed:
            lines.append(f"| {nb.stem} | FAILED | | | |")
            continue
        r = rows.get(nb.stem)
        if r is None:
            continue
        names = [m for m in nb.headline if m in r["metrics"]] or list(r["metrics"])[:4]
        for i, m in enumerate(names):
            first = i == 0
            wall = r.get("wall_s", r.get("runtime_s"))
            runtime = f"{wall / 60:.1f}" if first and wall is not None else ""
            lines.append(f"| {nb.stem if first else ''} | {m} | {format_value(r['metrics'][m])} | "
                         f"{format_value(r['paper'].get(m))} | {runtime} |")
    return "\n".join(lines) + "\n"


def _collect_results(out: Path, profile: str, fresh: list[dict], failed: Sequence[str]) -> list[dict]:
    """This run's results, plus those already in ``out`` (same profile) of notebooks not run this time."""
    rows = {r["notebook"]: r for r in fresh}
    for nb in CATALOGUE:
        path = out / f"{nb.stem}.json"
        if nb.stem in rows or nb.stem in failed or not path.is_file():
            continue
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if r.get("profile") == profile and "metrics" in r:
            rows[nb.stem] = r
    return list(rows.values())


def _list() -> str:
    w = max(len(nb.data) for nb in CATALOGUE)   # the data column as wide as its longest entry
    rows = [f"{'id':<3} {'notebook':<34} {'arXiv':<11} {'data':<{w}} {'quick (min)':>11}  GPU", "-" * (74 + w)]
    for nb in CATALOGUE:
        runtime = "not written" if not nb.exists else ("?" if nb.quick_minutes is None else f"{nb.quick_minutes:.1f}")
        rows.append(f"{nb.id:<3} {nb.stem:<34} {nb.arxiv or '-':<11} {nb.data:<{w}} {runtime:>11}  {nb.gpu}")
    return "\n".join(rows)


def _sweep_command(parser: argparse.ArgumentParser, args) -> int:
    from . import sweep
    try:
        if args.cmd == "collect":
            sweep.collect(args.out)
            return 0
        if args.executor == "local" and (args.slurm_partition or args.cpus_per_job or args.mem_gb):
            raise ValueError("--slurm-partition, --cpus-per-job and --mem-gb are for --executor slurm")
        notebooks = [find(k) for k in args.only]
        grid = sweep.parse_grid(args.param)
        slurm = sweep.slurm_parameters(args.slurm_partition, args.gpus_per_job, args.cpus_per_job, args.mem_gb,
                                       args.max_parallel)
        failed = sweep.submit(notebooks, grid, profile=args.profile, out=args.out, executor=args.executor,
                              max_parallel=args.max_parallel, resume=args.resume, dry_run=args.dry_run, slurm=slurm,
                              timeout_min=args.timeout_min)
    except ValueError as e:
        parser.error(str(e))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vklib.course", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the table of notebooks")
    run = sub.add_parser("run", help="execute notebooks through papermill")
    run.add_argument("--profile", default="quick",
                     help="quick (CPU, minutes), paper (GPU, full data) or smoke (the paper path shrunk to a minute, "
                          "for miniature data: -p data_dir=DIR)")
    run.add_argument("--only", nargs="+", metavar="ID", help="notebook ids or stems (default: all)")
    run.add_argument("--out", default="runs", help="output folder (default: runs)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a notebook parameter (repeatable)")
    run.add_argument("--store", action="store_true", help="copy the executed outputs back into notebooks/")
    sweep = sub.add_parser("sweep", help="many runs (the product of the -p lists) through submitit")
    sweep.add_argument("--only", nargs="+", metavar="ID", required=True, help="notebook ids or stems")
    sweep.add_argument("-p", "--param", action="append", default=[], metavar="NAME=V1,V2,...",
                       help="a parameter and its values (repeatable); the sweep is the product of the lists")
    sweep.add_argument("--profile", default="quick", help="quick, paper or smoke")
    sweep.add_argument("--out", default="runs/sweep", help="sweep folder (default: runs/sweep)")
    sweep.add_argument("--executor", default="local", help="local (parallel local processes) or slurm")
    sweep.add_argument("--max-parallel", type=int, default=2,
                       help="points running at once (local: processes; slurm: the job array's parallelism)")
    sweep.add_argument("--timeout-min", type=int, default=60, help="time limit of each point in minutes")
    sweep.add_argument("--slurm-partition", help="Slurm partition")
    sweep.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per point on Slurm (default 1)")
    sweep.add_argument("--cpus-per-job", type=int, help="CPUs per point on Slurm")
    sweep.add_argument("--mem-gb", type=float, help="memory per point on Slurm, GB")
    sweep.add_argument("--resume", action="store_true", help="run only the points without a results JSON")
    sweep.add_argument("--dry-run", action="store_true", help="slurm: write DIR/sweep.sbatch, submit nothing")
    coll = sub.add_parser("collect", help="one table and figure of a sweep's results")
    coll.add_argument("out", metavar="DIR", help="the sweep folder")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        print(_list())
        return 0
    if args.cmd in ("sweep", "collect"):
        return _sweep_command(parser, args)
    try:
        if args.profile not in PROFILE_NAMES:
            raise ValueError(f"unknown profile {args.profile!r}; allowed: {', '.join(PROFILE_NAMES)}")
        if args.store and args.profile != "quick":
            raise ValueError(f"--store keeps the quick profile's outputs in notebooks/, not the {args.profile} profile's")
        chosen = [find(k) for k in args.only] if args.only else available()
        params = parse_params(args.param)
        for nb in chosen:  # every notebook's parameters are checked before anything runs
            check_parameters(nb, params)
        out = prepare_out(args.out)
    except ValueError as e:
        parser.error(str(e))
    results, failed = [], []
    for i, nb in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {nb.stem} ({args.profile}) ...", flush=True)
        try:
            r = execute(nb, profile=args.profile, out=out, params=params)
        except (NotebookFailed, ValueError) as e:
            print(f"    FAILED: {e}", flush=True)
            failed.append(nb.stem)
            continue
        results.append(r)
        shown = ", ".join(f"{k}={r['metrics'][k]:.4g}" for k in nb.headline if k in r["metrics"])
        print(f"    done in {r['wall_s'] / 60:.1f} min: {shown}", flush=True)
        if args.store:
            store_outputs(out / f"{nb.stem}.ipynb", nb)
    summary = summary_markdown(_collect_results(out, args.profile, results, failed), args.profile, failed)
    (out / "summary.md").write_text(summary)
    print(f"summary: {out / 'summary.md'}")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
