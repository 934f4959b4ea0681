"""``recbole-qrec sweep``: a grid with failing points finishes, a killed sweep resumes without repeating finished
trials (with two workers cooperating on its storage, one per GPU of --gpus), best.yaml reproduces the best trial,
and a bad sweep YAML is one error line."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import built_once

from recbole_qrec.cli import main
from recbole_qrec.sweep import find_spec_file, load_spec, plan_targets

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "epochs": 1, "train_batch_size": 256,
        "use_gpu": False, "show_progress": False, "allow_data_mismatch": True}
# hidden_size 15 is not a multiple of SASRec's 2 heads: trials 2 and 3 fail when the config is checked.
GRID = {"hidden_size": [16, 15], "learning_rate": [0.001, 0.003]}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per run on a shared CPU (one_thread in this process)

pytestmark = pytest.mark.usefixtures("one_thread")


def write_spec(path: Path, data_path: Path, **changes: object) -> Path:
    fixed = {key: value for key, value in TINY.items() if key not in GRID}
    spec = {"model": "SASRec", "dataset": "Instruments", "fixed": {**fixed, "data_path": str(data_path)},
            "space": GRID, "algorithm": "grid", "seeds": [2020], **changes}
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def sweep_process(spec: Path, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recbole_qrec", "sweep", str(spec), "--out", str(out), *args],
                            cwd=out.parent, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def records(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is process ``pid`` (from Linux's /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended while it was read
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


@pytest.fixture(scope="module")
def sweep_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The grid swept once, interrupted (SIGINT to its process group, as Ctrl-C) as trial 1 starts, then resumed
    with two workers spread over GPUs 0 and 1 (``--gpus``; the runs stay on the CPU: use_gpu is False). One sweep per
    test session: the tests only read it (or copy it first)."""
    return built_once(tmp_path_factory, "sweep_run",
                      lambda: sweep_once(request.getfixturevalue("work"), tmp_path_factory))


def sweep_once(work: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("sweep")
    spec, out = write_spec(folder / "grid.yaml", work / "dataset"), folder / "out"
    out.mkdir()
    first = sweep_process(spec, out)
    deadline = time.time() + 120
    while not (records(out) and (out / "SASRec-Instruments" / "trials" / "1.log").is_file()):
        assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "timed out"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGINT)
    _, interrupted = first.communicate(timeout=120)
    before = records(out)
    report = (out / "SASRec-Instruments" / "sweep.md").read_text(encoding="utf-8")  # written on the way out
    shutil.copytree(out, folder / "interrupted")
    resumed = sweep_process(spec, out, "--parallel", "2", "--gpus", "0,1")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    return {"spec": spec, "out": out, "interrupted_out": folder / "interrupted", "before": before,
            "after": records(out),
            "interrupted": (first.returncode, interrupted, report),
            "resumed_lines": [line for line in stdout.splitlines() if line.startswith("[")]}


def test_killed_sweep_resumes_without_repeating_finished_trials(sweep_run: dict) -> None:
    before, after = sweep_run["before"], sweep_run["after"]
    assert [r["tags"]["trial"] for r in before] == [0]  # interrupted while trial 1 ran
    returncode, stderr, report = sweep_run["interrupted"]
    assert returncode == 130 and "error: interrupted" in stderr
    assert report.count("\n| ") == 2  # the interrupted sweep reported its one finished trial: header and trial 0
    assert sorted(r["tags"]["trial"] for r in after) == [0, 1]  # each completed trial recorded once
    assert after[0] == before[0]
    assert {r["tags"]["sweep"] for r in after} == {load_spec(sweep_run["spec"]).id}
    # The resumed sweep ran trial 1 again (its run had been killed) and the two failing points, nothing else.
    assert sorted(line.split(" trial ")[1].split(":")[0] for line in sweep_run["resumed_lines"]) == ["1", "2", "3"]


