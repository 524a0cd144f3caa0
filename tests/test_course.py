"""The course catalogue, its CLI's errors, the summary, and the environment files."""
import re
from pathlib import Path

import pytest
import yaml

from vklib import course

ROOT = Path(__file__).resolve().parent.parent


def test_catalogue_names_follow_the_convention():
    assert [nb.id for nb in course.CATALOGUE] == [f"{i:02d}" for i in range(11)]
    for nb in course.CATALOGUE:
        assert nb.stem.startswith(nb.id + "_") and nb.headline
    assert course.find("00").stem == "00_course_tour" and course.find("0") is course.find("00_course_tour")
    for nb in course.available():
        assert nb.quick_minutes is not None, f"{nb.stem}: record its measured quick runtime in the catalogue"


def test_unknown_notebook_profile_and_parameter(capsys):
    with pytest.raises(ValueError, match="unknown notebook '99'; available: 00"):
        course.find("99")
    with pytest.raises(SystemExit):
        course.main(["run", "--only", "99"])
    assert "unknown notebook '99'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        course.main(["run", "--profile", "slow", "--only", "00"])
    assert "unknown profile 'slow'; allowed: quick, paper, smoke" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has no parameter.*epoch\\b.*its parameters: profile, seed"):
        course.execute(course.find("00"), params={"epoch": 3})
    with pytest.raises(ValueError, match="unknown profile"):
        course.execute(course.find("00"), profile="slow")
    with pytest.raises(ValueError, match="name=value"):
        course.parse_params(["seed"])
    assert course.parse_params(["seed=1", "name=cifar10", "ks=[1, 2]"]) == {"seed": 1, "name": "cifar10",
                                                                           "ks": [1, 2]}


def test_list_shows_every_notebook(capsys):
    assert course.main(["list"]) == 0
    out = capsys.readouterr().out
    for nb in course.CATALOGUE:
        assert nb.stem in out


def test_summary_table():
    result = {"notebook": "00_course_tour", "metrics": {"tour_convnet_acc": 0.95, "tour_datasets": 9},
              "paper": {}, "wall_s": 18.0}
    text = course.summary_markdown([result], "quick")
    assert "| 00_course_tour | tour_convnet_acc | 0.95 |  | 0.3 |" in text


def test_environment_yml_installs_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-r requirements.txt" in pip_section and "-e ." in pip_section
    reqs = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", r) for r in reqs), "every requirement is pinned"
    names = {r.split("==")[0].lower() for r in reqs}
    assert {"torch", "torchvision", "papermill", "nbval", "jupyterlab", "pytest"} <= names


def test_readme_table_lists_every_notebook_with_its_runtime():
    readme = (ROOT / "README.md").read_text()
    for nb in course.available():
        row = next((ln for ln in readme.splitlines() if f"{nb.stem}.ipynb" in ln and ln.startswith("|")), None)
        assert row is not None, f"README's method table lacks {nb.stem}"
        assert f"{nb.quick_minutes:.1f}" in row, f"README's row for {nb.stem} shows another quick runtime"


def _cli(capsys, *argv):
    """Run the CLI; return (exit code, stderr)."""
    try:
        code = course.main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_runner_parameters_are_refused_inside_p(capsys, tmp_path):
    code, err = _cli(capsys, "run", "--only", "00", "-p", "profile=paper", "--out", str(tmp_path))
    assert code == 2 and "parameter profile is set with --profile, not with -p profile=..." in err
    code, err = _cli(capsys, "run", "--only", "00", "-p", f"results_dir={tmp_path}")
    assert code == 2 and "parameter results_dir is set with --out" in err
    assert not any(tmp_path.iterdir()), "nothing may run or be written"


def test_store_keeps_only_quick_outputs(capsys, tmp_path):
    code, err = _cli(capsys, "run", "--only", "00", "--profile", "smoke", "--store", "--out", str(tmp_path / "o"))
    assert code == 2 and "--store keeps the quick profile's outputs in notebooks/, not the smoke profile's" in err
    assert not (tmp_path / "o").exists()


def test_unknown_parameter_is_one_line_before_anything_runs(capsys, tmp_path):
    out = tmp_path / "new"
    code, err = _cli(capsys, "run", "--only", "00", "03", "-p", "nosuchparam=1", "--out", str(out))
    assert code == 2 and "Traceback" not in err and "has no parameter(s) nosuchparam" in err
    assert not out.exists(), "the out folder is not created when the arguments are wrong"


def test_unwritable_out_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _cli(capsys, "run", "--only", "00", "--out", str(blocker / "sub"))
    assert code == 2 and "Traceback" not in err and f"--out {blocker / 'sub'}: cannot write there" in err


