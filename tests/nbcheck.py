"""Compare the cells marked ``# NBVAL_CHECK_OUTPUT`` of an executed notebook with the outputs stored in the
committed notebook, after the substitutions of ``nbval_sanitize.cfg`` (nbval's format and semantics for text); and
run one code cell of a notebook on its own (:func:`run_cell`, e.g. to test its visible ``PROFILES``)."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

import nbformat

MARK = "# NBVAL_CHECK_OUTPUT"
SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")


def _substitutions() -> list[tuple[re.Pattern, str]]:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(SANITIZE)
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]


def _text(outputs) -> str:
    parts = []
    for o in outputs:
        if o.output_type == "stream" and o.name == "stdout":
            parts.append(o.text)
        elif o.output_type in ("execute_result", "display_data") and "text/plain" in o.get("data", {}):
            if "image/png" not in o.data:
                parts.append(o.data["text/plain"])
        elif o.output_type == "error":
            parts.append(f"{o.ename}: {o.evalue}")
    text = "".join(parts)
    for rx, rep in _substitutions():
        text = rx.sub(rep, text)
    return text.strip()


def checked_cells(path: Path) -> list:
    nb = nbformat.read(str(path), as_version=4)
    return [c for c in nb.cells if c.cell_type == "code" and c.source.lstrip().startswith(MARK)]


def compare(stored: Path, executed: Path) -> list[str]:
    """Differences between the marked cells of ``stored`` and their executed counterparts (empty if none)."""
    ran = {c.get("id"): c for c in nbformat.read(str(executed), as_version=4).cells}
    problems = []
    for cell in checked_cells(stored):
        want = _text(cell.outputs)
        if not want:
            problems.append(f"cell {cell.get('id')} is marked {MARK} but has no stored output; store it with "
                            f"`python -m vklib.course run --only <id> --store`")
            continue
        got_cell = ran.get(cell.get("id"))
        got = _text(got_cell.outputs) if got_cell is not None else "<cell missing>"
        if got != want:
            problems.append(f"cell {cell.get('id')} ({cell.source.splitlines()[1:2]}):\n--- stored\n{want}\n"
                            f"--- executed\n{got}")
    return problems


def run_cell(path: Path, start: str, *, stop: str | None = None, scope: dict | None = None) -> dict:
    """The names defined by the code cell of the notebook at ``path`` whose source starts with ``start`` (leading
    whitespace ignored), executed on its own up to the first occurrence of ``stop`` (the whole cell if ``None``), in
    ``scope`` (a new dict if ``None``)."""
    book = nbformat.read(str(path), as_version=4)
    source = next(c.source for c in book.cells if c.cell_type == "code" and c.source.lstrip().startswith(start))
    scope = {} if scope is None else scope
    exec(source if stop is None else source[:source.index(stop)], scope)
    return scope