def test_a_stopped_sweep_stops_its_runs_and_leaves_no_checkpoint_or_record(work: Path, tmp_path: Path) -> None:
    """SIGTERM (``kill``, a job scheduler's stop) reaches the sweep process alone; it passes it on to its runs, which
    would otherwise train for 500 epochs."""
    spec = write_spec(tmp_path / "grid.yaml", work / "dataset", space={"learning_rate": [0.001, 0.003]},
                      fixed={**TINY, "data_path": str(work / "dataset"), "epochs": 500, "stopping_step": 500})
    out = tmp_path / "out"
    out.mkdir()
    sweep = sweep_process(spec, out, "--parallel", "2")
    runs: list[int] = []
    try:
        deadline = time.time() + 300
        while len(list(out.glob("SASRec-Instruments/saved/*/*.pth"))) < 2:
            assert sweep.poll() is None and time.time() < deadline, sweep.stderr.read() if sweep.poll() else "timed out"
            time.sleep(0.2)
        runs = child_pids(sweep.pid)
        assert len(runs) == 2
        sweep.send_signal(signal.SIGTERM)
        _, stderr = sweep.communicate(timeout=120)  # it returns once its runs have ended
        assert not [pid for pid in runs if Path(f"/proc/{pid}").exists()]
    finally:
        for pid in [sweep.pid, *runs]:  # what is left, should the sweep not have stopped its runs
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert sweep.returncode == 143 and stderr.splitlines()[-1].startswith("error: interrupted — "), stderr
    assert not list(out.glob("SASRec-Instruments/saved/*/*.pth")) and not records(out)


def test_gpus_spread_the_workers_trials_over_the_gpus(sweep_run: dict) -> None:
    trials = sweep_run["out"] / "SASRec-Instruments" / "trials"
    gpu_ids = {n: re.findall(r" --gpu_id=(\S+)", (trials / f"{n}.log").read_text(encoding="utf-8")) for n in range(4)}
    assert gpu_ids[0] == []  # run before the sweep was resumed with --gpus
    assert all(len(gpu_ids[n]) == 1 for n in (1, 2, 3))  # one run (seed) each, on its worker's GPU
    assert {gpu_ids[n][0] for n in (1, 2, 3)} == {"0", "1"}  # both workers took trials


