"""``bench/train_speed.py`` on 300 Instruments users, SASRec, the RecBole path against the device-resident one (on
the CPU): its report's per-validation times agree with the runs' own records, and the speed-up to the RecBole run's
best validation score is taken at the first validation of the other path that reaches it; ``--logs`` keeps each
run's log, a failed run's too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_the_speedup_to_the_same_metric_follows_the_runs_records(amazon_dir, tmp_path):
    out = tmp_path / "speed"
    command = [sys.executable, "bench/train_speed.py", "--dataset", "Instruments", "--models", "SASRec",
               "--modes", "recbole", "gpu", "gpu:length_buckets=[30]", "--users", "300", "--data_path", str(amazon_dir),
               "--set", "epochs=4", "eval_step=1", "use_gpu=False", "--out", str(out),
               "--logs", str(tmp_path / "logs")]
    done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(out.with_suffix(".json").read_text())
    rows = {row["data_path_mode"]: row for row in payload["rows"]}
    records = {row["data_path_mode"]: record for row, record in zip(payload["rows"], payload["records"])}
    for mode, row in rows.items():
        scores = [score for _, score in row["validations"]]
        times = [seconds for seconds, _ in row["validations"]]
        assert len(scores) == records[mode]["epochs"] and times == sorted(times)  # one validation per epoch, in order
        assert max(scores) == records[mode]["best_valid_score"]  # the log's scores are the trainer's
        assert row["time_to_best_s"] == times[scores.index(max(scores))]
    speedup, = payload["speedups"]
    reference, other = rows["recbole"], rows["gpu"]
    assert speedup["reference_best_valid"] == records["recbole"]["best_valid_score"]
    assert speedup["epoch_speedup"] == round(reference["train_s_per_epoch"] / other["train_s_per_epoch"], 2)
    reached = [seconds for seconds, score in other["validations"] if score >= speedup["reference_best_valid"]]
    assert speedup["time_to_reference_best_s"] == (reached[0] if reached else None)
    if reached:
        assert speedup["speedup_to_reference_best"] == round(reference["time_to_best_s"] / reached[0], 2)
    for mode, record in records.items():  # the kept log is the run's: the best validation score it reports
        log = (tmp_path / "logs" / f"{mode}-2020" / "SASRec.log").read_text(encoding="utf-8")
        assert f"valid_score: {record['best_valid_score']:.6f}" in log
    failed = (tmp_path / "logs" / "gpu_length_buckets__30_-2020" / "SASRec.log").read_text(encoding="utf-8")
    assert set(rows) == {"recbole", "gpu"} and "length_buckets must be increasing history lengths" in failed
    report = out.with_suffix(".md").read_text()
    assert "## Speed-up over `recbole`" in report and "\n| SASRec | gpu | 1 | " in report


def test_logs_that_is_a_file_is_one_error_line(tmp_path):
    taken = tmp_path / "logs"
    taken.write_text("")
    command = [sys.executable, "bench/train_speed.py", "--out", str(tmp_path / "speed"), "--logs", str(taken)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(f"--logs {taken} is a file — give a folder (made if missing)")
    assert not (tmp_path / "speed.json").exists()
