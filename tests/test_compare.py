"""``recbole-qrec compare``: a grid of tiny runs through the entry point on the 500-user Instruments subset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recbole_qrec.cli import main
from recbole_qrec.compare import plan

TINY = ["--hidden_size=16", "--embedding_size=16", "--inner_size=32", "--n_layers=1", "--n_heads=1", "--epochs=1",
        "--train_batch_size=256", "--eval_batch_size=256", "--use_gpu=False", "--allow_data_mismatch"]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def compare(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``recbole-qrec compare ARGS``."""
    try:
        main(["compare", *args])
        status = 0
    except SystemExit as exit_info:
        status = exit_info.code
    out, err = capsys.readouterr()
    return status, out, err


def md_cell(md: str, model: str, column: str) -> str:
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]
    return dict(zip(rows[0], next(row for row in rows if row[0] == model)))[column]


def test_grid_keeps_good_runs_skips_recorded_ones_and_reruns(work: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the runs' log/ and saved/
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny runs on a shared CPU
    results, prefix = tmp_path / "results", tmp_path / "out" / "grid"
    grid = ["--datasets", "Instruments", "--results-dir", str(results), "--format", "md,csv", "--out", str(prefix),
            f"--data_path={work / 'dataset'}", *TINY]

    status, md, err = compare(["--models", "GRU4Rec", "SASRec", "SASRrec", "--parallel", "2", *grid], capsys)
    assert status == 2, err
    records = lines(results / "results.jsonl")
    assert sorted(r["model"] for r in records) == ["GRU4Rec", "SASRec"]
    assert len({r["tags"]["compare"] for r in records}) == 1 and all(len(r["valid_curve"]) == 1 for r in records)
    for r in records:
        assert f"] {r['model']} Instruments seed 2020: test ndcg@10 {r['test']['ndcg@10']:.4f}, " in err
        assert md_cell(md, r["model"], "Instruments NDCG@10").strip("*<u>/") == f"{r['test']['ndcg@10']:.4f}"
    assert "SASRrec Instruments: FAILED error: " in err and "did you mean 'SASRec'" in err
    assert "failed runs (1 of 3):" in err and err.splitlines()[-1].startswith("error: 1 of 3 runs failed")
    assert prefix.with_suffix(".md").read_text(encoding="utf-8") == md and prefix.with_suffix(".csv").is_file()

    status, md_again, err = compare(["--models", "GRU4Rec", "SASRec", "SASRrec", *grid], capsys)
    assert status == 2 and "3 runs, 2 already recorded (skipped), 0 to run" in err
    assert lines(results / "results.jsonl") == records
    assert without_command(md_again) == without_command(md) and "Command: `recbole-qrec compare --models" in md

    status, _, err = compare(["--models", "GRU4Rec", "--rerun", *grid], capsys)
    assert status == 0, err
    rerun = lines(results / "results.jsonl")
    assert len(rerun) == 3 and rerun[:2] == records and rerun[2]["model"] == "GRU4Rec"
    first = next(r for r in records if r["model"] == "GRU4Rec")
    assert rerun[2]["config_hash"] == first["config_hash"] and rerun[2]["tags"] != first["tags"]


def test_continue_resumes_budget_stopped_runs_from_their_checkpoints(work: Path, tmp_path: Path, capsys,
                                                                    monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results = tmp_path / "results"
    # A budget spent within the first epoch: each call trains one more epoch, then stops at the budget.
    grid = ["--models", "SASRec", "--datasets", "Instruments", "--results-dir", str(results),
            f"--data_path={work / 'dataset'}", *[arg for arg in TINY if arg != "--epochs=1"], "--epochs=5",
            "--train_time_limit=0.01"]
    status, _, err = compare(grid, capsys)
    assert status == 0, err
    (first,) = lines(results / "results.jsonl")
    assert first["train_time_limit_reached"] and first["resumed_from"] is None and len(first["valid_curve"]) == 1

    previous = first  # (without --continue the recorded run is skipped: test_grid_keeps_good_runs_skips_recorded_ones)
    for trained in (2, 3):  # continued twice, each time from the last state the call before left
        state = torch.load(previous["resume_checkpoint"], weights_only=True)
        assert (state["epoch"], state["best_checkpoint"]) == (trained - 2, first["checkpoint"])
        status, _, err = compare([*grid, "--continue"], capsys)
        assert status == 0 and "1 to run (1 continued from their budget-stopped checkpoints)" in err, err
        latest = lines(results / "results.jsonl")[-1]
        assert latest["resumed_from"] == previous["resume_checkpoint"] and latest["config_hash"] == first["config_hash"]
        # the next epoch after the last one trained, the curve of every call, the best model in the first file
        assert [point["epoch"] for point in latest["valid_curve"]] == list(range(trained))
        assert latest["epochs"] == trained and latest["checkpoint"] == first["checkpoint"]
        assert latest["best_valid_score"] == max(point["ndcg@10"] for point in latest["valid_curve"])
        previous = latest

    Path(previous["resume_checkpoint"]).unlink()  # its last state gone: carried on from its best checkpoint
    status, _, err = compare([*grid, "--continue"], capsys)
    assert status == 0 and "(1 continued from their budget-stopped checkpoints)" in err, err
    previous = lines(results / "results.jsonl")[-1]
    assert previous["resumed_from"] == first["checkpoint"] and previous["train_time_limit_reached"]

    Path(first["checkpoint"]).unlink()  # a last state without its best checkpoint cannot go on
    status, _, err = compare([*grid, "--continue"], capsys)
    assert status == 2 and f"continues a run whose best checkpoint '{first['checkpoint']}' no longer exists" in err

    # Every checkpoint gone: one error for the run, not 'already recorded (skipped)' with exit 0.
    Path(previous["resume_checkpoint"]).unlink()
    count = len(lines(results / "results.jsonl"))
    status, _, err = compare([*grid, "--continue"], capsys)
    assert status == 2 and "0 already recorded (skipped), 0 to run" in err, err
    assert f"but its checkpoints {previous['resume_checkpoint']} and {first['checkpoint']} are gone" in err
    assert "add --rerun to train it anew" in err and len(lines(results / "results.jsonl")) == count


def without_command(md: str) -> str:
    """A table's markdown without the line naming the command that built it."""
    return "\n".join(line for line in md.splitlines() if not line.startswith("Command: "))


def test_a_stopped_compare_stops_its_runs_and_leaves_no_checkpoint_or_record(work: Path, tmp_path: Path) -> None:
    """SIGTERM (``kill``, a job scheduler's stop) reaches the compare process alone; it passes it on to its runs."""
    args = ["compare", "--models", "SASRec", "GRU4Rec", "--datasets", "Instruments", "--parallel", "2",
            "--results-dir", "results", f"--data_path={work / 'dataset'}", "--epochs=500", "--stopping_step=500",
            *[arg for arg in TINY if arg != "--epochs=1"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "recbole_qrec", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("saved/*.pth"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, f"compare ended before it could be stopped: {process.stderr.read()}"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)  # it returns once its runs have ended
    assert process.returncode == 143 and err.splitlines()[-1].startswith("error: interrupted after 0 of 2 runs")
    assert not list(tmp_path.glob("saved/*.pth")) and not (tmp_path / "results" / "results.jsonl").exists()


def test_seeds_follow_the_configured_seed(work: Path) -> None:
    runs = plan(["SASRec"], ["Instruments"], 3, [], [f"--data_path={work / 'dataset'}", "--seed=7",
                                                     "--allow_data_mismatch=True"], "c1")
    assert [run.seed for run in runs] == [7, 8, 9]
    assert all(run.args[-2:] == (f"--seed={run.seed}", "--run_tags={'compare': 'c1'}") for run in runs)
    assert not any(arg == "--seed=7" for arg in runs[1].args)
    assert len({run.fingerprint["sha256"] for run in runs}) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--models", "SASRec", "--datasets", "Instruments", "--model=GRU4Rec"], "--model=GRU4Rec is set by compare"),
    (["--models", "SASRec", "--datasets", "Instruments", "--seeds", "0"], "both must be at least 1"),
    (["--models", "SASRec", "--datasets", "Instruments", "--format", "png"], "add --out PREFIX"),
    (["--models", "SASRec", "GRU4Rec", "SASRec", "--datasets", "Instruments"],
     "--models names SASRec more than once, which would run the same runs twice — name each once"),
    (["--models", "SASRec", "--datasets", "Instruments", "Instruments"], "--datasets names Instruments more than once"),
    (["--datasets", "Instruments"], "the following arguments are required: --models"),
    (["--models", "SASRec", "--datasets", "Instruments", "--out", __file__ + "/table"], "is a file, not a folder"),
])
def test_bad_arguments_are_one_line(args: list[str], message: str, capsys) -> None:
    status, out, err = compare(args, capsys)
    assert status == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: ") and message in err
