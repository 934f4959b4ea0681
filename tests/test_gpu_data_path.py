"""``data_path_mode: gpu`` (run here on CPU tensors): the device-resident training loader yields the same training
rows as RecBole's ``TrainDataLoader``, reproducibly shuffled, and trains SASRec to metrics within noise of RecBole's path."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from recbole.data.dataloader import TrainDataLoader

from recbole_qrec.config import build_config
from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.data.dataloader import TensorTrainDataLoader
from recbole_qrec.errors import ConfigError
from recbole_qrec.quick_start import run_recbole_qrec

SUBSET_USERS = 500  # conftest.SUBSET_USERS: the subset's users, one test interaction each
SASREC = {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "n_heads": 2, "epochs": 1, "learning_rate": 0.005,
          "train_batch_size": 128, "eval_batch_size": 256, "use_gpu": False, "allow_data_mismatch": True}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["SASRec", "FDSA"])  # FDSA: batches joined with item features (text_codes)
def loaders(work: Path, request) -> tuple[TrainDataLoader, TensorTrainDataLoader]:
    """RecBole's training loader of the subset and a ``TensorTrainDataLoader`` (``data_path_mode: gpu``) of it."""
    config = build_config(request.param, "Instruments", config_dict={"data_path": str(work / "dataset"), **SASREC,
                                                                     "data_path_mode": "gpu"})
    dataset = create_dataset(config)
    train_data = data_preparation(config, dataset)[0]
    assert isinstance(train_data, TensorTrainDataLoader)
    recbole_train = TrainDataLoader(config, train_data._dataset, train_data._sampler, shuffle=True)
    return recbole_train, train_data


def rows(batches, fields: Sequence[str] = ()) -> list[tuple]:
    """(user, history, target, then the values of ``fields``) of every row of ``batches``, in order."""
    found = []
    for batch in batches:
        extra = zip(*(batch[name].tolist() for name in fields)) if fields else ((),) * len(batch)
        for user, history, length, target, values in zip(batch["user_id"].tolist(), batch["item_id_list"].tolist(),
                                                         batch["item_length"].tolist(), batch["item_id"].tolist(), extra):
            found.append((user, tuple(history[:length]), target, repr(values)))
    return found


def test_one_epoch_yields_recbole_training_rows_with_its_fields(loaders):
    recbole_train, gpu_train = loaders
    recbole_batches, gpu_batches = list(recbole_train), list(gpu_train)
    assert len(gpu_train) == len(gpu_batches) == len(recbole_batches)
    assert [len(batch) for batch in gpu_batches] == [len(batch) for batch in recbole_batches]
    assert set(gpu_batches[0].columns) == set(recbole_batches[0].columns)
    assert all(gpu_batches[0][name].dtype == recbole_batches[0][name].dtype for name in gpu_batches[0].columns)
    extra = sorted(set(gpu_batches[0].columns) - {"user_id", "item_id", "item_id_list", "item_length"})
    assert Counter(rows(gpu_batches, extra)) == Counter(rows(recbole_batches, extra))


def test_epochs_are_shuffled_differently_and_the_same_seed_repeats_the_batches(loaders):
    _, gpu_train = loaders
    one, other = (TensorTrainDataLoader(gpu_train.config, gpu_train._dataset, gpu_train._sampler, shuffle=True)
                  for _ in range(2))
    first, second = list(one), list(one)
    assert Counter(rows(first)) == Counter(rows(second)) and rows(first) != rows(second)
    for epoch in (first, second):
        for batch, repeated in zip(epoch, other, strict=True):
            assert all(torch.equal(batch[name], repeated[name]) for name in batch.columns)


def run(model: str, folder: Path, data_path: Path, settings: dict) -> dict:
    """The record of an in-process run of ``model`` on the subset, with its files under ``folder``."""
    folder.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        return run_recbole_qrec(model, "Instruments", config_dict={"data_path": str(data_path), **settings})


def test_sasrec_trains_to_the_recbole_path_metrics_and_beats_popularity(work, tmp_path):
    """Same seed, one epoch: the paths differ only in batch order, so their test HR@10 and NDCG@10 may differ by
    sampling noise: less than two standard errors of a mean over the subset's test users (binomial for HR@10;
    for NDCG@10, whose per-user values lie in [0, hit], at most sqrt(HR@10 / users))."""
    data = work / "dataset"
    recbole = run("SASRec", tmp_path / "recbole", data, {**SASREC, "data_path_mode": "recbole"})["test"]
    gpu = run("SASRec", tmp_path / "gpu", data, {**SASREC, "data_path_mode": "gpu"})["test"]
    popularity = run("Pop", tmp_path / "pop", data, {"epochs": 1, "use_gpu": False, "allow_data_mismatch": True})["test"]
    hit = recbole["hit@10"]
    assert abs(gpu["hit@10"] - hit) < 2 * math.sqrt(hit * (1 - hit) / SUBSET_USERS)
    assert abs(gpu["ndcg@10"] - recbole["ndcg@10"]) < 2 * math.sqrt(hit / SUBSET_USERS)
    for metric in ("hit@10", "ndcg@10"):
        assert gpu[metric] > popularity[metric] and recbole[metric] > popularity[metric]


def test_a_model_trained_through_a_dataset_transform_is_refused_in_one_line(work, tmp_path):
    with pytest.raises(ConfigError, match="BERT4Rec trains on RecBole's dataset transform 'mask_itemseq'") as error:
        run("BERT4Rec", tmp_path / "bert4rec", work / "dataset", {**SASREC, "data_path_mode": "gpu"})
    assert "\n" not in str(error.value) and str(error.value).endswith("— set data_path_mode: recbole")


@pytest.mark.parametrize("settings, message", [
    ({"data_path_mode": "cuda"}, "data_path_mode must be one of recbole, gpu, got 'cuda' — e.g. --data_path_mode=recbole"),
    ({"data_path_mode": "gpu", "loss_type": "BPR", "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}},
     "data_path_mode gpu trains without negative sampling"),
])
def test_an_unknown_mode_or_negative_sampling_is_a_config_error(work, tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        run("SASRec", tmp_path / "run", work / "dataset", {**SASREC, **settings})
