"""Quality floors: each model's fixed small run on the 500-user Instruments subset reaches its validation NDCG@10
floor (tests/floors.json), its untrained model stays below it, and floors are only ever raised.

``python bench/floors.py`` re-measures the runs and raises floors (never lowers them) with the current commit.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from recbole.utils import init_seed

from recbole_qrec.config import build_config
from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.tokenize import ensure_semantic_ids
from recbole_qrec.trainer import get_trainer
from recbole_qrec.utils import get_model

FLOORS_FILE = Path(__file__).resolve().parent / "floors.json"
METRIC = "ndcg@10"


def load_floors(path: Path = FLOORS_FILE) -> dict[str, Any]:
    """The floors file: ``{"models": {model: {"settings", "broken", "floors": [...]}}}``, the last floor current."""
    return json.loads(path.read_text())


FLOORS = load_floors()["models"]


def small_run(model: str, settings: dict[str, Any], data_path: Path) -> tuple[float, float]:
    """Validation NDCG@10 of ``model``'s freshly initialised model and of its small run (the best epoch's) on the
    atomic files in ``data_path``, seeded as the entry point seeds them; nothing is saved."""
    config = build_config(model, "Instruments", config_dict={
        "data_path": str(data_path), "checkpoint_dir": str(data_path.parent / "saved"), "use_gpu": False,
        "show_progress": False, **settings})
    ensure_semantic_ids(config, [])
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _, pretrain = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(
        config, get_model(config["model"])(config, train._dataset).to(config["device"]))
    untrained = trainer.evaluate(valid, load_best_model=False)[METRIC]
    init_seed(config["seed"], config["reproducibility"])  # training draws the same numbers whatever evaluating drew
    fit_sources = {"pretrain_data": pretrain} if pretrain else {}
    _, result = trainer.fit(train, valid, verbose=False, saved=False, **fit_sources)
    return untrained, result[METRIC]


@pytest.fixture
def run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> Path:
    """A working folder for RecBole's ``log_tensorboard/``."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("model", sorted(FLOORS))
def test_the_small_run_reaches_its_floor_and_the_untrained_model_does_not(model, work, run_folder):
    entry = FLOORS[model]
    floor = entry["floors"][-1]["floor"]
    assert entry["broken"] == "untrained"
    untrained, trained = small_run(model, entry["settings"], work / "dataset")
    assert untrained < floor, f"{model}: the untrained model reaches the floor ({untrained:.4f} >= {floor})"
    assert trained >= floor, f"{model}: valid {METRIC} {trained:.4f} is below its floor {floor}"


@pytest.mark.parametrize("model", sorted(FLOORS))
def test_floors_were_only_raised_unless_a_reason_is_given(model):
    floors = FLOORS[model]["floors"]
    assert floors and all({"floor", "commit", "date"} <= set(entry) for entry in floors)
    for before, after in pairwise(floors):
        assert after["floor"] >= before["floor"] or after.get("lowered_because"), (
            f"{model}: floor lowered from {before['floor']} to {after['floor']} without `lowered_because`")
