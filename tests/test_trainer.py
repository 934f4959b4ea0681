"""Checkpoints load under torch.load(weights_only=True) and are verified when read back; RecBole's own do not load;
no ray import."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import init_seed

from dataset_prep.convert import convert
from recbole_qrec.config import build_config
from recbole_qrec.errors import CheckpointError
from recbole_qrec.trainer import get_trainer
from recbole_qrec.utils import get_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(instruments_subset, tmp_path_factory):
    """FDSA (whose other_parameter() lists a submodule) trained one epoch on the subset, and the test loader."""
    work = tmp_path_factory.mktemp("trained")
    config = build_config(
        "FDSA", "Instruments",
        config_dict={"data_path": str(work / "dataset"), "checkpoint_dir": str(work / "saved"), "epochs": 1,
                     "use_gpu": False, "train_batch_size": 256, "hidden_size": 32, "inner_size": 64},
    )
    convert("Instruments", src=instruments_subset, out=work / "dataset")
    init_seed(config["seed"], True)
    train, valid, test = data_preparation(config, create_dataset(config))
    model = get_model("FDSA")(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "FDSA")(config, model)
    trainer.fit(train, valid, saved=True)
    return trainer, test


def test_checkpoint_loads_with_weights_only(trained):
    trainer, _ = trained
    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)
    assert checkpoint["config"]["model"] == "FDSA" and isinstance(checkpoint["config"]["eval_args"], dict)
    assert set(checkpoint["state_dict"]) == set(trainer.model.state_dict())
    assert checkpoint["epoch"] == 0 and len(trainer.epoch_seconds) == 1


def test_evaluate_reloads_the_best_checkpoint_and_resume_works(trained):
    trainer, test = trained
    first = trainer.evaluate(test, load_best_model=True)
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.add_(1.0)  # the reload must undo this
    assert trainer.evaluate(test, load_best_model=True) == first
    trainer.resume_checkpoint(trainer.saved_model_file)
    assert trainer.start_epoch == 1


def test_resumed_training_continues_at_the_next_epoch_with_the_saved_optimizer(trained, tmp_path):
    trainer, test = trained
    checkpoint = tmp_path / "FDSA.pth"
    shutil.copy(trainer.saved_model_file, checkpoint)
    config = trainer.config
    resumed = get_trainer(config["MODEL_TYPE"], "FDSA")(config, get_model("FDSA")(config, test._dataset))
    resumed.resume_checkpoint(checkpoint)
    assert resumed.start_epoch == 1 and resumed.saved_model_file == str(checkpoint)
    assert resumed.optimizer.state, "the optimizer's moments were not restored"
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[name])


def test_resuming_a_missing_or_foreign_checkpoint_is_a_checkpoint_error(trained, tmp_path):
    trainer, _ = trained
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.resume_checkpoint(tmp_path / "absent.pth")
    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)
    checkpoint["config"]["model"] = "SASRec"
    torch.save(checkpoint, tmp_path / "sasrec.pth")
    with pytest.raises(CheckpointError, match="was written by SASRec, not FDSA"):
        trainer.resume_checkpoint(tmp_path / "sasrec.pth")


def test_evaluate_verifies_the_checkpoint_it_reads_back(trained, tmp_path):
    trainer, test = trained
    damaged = tmp_path / "FDSA.pth"
    damaged.write_bytes(open(trainer.saved_model_file, "rb").read()[:1000])
    with pytest.raises(CheckpointError, match=r"^checkpoint '.*FDSA.pth' is damaged"):
        trainer.evaluate(test, load_best_model=True, model_file=str(damaged))


def test_checkpoints_of_a_failed_block_are_removed_and_an_overwritten_one_restored(trained, tmp_path):
    trainer, _ = trained
    config = trainer.config
    fresh = get_trainer(config["MODEL_TYPE"], "FDSA")(config, trainer.model)
    kept = tmp_path / "kept.pth"
    shutil.copy(trainer.saved_model_file, kept)
    original = kept.read_bytes()
    with pytest.raises(CheckpointError):
        with fresh.checkpoints_kept_on_success():
            fresh._save_checkpoint(0, verbose=False, saved_model_file=str(tmp_path / "new.pth"))
            fresh._save_checkpoint(1, verbose=False, saved_model_file=str(kept))
            fresh.resume_checkpoint(tmp_path / "absent.pth")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept.pth"] and kept.read_bytes() == original
    with fresh.checkpoints_kept_on_success():
        fresh._save_checkpoint(1, verbose=False, saved_model_file=str(kept))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept.pth"]
    assert torch.load(kept, weights_only=True)["epoch"] == 1


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's note on the refused pickle
def test_recbole_own_checkpoint_does_not_load_with_weights_only(trained, tmp_path):
    trainer, _ = trained
    Trainer._save_checkpoint(trainer, 0, saved_model_file=str(tmp_path / "recbole.pth"))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "recbole.pth", weights_only=True)


def test_the_harness_never_imports_ray():
    code = "import sys, recbole_qrec.quick_start; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_anomaly_detection_stays_off_after_recbole_models_are_looked_up():
    """RecBole's sine.py turns torch's anomaly detection on at import; the package turns it off again, also where
    building a config first imports RecBole's models (recbole_qrec.compat.prepare_recbole)."""
    code = ("import torch, recbole_qrec; from recbole_qrec.config import build_config; build_config('BERT4Rec', "
            "'Instruments'); assert not torch.is_anomaly_enabled(), 'anomaly detection is on after a config'; "
            "from recbole_qrec.utils import get_model; get_model('SINE'); "
            "get_model('SASRec'); assert not torch.is_anomaly_enabled(), 'anomaly detection is on'")
    subprocess.run([sys.executable, "-c", code], check=True)
    bare = "import torch, recbole.model.sequential_recommender; assert torch.is_anomaly_enabled()"
    subprocess.run([sys.executable, "-c", bare], check=True)


