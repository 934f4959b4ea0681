"""``bench/compile_agreement.py`` on 300 Instruments users, BERT4Rec on the CPU through dynamo's ``eager`` and
``aot_eager`` backends (no C++ build): every backend starts from eager mode's weights and steps through the same
batches from the same random state, so both reproduce eager mode's losses and first-step gradients exactly, with
dropout off or on, while the losses fall."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.parametrize("dropout", [[], ["--dropout"]], ids=["dropout_off", "dropout_on"])
def test_traced_backends_reproduce_eager_training_step_for_step(amazon_dir, tmp_path, dropout):
    out = tmp_path / "agreement"
    command = [sys.executable, "bench/compile_agreement.py", "--model", "BERT4Rec", "--users", "300",
               "--data_path", str(amazon_dir), "--device", "cpu", "--backends", "eager", "aot_eager", *dropout,
               "--steps", "8", "--set", "train_batch_size=64", "learning_rate=0.01", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(out.with_suffix(".json").read_text())
    eager = payload["eager_losses"]
    assert payload["dropout"] == bool(dropout)
    assert len(eager) == 8 and eager[-1] < eager[0]  # the steps train: a run that restarted would not show it
    for backend in ("eager", "aot_eager"):
        run = payload["runs"][backend]
        assert run["losses"] == eager, backend  # same weights before each run, same batches in the same order
        assert run["missing_gradients"] == [] and max(run["gradient_differences"].values()) == 0.0
        assert "item_embedding.weight" in run["gradient_differences"]
    report = out.with_suffix(".md").read_text()
    assert "| aot_eager | 0.00e+00 | 0.00e+00 | 0.00e+00" in report