def test_grid_reports_rank_trials_and_keep_failures(sweep_run: dict) -> None:
    folder = sweep_run["out"] / "SASRec-Instruments"
    rows = list(csv.DictReader((folder / "sweep.csv").open(encoding="utf-8")))
    assert sorted(int(row["trial"]) for row in rows) == [0, 1, 2, 3]
    completed = {r["tags"]["trial"]: r for r in sweep_run["after"]}
    ranked = [row for row in rows if row["rank"]]
    assert [int(row["trial"]) for row in ranked] == sorted(completed, key=lambda n: -completed[n]["valid"]["ndcg@10"])
    for row in ranked:
        record = completed[int(row["trial"])]
        assert float(row["valid NDCG@10"]) == record["valid"]["ndcg@10"]
        assert float(row["test HR@10"]) == record["test"]["hit@10"]
    failed = [row for row in rows if not row["rank"]]
    assert [row["hidden_size"] for row in failed] == ["15", "15"]
    assert all("hidden_size (15) is not a multiple of n_heads (2)" in row["error"] for row in failed)
    assert (folder / "sweep.md").read_text(encoding="utf-8").count("\n| ") == 5  # header and 4 trials
    assert (folder / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_yaml_reproduces_the_best_trial(sweep_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = sweep_run["out"] / "SASRec-Instruments"
    best = json.loads((folder / "best.json").read_text(encoding="utf-8"))
    record = next(r for r in sweep_run["after"] if r["tags"]["trial"] == best["trial"])
    assert best["test"] == record["test"]
    assert yaml.safe_load((folder / "best.yaml").read_text(encoding="utf-8")) == {
        **{k: v for k, v in TINY.items() if k not in GRID}, "data_path": best["settings"]["data_path"],
        **best["params"], "seed": 2020}
    monkeypatch.chdir(tmp_path)
    main(["--model=SASRec", "--dataset=Instruments", "--config_files", str(folder / "best.yaml"),
          f"--results_dir={tmp_path}", f"--checkpoint_dir={tmp_path / 'saved'}"])
    (again,) = records(tmp_path)
    assert again["valid"] == record["valid"] and again["config_hash"] == record["config_hash"]


@pytest.mark.parametrize("name, trials", [("SASRec", 40), ("QBert4Rec", 24), ("TIGER", 24), ("MQL4GRec", 24)])
def test_shipped_examples_are_valid_sweeps(name, trials) -> None:
    spec = load_spec(find_spec_file(f"{name}.yaml"))
    (target,) = plan_targets(spec)  # every fixed and searched value checked against the model's config
    assert (spec.algorithm, target.model, target.metric, target.bigger, target.budget) == ("tpe", name, "ndcg@10", True,
                                                                                          trials)


@pytest.mark.parametrize("change, message", [
    ({"trails": 4}, "unknown key 'trails' (did you mean 'trials'?)"),
    ({"space": {"hidden_size": {"choise": [16, 32]}}}, "unknown kind 'choise' (did you mean 'choice'?)"),
    ({"space": {"learning_rate": {"loguniform": [0, 0.1]}}}, "loguniform needs [low, high] numbers with low < high and"),
    ({"space": {"hidden_size": []}}, "choice needs a non-empty list"),
    ({"space": {"dropout_prob": {"uniform": [0.1, 0.5]}}}, "a grid needs listed values"),
    ({"algorithm": "tpe"}, "algorithm tpe needs a budget"),
    ({"space": {"learing_rate": [0.1]}}, "did you mean 'learning_rate'?"),
    ({"space": {"hidden_size": [16, 0]}}, "space.hidden_size: hidden_size must be"),
    ({"metric": "ndcg@20"}, "ndcg@20 is not computed by the runs"),
    ({"fixed": {"seed": 1}}, "seed is set by the sweep for every run"),
    ({"fixed": {"gpu_id": "1"}}, "sets gpu_id and --gpus is given"),
])
def test_bad_sweep_yaml_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict,
                                          message: str) -> None:
    spec = write_spec(tmp_path / "bad.yaml", tmp_path, **change)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--gpus", "0,1"])
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0]
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_run_command_line_takes_sweep_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--sweep", str(tmp_path / "missing.yaml")])
    (line,) = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and line.startswith("error: sweep file ") and "SASRec.yaml" in line


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[:-40], "ends in a cut-off line"),  # a sweep killed while it wrote its last entry
    (lambda text: "garbage {\n" + text, "line 1 is not an optuna journal entry (damaged)"),
])
def test_damaged_journal_is_one_error_line(sweep_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           damage, message: str) -> None:
    """optuna stopped with 'unexpected JSONDecodeError' (exit 1), and appended to a cut-off line first."""
    out = tmp_path / "out"
    shutil.copytree(sweep_run["out"], out)
    journal = out / "optuna.journal"
    journal.write_text(damage(journal.read_text(encoding="utf-8")), encoding="utf-8")
    before = journal.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(sweep_run["spec"]), "--out", str(out), "--trials", "6"])
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {journal} ")
    assert message in lines[0] and " — " in lines[0] and journal.read_bytes() == before


def test_report_writes_the_reports_and_runs_no_trial(sweep_run: dict, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The interrupted sweep (trial 0 finished, trial 1 stopped, two to go; resumed, it ran three trials): --report
    writes the reports of the trials there and runs none."""
    out = tmp_path / "out"
    shutil.copytree(sweep_run["interrupted_out"], out)
    folder = out / "SASRec-Instruments"
    (folder / "sweep.md").unlink()
    journal, results = (out / "optuna.journal").read_bytes(), (out / "results.jsonl").read_bytes()
    main(["sweep", str(sweep_run["spec"]), "--out", str(out), "--report"])
    assert (out / "optuna.journal").read_bytes() == journal and (out / "results.jsonl").read_bytes() == results
    report = (folder / "sweep.md").read_text(encoding="utf-8")
    trials = [row["trial"] for row in csv.DictReader((folder / "sweep.csv").open(encoding="utf-8"))]
    # trial 0 finished; trial 1, killed with the sweep, is left running (or failed, if its end beat the Ctrl-C)
    assert trials[0] == "0" and len(trials) <= 2 and f"{len(trials)} of 4 trials finished" in report
    assert report.count("\n| ") == 1 + len(trials)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(sweep_run["spec"]), "--out", str(tmp_path / "empty"), "--report"])
    line = capsys.readouterr().err.splitlines()[-1]
    assert exit_info.value.code == 2 and "holds no sweep to report (no optuna.journal)" in line
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("out", ["afile", "afile/sub"])
def test_out_that_is_a_file_is_one_error_line(out: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    spec = write_spec(tmp_path / "grid.yaml", tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(spec), "--out", str(tmp_path / out)])
    (line,) = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and "afile is a file, not a folder — give --out a folder" in line
