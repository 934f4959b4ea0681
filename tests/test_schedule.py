"""Learning-rate schedules (``lr_scheduler``, ``warmup_steps``) on the real trainers."""

from __future__ import annotations

import math

import pytest
import torch
from recbole.utils import init_seed

from recbole_qrec.config import build_config
from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.errors import ConfigError
from recbole_qrec.trainer import get_trainer
from recbole_qrec.trainer.schedule import attach_lr_schedule
from recbole_qrec.utils import get_model

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 8,
        "train_batch_size": 256, "eval_batch_size": 512, "use_gpu": False, "allow_data_mismatch": True}


def sgd_step_rates(settings: dict, total: int, done: int = 0, steps: int | None = None) -> list[float]:
    """The learning rate before each of ``steps`` optimizer steps under the schedule of ``settings``."""
    config = build_config("SASRec", "Instruments", config_dict=settings)
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=0.5)  # the schedule starts from the base rate it is given
    attach_lr_schedule(optimizer, config, 0.1, total, done)
    rates = []
    for _ in range(total - done if steps is None else steps):
        rates.append(optimizer.param_groups[0]["lr"])
        weight.sum().backward()
        optimizer.step()
    return rates


def test_warm_up_then_cosine_decay_and_a_resumed_schedule_goes_on_where_it_stopped():
    settings = {"lr_scheduler": "cosine", "warmup_steps": 4}
    rates = sgd_step_rates(settings, total=20)
    assert rates[:5] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert all(a >= b for a, b in zip(rates[4:], rates[5:])) and rates[-1] < 0.01
    assert sgd_step_rates(settings, total=20, done=7) == pytest.approx(rates[7:])


def test_inverse_sqrt_decays_as_the_square_root_after_warm_up():
    rates = sgd_step_rates({"lr_scheduler": "inverse_sqrt", "warmup_steps": 4}, total=40)
    assert rates[4] == pytest.approx(0.1) and rates[16] == pytest.approx(0.1 * math.sqrt(4 / 16))


def test_constant_without_warm_up_leaves_the_optimizer_alone():
    assert sgd_step_rates({}, total=5) == [0.5] * 5


@pytest.mark.parametrize("settings", [{"lr_scheduler": "cosin"}, {"warmup_steps": -1}, {"warmup_steps": 1.5},
                                      {"autocast_dtype": "fp8"}, {"valid_sample_users": 0}, {"data_path_mode": "cpu"}])
def test_a_bad_training_setting_is_a_config_error_before_anything_runs(settings):
    with pytest.raises(ConfigError, match=f"^{next(iter(settings))} must be"):
        build_config("SASRec", "Instruments", config_dict=settings)


def test_fine_tuning_follows_the_schedule_over_all_its_epochs_and_records_a_validation_curve(work):
    config = build_config("SASRec", "Instruments", config_dict={
        **TINY, "data_path": str(work / "dataset"), "checkpoint_dir": str(work / "saved-schedule"), "epochs": 2,
        "lr_scheduler": "linear", "warmup_steps": 2})
    init_seed(config["seed"], True)
    train, valid, _, _ = data_preparation(config, create_dataset(config))
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, get_model("SASRec")(config, train._dataset))
    trainer.fit(train, valid, saved=False)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # linear decay ends at 0 after 2 epochs
    assert [point["epoch"] for point in trainer.valid_curve] == [0, 1]
    assert set(trainer.valid_curve[0]) == {"epoch", "hit@1", "hit@5", "hit@10", "ndcg@1", "ndcg@5", "ndcg@10"}