def test_tuples_become_lists_and_untranslatable_literals_are_refused():
    assert course.parse_params(["images=('house', 'starfish')", "k=((1, 2), 3)", "d={'a': (1,)}"]) == {
        "images": ["house", "starfish"], "k": [[1, 2], 3], "d": {"a": [1]}}
    with pytest.raises(ValueError, match="parameter s: a set cannot be passed to a notebook"):
        course.parse_params(["s={1, 2}"])


def test_summary_lists_failures_and_keeps_other_notebooks(tmp_path):
    import json
    old = {"notebook": "03_deep_image_kernel_priors", "profile": "quick", "metrics": {"psnr_blurred": 18.3},
           "paper": {}, "wall_s": 48.0}
    (tmp_path / "03_deep_image_kernel_priors.json").write_text(json.dumps(old))
    (tmp_path / "07_normgrad_saliency.json").write_text(json.dumps({**old, "notebook": "07_normgrad_saliency",
                                                                    "profile": "paper"}))
    fresh = {"notebook": "00_course_tour", "profile": "quick", "metrics": {"tour_convnet_acc": 0.95}, "paper": {},
             "wall_s": 12.0}
    rows = course._collect_results(tmp_path, "quick", [fresh], failed=["01_dataset_condensation"])
    text = course.summary_markdown(rows, "quick", failed=["01_dataset_condensation"])
    assert "| 00_course_tour | tour_convnet_acc | 0.95 |  | 0.2 |" in text
    assert "| 01_dataset_condensation | FAILED | | | |" in text
    assert "| 03_deep_image_kernel_priors | psnr_blurred | 18.3 |  | 0.8 |" in text
    assert "07_normgrad_saliency" not in text, "another profile's results are not mixed in"


def test_a_failed_run_leaves_no_earlier_results(tmp_path, monkeypatch):
    """execute() removes the notebook's previous JSON and artifacts before it runs."""
    import papermill
    stale = [tmp_path / "00_course_tour.json", tmp_path / "00_course_tour.convnet.pt"]
    for f in stale:
        f.write_text("{}")

    def fail(*a, **k):
        raise papermill.PapermillExecutionError(3, 3, "ValueError", "boom", "ValueError: boom", [])
    monkeypatch.setattr(papermill, "execute_notebook", fail)
    with pytest.raises(course.NotebookFailed, match="failed in cell 3"):
        course.execute(course.find("00"), out=tmp_path)
    assert not any(f.exists() for f in stale)


def test_widget_text_gives_the_final_look():
    state = {"bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]}},
             "l": {"model_name": "HTMLModel", "state": {"value": "condense:\u2007100%"}},
             "p": {"model_name": "FloatProgressModel", "state": {"value": 150.0, "max": 150.0, "min": 0.0}},
             "r": {"model_name": "HTMLModel", "state": {"value": "\u2007150/150\u2007[00:03&lt;00:00]"}},
             "box": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_s"]}},
             "s": {"model_name": "SelectionSliderModel", "state": {"description": "iteration"}}}
    assert course.widget_text("bar", state) == "condense: 100%|\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588| 150/150 [00:03<00:00]"
    assert course.widget_text("box", state).startswith("[interactive controls: iteration;")
    state["l"]["state"]["value"], state["r"]["state"]["value"] = "grid:\u2007", "\u20070/0\u2007[00:00&lt;?,\u2007?it/s]"
    state["p"]["state"].update(value=0.0, max=1.0)
    assert course.widget_text("bar", state) == "grid: 0/0 (nothing to iterate over)"


@pytest.mark.parametrize("nb", course.available(), ids=lambda nb: nb.id)
def test_stored_notebooks_show_no_dead_widgets(nb):
    """Stored outputs render as they looked when run: no widget repr text, no frozen 0% progress line."""
    import nbformat
    book = nbformat.read(str(nb.path), as_version=4)
    for cell in book.cells:
        for o in cell.get("outputs", []):
            text = "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
            assert "HBox(children=" not in text and "VBox(children=" not in text, f"cell {cell.id}: {text[:80]}"
            assert not re.search(r"(^|\s)0%\|", text), f"cell {cell.id} stores a 0% progress line: {text[:80]}"


def test_solution_loads_the_worked_solutions_file(tmp_path, monkeypatch):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "99_demo.py").write_text("def answer():\n    return 42\n")
    monkeypatch.setattr(course, "NOTEBOOKS_DIR", tmp_path)
    assert course.solution("99_demo").answer() == 42
    with pytest.raises(FileNotFoundError, match=r"no worked solutions for 98_demo: expected .*98_demo\.py"):
        course.solution("98_demo")
