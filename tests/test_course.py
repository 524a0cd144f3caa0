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
    assert "unknown profile 'slow'; allowed: quick, paper" in capsys.readouterr().err
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
