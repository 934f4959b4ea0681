"""Distributed training (DistributedDataParallel, gloo on the CPU): ``--nproc=2`` against one process on the same
global batch, on the 500-user Instruments subset.

Both runs train full-batch (``train_batch_size`` above the number of training rows, dropout off): one process
takes one step on all rows, two processes each a step on half of them with their gradients averaged, from the
same initial weights (DDP copies rank 0's); with ``length_buckets`` a step per bucket, in the same order in every
process. The updates therefore agree up to the order of floating-point sums
(and, with an odd number of rows, the one row the second process repeats to fill its half, as torch's
DistributedSampler does), so the two runs rank the items alike except where two scores tie within rounding.
Tolerance: every metric within ``FLIPS / n`` of the one-process run, ``n`` the number of evaluated users, i.e.
at most ``FLIPS`` users ranked differently. The evaluation itself is exact: each user is evaluated once, by one
process, and the metrics are computed from all users together.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_qrec.config import build_config
from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.quick_start import run_recbole_qrec

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINT = REPO_ROOT / "run_recbole_qrec.py"
FLIPS = 2
COMMON = {"eval_batch_size": 128, "allow_data_mismatch": True, "show_progress": False, "learning_rate": 0.02,
          "train_batch_size": 8192, "pretrain_batch_size": 8192}
SASREC = {**COMMON, "epochs": 2, "hidden_size": 32, "inner_size": 64, "n_layers": 1, "n_heads": 2,
          "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0,
          "user_inter_num_interval": "[6,inf)"}  # an odd number of users: RecBole's sampler would repeat one
MQL4GREC = {**COMMON, "epochs": 1, "pretrain_epochs": 1, "pretrain_learning_rate": 0.02, "tasks": ["text_next"],
            "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
            "dropout_rate": 0.0, "MAX_ITEM_LIST_LENGTH": 5, "beam_size": 5, "topk": [1, 5], "valid_metric": "NDCG@5"}

pytestmark = pytest.mark.usefixtures("one_thread")


def settings(work: Path, model_settings: dict, out: Path) -> dict:
    """The subset's atomic files in ``work``; checkpoints and records in ``out``."""
    return {"data_path": str(work / "dataset"), "checkpoint_dir": str(out / "saved"),
            "results_dir": str(out / "results"), **model_settings}


def count_test_users(work: Path, model: str, model_settings: dict) -> int:
    """Users of the test split (one row each in leave-one-out)."""
    config = build_config(model, "Instruments", config_dict=settings(work, model_settings, work))
    return len(data_preparation(config, create_dataset(config))[2]._dataset)


def log_entries(folder: Path) -> set[Path]:
    """RecBole's log files and TensorBoard folders in ``folder``."""
    return {*(folder / "log").glob("*/*.log"), *(folder / "log_tensorboard").glob("*")}


def run_two_processes(work: Path, model: str, model_settings: dict, out: Path) -> subprocess.CompletedProcess:
    """``python run_recbole_qrec.py --nproc=2`` in ``out`` (one thread per process)."""
    overrides = [f"--{key}={json.dumps(value) if isinstance(value, list) else value}"
                 for key, value in settings(work, model_settings, out).items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ENTRY_POINT), f"--model={model}", "--dataset=Instruments", "--nproc=2",
                           *overrides], cwd=out, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("model, model_settings", [
    ("SASRec", SASREC), ("MQL4GRec", MQL4GREC),
    ("SASRec", {**SASREC, "data_path_mode": "gpu", "length_buckets": [3, 8]}),  # per step a bucket, a share per process
])
def test_two_processes_evaluate_every_user_once_and_match_one_process(model, model_settings, work, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    users = count_test_users(work, model, model_settings)
    one = run_recbole_qrec(model, "Instruments", config_dict=settings(work, model_settings, tmp_path))

    logs_before = log_entries(tmp_path)
    done = run_two_processes(work, model, model_settings, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "results" / "results.jsonl").read_text().splitlines()]
    two = records[-1]
    assert [record["model"] for record in records] == [model, model]  # one record per run, whatever its processes
    assert two["epochs"] == one["epochs"] and two["pretrain_epochs"] == one["pretrain_epochs"]
    for split in ("valid", "test"):
        for metric, value in one[split].items():
            assert abs(two[split][metric] - value) <= FLIPS / users + 1e-9, (split, metric, one[split], two[split])

    log_file, tensorboard = sorted(log_entries(tmp_path) - logs_before)  # rank 1 writes no log or TensorBoard files
    assert log_file.parent.name == model and tensorboard.name == log_file.stem
    evaluated = re.findall(r"evaluated (\d+) users on 2 processes", log_file.read_text())
    assert evaluated and {int(count) for count in evaluated} == {users}
    if model == "SASRec":
        assert users % 2 == 1  # RecBole's DistributedSampler would have evaluated one user twice
    checkpoints = {Path(record["checkpoint"]).name for record in (one, two)}
    saved = {path.name for path in (tmp_path / "saved").glob(f"{model}-*") if "pretrained" not in path.name}
    assert saved == checkpoints


@pytest.mark.parametrize("setting, message", [
    ("--learing_rate=0.1", "Unknown config key 'learing_rate'"),
    ("--train_batch_size=0", "train_batch_size must be an integer >= 1"),
])
def test_a_wrong_setting_stops_an_nproc_run_before_its_processes_start(setting, message, work):
    """Every process met the error alike: rank 0 printed it and torch's launcher added its own warning line about
    terminating the others."""
    done = subprocess.run([sys.executable, str(ENTRY_POINT), "--model=SASRec", "--dataset=Instruments", "--nproc=2",
                           "--gpu_id=", "--allow_data_mismatch=True", f"--data_path={work / 'dataset'}", setting],
                          cwd=work, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr and "Traceback" not in done.stderr
