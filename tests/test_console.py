"""Console output: progress bars follow the terminal unless set, and only the changed settings are shown (the full
configuration goes to the log file)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_qrec.config import build_config
from recbole_qrec.console import changed_settings, resolve_show_progress
from recbole_qrec.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_progress_bars_are_on_for_a_terminal_unless_set(monkeypatch):
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        assert resolve_show_progress(None) is True
        assert resolve_show_progress(False) is False
    os.close(leader)
    with open(os.devnull, "w") as file:
        monkeypatch.setattr(sys, "stderr", file)
        assert resolve_show_progress(None) is False
        assert resolve_show_progress(True) is True
    with pytest.raises(ConfigError, match="show_progress must be True, False or ~"):
        resolve_show_progress("yes")


def test_the_default_of_show_progress_is_automatic():
    assert build_config("SASRec", "Instruments")["show_progress"] is None


def test_only_settings_that_differ_from_the_defaults_are_changed():
    config = build_config("SASRec", "Instruments", config_dict={"epochs": 300, "learning_rate": 0.01},
                          cmd_args=["--hidden_size=32", "--stopping_step=10"])
    assert changed_settings(config) == {"learning_rate": 0.01, "hidden_size": 32}


def test_the_console_shows_the_changed_settings_and_the_log_file_everything(work, tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_recbole_qrec.py"), "--model=SASRec", f"--data_path={work / 'dataset'}",
         "--epochs=1", "--hidden_size=32", "--inner_size=64", "--train_batch_size=256", "--eval_batch_size=256",
         "--use_gpu=False", "--allow_data_mismatch=True", "--show_progress=True"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    log = next((tmp_path / "log" / "SASRec").glob("*.log")).read_text()
    assert "SASRec on Instruments, settings that differ from the defaults" in console
    assert "hidden_size" in console and "show_progress" in console
    assert "learning_rate" not in console and "Hyper Parameters" not in console
    assert "General Hyper Parameters" in log and "learning_rate" in log
    assert "Train     0" in console  # RecBole's tqdm bar, asked for explicitly
    assert "Warning" not in done.stderr, done.stderr  # e.g. torch's on the GradScaler RecBole's trainer builds
