"""Sweeps (vklib.sweep, ``python -m vklib.course sweep|collect``): the grid, a real local sweep of the tour, the Slurm
job array submitit builds (submitted to a stand-in ``sbatch``), and the collected table and figure."""
from __future__ import annotations

import csv
import json
import os
import statistics

import pytest

from vklib import course, sweep


def _cli(capsys, *argv):
    try:
        code = course.main(list(argv))
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_grid_is_the_product_of_top_level_lists():
    grid = sweep.parse_grid(["seed=0,1,2", "dataset=mnist,svhn", "ks=[1, 2]", "pairs=[1,2],[3]", "lr=1e-3"])
    assert grid == {"seed": [0, 1, 2], "dataset": ["mnist", "svhn"], "ks": [[1, 2]], "pairs": [[1, 2], [3]],
                    "lr": [0.001]}
    pts = sweep.points(grid)
    assert len(pts) == 3 * 2 * 1 * 2 * 1 and pts[0] == {"seed": 0, "dataset": "mnist", "ks": [1, 2], "pairs": [1, 2],
                                                        "lr": 0.001}
    assert sweep.point_folder(course.NOTEBOOKS_DIR, course.find("01"), {"seed": 1, "ks": [1, 2]}).name == "seed-1_ks-1-2"
    for bad, msg in ((["seed"], "name=value"), (["seed=0,,1"], "empty value"), (["profile=paper"], "--profile"),
                     (["seed=0", "seed=1"], "given twice")):
        with pytest.raises(ValueError, match=msg):
            sweep.parse_grid(bad)


def test_sweep_refuses_bad_input_before_anything_runs(capsys, tmp_path):
    out = tmp_path / "s"
    for argv, msg in ((["-p", "nosuch=1,2"], "has no parameter(s) nosuch"),
                      (["--profile", "slow"], "unknown profile 'slow'"),
                      (["--executor", "pbs"], "--executor must be one of local, slurm"),
                      (["--dry-run"], "--dry-run writes the Slurm script; it needs --executor slurm"),
                      (["--slurm-partition", "gpu"], "are for --executor slurm"),
                      (["--max-parallel", "0"], "--max-parallel must be an int >= 1")):
        code, _, err = _cli(capsys, "sweep", "--only", "00", "--out", str(out), *argv)
        assert code == 2 and msg in err and "Traceback" not in err, (argv, err)
    assert not out.exists(), "nothing is created when the arguments are wrong"


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``srun`` and ``sbatch`` stand-ins on PATH: sbatch keeps the script it is given and answers with a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sbatch\necho 'Submitted batch job 4242'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "submitted.sbatch"


def test_slurm_sweep_is_one_submitit_job_array(capsys, tmp_path, fake_slurm):
    out = tmp_path / "sweep"
    code, stdout, err = _cli(capsys, "sweep", "--only", "01", "-p", "seed=0,1,2", "-p", "ipc=1,10", "--executor", "slurm",
                             "--slurm-partition", "gpu", "--gpus-per-job", "1", "--cpus-per-job", "8", "--mem-gb", "32",
                             "--timeout-min", "240", "--max-parallel", "3", "--out", str(out))
    assert code == 0, err
    script = fake_slurm.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=240",
                 "#SBATCH --array=0-5%3", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB",
                 "-m submitit.core._submit"):
        assert line in script, line
    assert "Slurm job array 4242" in stdout
    folders = sorted(p.parent.name for p in out.glob("01_dataset_condensation/*/point.json"))
    assert folders == sorted(f"seed-{s}_ipc-{i}" for s in range(3) for i in (1, 10))
    point = json.loads((out / "01_dataset_condensation" / "seed-2_ipc-10" / "point.json").read_text())
    assert point == {"notebook": "01_dataset_condensation", "profile": "quick", "params": {"seed": 2, "ipc": 10}}
    pickles = sorted((out / ".submitit").glob("4242_*_submitted.pkl"))
    assert len(pickles) == 6, "one pickled call per array task"
    import pickle
    call = pickle.loads(pickles[-1].read_bytes())  # task 5: the last point
    assert call.function is sweep.run_point and call.args == (
        "01_dataset_condensation", "quick", str(out.resolve() / "01_dataset_condensation" / "seed-2_ipc-10"),
        {"seed": 2, "ipc": 10})
    # --dry-run writes the same script and submits nothing
    fake_slurm.unlink()
    code, stdout, _ = _cli(capsys, "sweep", "--only", "01", "-p", "seed=0,1", "--executor", "slurm", "--dry-run",
                           "--slurm-partition", "gpu", "--timeout-min", "30", "--out", str(tmp_path / "dry"))
    text = (tmp_path / "dry" / "sweep.sbatch").read_text()
    assert code == 0 and "#SBATCH --array=0-1%2" in text and "#SBATCH --time=30" in text and not fake_slurm.exists()


