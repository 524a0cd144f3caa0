"""The course catalogue and the command line behind ``make course``.

``python -m vklib.course list``
    the table of notebooks (paper, arXiv id, data, measured quick runtime on 2 CPU cores, GPU need).
``python -m vklib.course run [--profile quick|paper] [--only 01 04] [--out DIR] [-p name=value ...] [--store]``
    executes notebooks through papermill into ``DIR`` (default ``runs/``): the executed notebooks, one results JSON
    per notebook and ``DIR/summary.md``. ``--store`` copies the executed outputs back into ``notebooks/`` (to refresh
    the outputs stored with the course).
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CATALOGUE", "NOTEBOOKS_DIR", "Notebook", "available", "execute", "find", "main", "store_outputs",
           "summary_markdown"]

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
#: The profiles every notebook has (a notebook's settings for each are its ``PROFILES`` dict).
PROFILE_NAMES = ("quick", "paper")


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
             ("tour_convnet_acc",), 0.2),
    Notebook("01", "01_dataset_condensation", "Dataset Condensation with gradient matching", "2006.05929",
             "MNIST", "paper profile", ("acc_dc", "acc_random", "acc_herding", "acc_kcenter"), 1.3),
    Notebook("02", "02_gradient_leakage", "iDLG: improved deep leakage from gradients", "2001.02610",
             "MNIST, CIFAR-10, LFW", "paper profile", ("idlg_label_acc", "dlg_label_acc", "idlg_success_rate",
                                                       "dlg_success_rate"), 1.2),
    Notebook("03", "03_deep_image_kernel_priors", "Blind deconvolution with deep image and kernel priors",
             "1910.08386", "Set12, Levin kernels", "paper profile", ("psnr_blurred", "psnr_dikp_blind",
                                                                      "psnr_dip_nonblind"), 0.8),
    Notebook("04", "04_descriptor_vector_exchange", "Unsupervised landmarks by descriptor vector exchange",
             "1908.06427", "LFW 5-point landmarks", "paper profile", ("iod_error_dve", "iod_error_no_dve"), 1.6),
    Notebook("05", "05_learning_to_impute", "Learning to impute labels for semi-supervised learning",
             "1912.10364", "MNIST, LFW landmarks", "paper profile", ("acc_supervised", "acc_mean_teacher", "acc_l2i"), 1.9),
    Notebook("06", "06_latent_domain_adapters", "Latent domain learning with dynamic residual adapters",
             "2006.00996", "PACS", "paper profile", ("acc_head_only", "acc_dynamic_adapters", "gate_nmi"), 1.5),
    Notebook("07", "07_normgrad_saliency", "NormGrad: training-specific saliency and meta-saliency",
             "1910.08823", "CIFAR-10", "paper profile", ("deletion_auc_normgrad", "insertion_auc_normgrad"), 0.8),
    Notebook("08", "08_continual_representation", "Continual representation learning for identification",
             "2006.04455", "LFW people, ORL", "paper profile", ("rank1_finetune", "rank1_lwf", "rank1_crl"), 0.7),
    Notebook("09", "09_topic_attention_captioning", "Captioning with latent-topic attention and a sentence auto-encoder",
             "1911.10082", "generated scenes, COCO sample", "paper profile", ("bleu4_baseline", "bleu4_clta_sae"), 1.8),
    Notebook("10", "10_personalised_aesthetics", "Personalised aesthetics with residual adapters", "1907.03802",
             "COCO + PACS photos, simulated users", "paper profile", ("spearman_generic", "spearman_adapter_k100"), 1.3),
)


def available() -> list[Notebook]:
    """The catalogue entries whose notebook exists."""
    return [nb for nb in CATALOGUE if nb.exists]


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


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_params(pairs: list[str]) -> dict:
    """``["name=value", ...]`` -> dict; values are Python literals where they parse, else strings."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"parameter {pair!r} must look like name=value")
        k, v = pair.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def notebook_parameters(nb: Notebook) -> dict:
    """The names and defaults of the notebook's ``parameters`` cell."""
    import papermill
    return {k: v["default"] for k, v in papermill.inspect_notebook(str(nb.path)).items()}


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook and the failing cell."""


def execute(nb: Notebook, *, profile: str = "quick", out: str | Path = "runs", params: dict | None = None,
            log_output: bool = False) -> dict:
    """Execute ``nb`` through papermill into ``out`` and return its results JSON as a dict (plus ``wall_s``).

    Raises:
        ValueError: unknown profile or a parameter the notebook does not have.
        NotebookFailed: the notebook raised; the message names the cell.
    """
    import papermill as pm
    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILE_NAMES)}")
    params = dict(params or {})
    known = notebook_parameters(nb)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"notebook {nb.stem} has no parameter(s) {', '.join(unknown)}; its parameters: "
                         f"{', '.join(known)}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{nb.stem}.ipynb"
    params.update(profile=profile, results_dir=str(out))
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(nb.path), str(target), parameters=params, kernel_name="python3",
                            progress_bar=False, log_output=log_output, cwd=str(NOTEBOOKS_DIR),
                            execution_timeout=3600)
    except pm.PapermillExecutionError as e:
        raise NotebookFailed(f"notebook {nb.stem} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); "
                             f"see {target}") from None
    wall = time.perf_counter() - t0
    result_path = out / f"{nb.stem}.json"
    if not result_path.is_file():
        raise NotebookFailed(f"notebook {nb.stem} ran but wrote no {result_path.name}; it must call run.save()")
    result = json.loads(result_path.read_text())
    result["wall_s"] = round(wall, 1)
    return result


def store_outputs(executed: str | Path, nb: Notebook) -> None:
    """Copy the outputs of an executed copy of ``nb`` back into ``notebooks/`` (cells matched by id)."""
    import nbformat
    run = nbformat.read(str(executed), as_version=4)
    src = nbformat.read(str(nb.path), as_version=4)
    by_id = {c.get("id"): c for c in run.cells if c.cell_type == "code"}
    for cell in src.cells:
        if cell.cell_type != "code":
            continue
        done = by_id.get(cell.get("id"))
        if done is None:
            raise ValueError(f"{nb.stem}: cell {cell.get('id')} is missing from {executed}")
        cell.outputs = copy.deepcopy(done.outputs)
        cell.execution_count = done.execution_count
    nbformat.write(src, str(nb.path))


def summary_markdown(results: list[dict], profile: str) -> str:
    """``summary.md``: per notebook its headline metrics beside the paper's numbers, and its runtime."""
    from .results import format_value
    lines = [f"# Course run ({profile} profile)", "",
             "| notebook | metric | this run | paper | runtime (min) |", "|---|---|---:|---:|---:|"]
    for r in results:
        nb = next(n for n in CATALOGUE if n.stem == r["notebook"])
        names = [m for m in nb.headline if m in r["metrics"]] or list(r["metrics"])[:4]
        for i, m in enumerate(names):
            first = i == 0
            runtime = f"{r['wall_s'] / 60:.1f}" if first else ""
            lines.append(f"| {nb.stem if first else ''} | {m} | {format_value(r['metrics'][m])} | {format_value(r['paper'].get(m))} | "
                         f"{runtime} |")
    return "\n".join(lines) + "\n"


