"""The real entry point, ``python run_recbole_qrec.py``, on a 500-user subset of Instruments."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_prep.convert import convert
from dataset_prep.locate import ENV_VAR

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINT = REPO_ROOT / "run_recbole_qrec.py"
# The 500-user subset is not the papers' Instruments split: its counts differ from expected_counts.
FAST = ["--epochs=1", "--train_batch_size=256", "--eval_batch_size=256", "--use_gpu=False", "--allow_data_mismatch"]


def run_entry_point(args: list[str], cwd: Path, data_root: Path) -> subprocess.CompletedProcess:
    """Run the entry point in ``cwd`` on the processed subset ``data_root``, converted to ``cwd/dataset`` first."""
    if not (cwd / "dataset" / "Instruments").is_dir():
        convert("Instruments", src=data_root, out=cwd / "dataset")
    env = {**os.environ, ENV_VAR: str(data_root), "OMP_NUM_THREADS": "1"}  # one thread per run on a shared CPU
    return subprocess.run(
        [sys.executable, str(ENTRY_POINT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("model", ["GRU4Rec", "SASRec", "BERT4Rec", "FDSA"])
def test_baseline_trains_one_epoch_and_records_its_metrics(model, instruments_subset, tmp_path):
    done = run_entry_point([f"--model={model}", "--dataset=Instruments", *FAST], tmp_path, instruments_subset)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test result" in done.stderr + done.stdout
    record = json.loads((tmp_path / "results" / "results.jsonl").read_text().splitlines()[-1])
    assert record["model"] == model and record["dataset"] == "Instruments" and record["epochs"] == 1
    assert set(record["test"]) == {"hit@1", "hit@5", "hit@10", "ndcg@1", "ndcg@5", "ndcg@10"}
    assert all(0.0 <= value <= 1.0 for value in record["test"].values())
    assert record["test"]["hit@1"] <= record["test"]["hit@5"] <= record["test"]["hit@10"]
    assert len(record["config_hash"]) == 12 and record["seed"] == 2020 and record["wall_time_s"] > 0
    # the settings the hash is of, as the record keeps them (tables name configurations by them)
    settings = record["settings"]
    assert hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12] == record["config_hash"]
    assert settings["epochs"] == 1 and "seed" not in settings and "data_path" not in settings
    assert Path(tmp_path / record["checkpoint"]).is_file()


def test_user_config_file_and_cli_override_reach_the_run(instruments_subset, tmp_path):
    (tmp_path / "mine.yaml").write_text("topk: [2, 3]\nmetrics: [Hit]\nvalid_metric: Hit@3\n")
    done = run_entry_point(
        ["--model=GRU4Rec", "--config_files", "mine.yaml", *FAST, "--topk=[3]"], tmp_path, instruments_subset
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "results.jsonl").read_text())
    assert set(record["test"]) == {"hit@3"}


def test_a_run_resumed_from_its_checkpoint_trains_only_the_remaining_epochs(instruments_subset, tmp_path):
    first = run_entry_point(["--model=SASRec", *FAST], tmp_path, instruments_subset)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = json.loads((tmp_path / "results" / "results.jsonl").read_text())["checkpoint"]
    three_epochs = [arg for arg in FAST if not arg.startswith("--epochs=")] + ["--epochs=3"]
    resumed = run_entry_point(["--model=SASRec", *three_epochs, f"--resume_checkpoint={checkpoint}"],
                              tmp_path, instruments_subset)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "results.jsonl").read_text().splitlines()[-1])
    assert record["resumed_from"] == checkpoint and record["checkpoint"] == checkpoint
    # epochs trained in all; this run validated (so trained) only epochs 1 and 2
    assert record["epochs"] == 3 and [point["epoch"] for point in record["valid_curve"]] == [1, 2]
    assert "Resume training from epoch 1" in resumed.stderr + resumed.stdout