@pytest.mark.notebook
def test_local_sweep_runs_points_as_processes_and_collects(capsys, tmp_path):
    out = tmp_path / "sweep"
    code, stdout, err = _cli(capsys, "sweep", "--only", "00", "-p", "seed=0,1", "--max-parallel", "2",
                             "--out", str(out))
    assert code == 0, stdout + err
    jobs = {p.name.split("_")[0] for p in (out / ".submitit").glob("*_0_result.pkl")}  # <pid>_0_result.pkl
    assert len(jobs) == 2 and str(os.getpid()) not in jobs, "two separate processes, each with its result"
    results = {s: json.loads((out / "00_course_tour" / f"seed-{s}" / "00_course_tour.json").read_text())
               for s in (0, 1)}
    assert [r["seed"] for r in results.values()] == [0, 1]
    code, stdout, _ = _cli(capsys, "sweep", "--only", "00", "-p", "seed=0,1", "--resume", "--out", str(out))
    assert code == 0 and "nothing to run" in stdout
    code, _, err = _cli(capsys, "sweep", "--only", "00", "-p", "seed=0,1", "--out", str(out))
    assert code == 2 and "already holds results; pass --resume" in err

    assert _cli(capsys, "collect", str(out))[0] == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [int(r["seed"]) for r in rows] == [0, 1]
    for r in rows:
        assert float(r["tour_convnet_acc"]) == pytest.approx(results[int(r["seed"])]["metrics"]["tour_convnet_acc"])
    accs = [results[s]["metrics"]["tour_convnet_acc"] for s in (0, 1)]
    table = (out / "sweep.md").read_text()
    assert (f"| 00_course_tour | (seeds only) | tour_convnet_acc | {statistics.fmean(accs):.4g} | "
            f"{statistics.stdev(accs):.2g} | 2 |") in table


def _fake_point(out, stem, params, metrics):
    folder = sweep.point_folder(out, course.find(stem), params)
    folder.mkdir(parents=True)
    (folder / "point.json").write_text(json.dumps({"notebook": stem, "profile": "quick", "params": params}))
    if metrics is not None:
        (folder / f"{stem}.json").write_text(json.dumps({"metrics": metrics}))


def test_collect_summarises_settings_over_seeds_and_draws_the_varying_parameter(capsys, tmp_path):
    for ipc, base in ((1, 0.80), (10, 0.90)):
        for seed in (0, 1, 2):
            _fake_point(tmp_path, "01_dataset_condensation", {"seed": seed, "ipc": ipc},
                        {"acc_dc": base + 0.01 * seed, "acc_random": base - 0.2})
    _fake_point(tmp_path, "01_dataset_condensation", {"seed": 3, "ipc": 10}, None)  # a failed point
    got = sweep.collect(tmp_path, log=lambda *a: None)
    assert len(got["rows"]) == 6 and [p.name for p in got["missing"]] == ["seed-3_ipc-10"]
    stats = {s["setting"]["ipc"]: s["stats"] for s in got["summary"]}
    assert stats[10]["acc_dc"][0] == pytest.approx(0.91) and stats[10]["acc_dc"][1] == pytest.approx(0.01)
    assert stats[1]["acc_random"] == (pytest.approx(0.6), 0.0, 3)
    assert got["figures"] == [tmp_path / "01_dataset_condensation.png"] and got["figures"][0].stat().st_size > 1000
    assert "seed-3_ipc-10" in (tmp_path / "sweep.md").read_text()
    code, _, err = _cli(capsys, "collect", str(tmp_path / "nothing"))
    assert code == 2 and "no such sweep folder" in err