def _list() -> str:
    rows = [f"{'id':<3} {'notebook':<34} {'arXiv':<11} {'data':<36} {'quick (min)':>11}  GPU",
            "-" * 110]
    for nb in CATALOGUE:
        runtime = "not written" if not nb.exists else ("?" if nb.quick_minutes is None else f"{nb.quick_minutes:.1f}")
        rows.append(f"{nb.id:<3} {nb.stem:<34} {nb.arxiv or '-':<11} {nb.data:<36} {runtime:>11}  {nb.gpu}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vklib.course", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the table of notebooks")
    run = sub.add_parser("run", help="execute notebooks through papermill")
    run.add_argument("--profile", default="quick", help="quick (CPU, minutes) or paper (GPU, full data)")
    run.add_argument("--only", nargs="+", metavar="ID", help="notebook ids or stems (default: all)")
    run.add_argument("--out", default="runs", help="output folder (default: runs)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a notebook parameter (repeatable)")
    run.add_argument("--store", action="store_true", help="copy the executed outputs back into notebooks/")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        print(_list())
        return 0
    try:
        if args.profile not in PROFILE_NAMES:
            raise ValueError(f"unknown profile {args.profile!r}; allowed: {', '.join(PROFILE_NAMES)}")
        chosen = [find(k) for k in args.only] if args.only else available()
        params = parse_params(args.param)
    except ValueError as e:
        parser.error(str(e))
    out = Path(args.out)
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
    (out / "summary.md").write_text(summary_markdown(results, args.profile))
    print(f"summary: {out / 'summary.md'}")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