def test_a_spent_train_time_limit_ends_training_after_the_first_validation_and_tests_its_checkpoint(
        instruments_subset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    convert("Instruments", src=instruments_subset, out=tmp_path / "dataset")
    settings = {"data_path": "dataset", "allow_data_mismatch": True, "epochs": 2, "use_gpu": False,
                "train_batch_size": 256, "hidden_size": 16, "embedding_size": 16}
    from recbole_qrec.quick_start import run_recbole_qrec

    limited = run_recbole_qrec("GRU4Rec", "Instruments", config_dict={**settings, "train_time_limit": 1e-9})
    unlimited = run_recbole_qrec("GRU4Rec", "Instruments", config_dict=settings)
    assert limited["train_time_limit_reached"] and not unlimited["train_time_limit_reached"]
    assert limited["epochs"] == 1 and [point["epoch"] for point in limited["valid_curve"]] == [0]
    assert unlimited["epochs"] == 2
    # Both runs share seed and data: the limited run is the unlimited one cut after its first epoch.
    assert limited["valid_curve"][0] == unlimited["valid_curve"][0]
    assert (tmp_path / limited["checkpoint"]).exists() and limited["test"]["ndcg@10"] > 0


@pytest.mark.parametrize("limit", [0, -5, "soon", True])
def test_a_bad_train_time_limit_is_a_config_error(limit):
    from recbole_qrec.errors import ConfigError

    with pytest.raises(ConfigError, match="train_time_limit must be"):
        build_config("GRU4Rec", "Instruments", config_dict={"train_time_limit": limit})


def test_a_trainer_built_with_anomaly_detection_on_warns_that_training_will_be_slow(trained, caplog):
    trainer, test = trained
    config = trainer.config
    build = get_trainer(config["MODEL_TYPE"], "FDSA")
    with caplog.at_level("WARNING"):
        build(config, get_model("FDSA")(config, test._dataset))
        assert "anomaly detection is on" not in caplog.text
        with torch.autograd.set_detect_anomaly(True):
            build(config, get_model("FDSA")(config, test._dataset))
    assert caplog.text.count("anomaly detection is on") == 1 and "set_detect_anomaly(False)" in caplog.text
