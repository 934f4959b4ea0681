"""Config layering: RecBole defaults < properties/ < user YAML < command line; and config checks."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import recbole_qrec  # noqa: F401  (applies the numpy compatibility shim)
from recbole_qrec.config import build_config, default_config_files
from recbole_qrec.errors import ConfigError, UnknownModelError
from recbole_qrec.utils import get_model


def test_properties_sit_between_recbole_defaults_and_the_user(tmp_path):
    config = build_config("FDSA", "Instruments")
    assert config["topk"] == [1, 5, 10]  # overall.yaml beats RecBole's [10]
    assert config["selected_features"] == ["text_codes"]  # model yaml beats RecBole's ['class']
    assert config["item_content_fields"] == ["text_codes", "image_codes"]  # dataset yaml
    assert config["hidden_size"] == 64 and config["eval_args"]["order"] == "TO"

    user = tmp_path / "user.yaml"
    user.write_text("topk: [7]\nhidden_size: 32\n")
    config = build_config("FDSA", "Instruments", [str(user)])
    assert config["topk"] == [7] and config["hidden_size"] == 32

    config = build_config("FDSA", "Instruments", [str(user)], cmd_args=["--hidden_size=16"])
    assert config["topk"] == [7] and config["hidden_size"] == 16


def test_default_files_are_layered_overall_model_dataset():
    files = default_config_files("SASRec", "Games")
    assert [f.split("properties/")[1] for f in files] == ["overall.yaml", "model/SASRec.yaml", "dataset/Games.yaml"]


def test_harness_protocol():
    config = build_config("SASRec", "Instruments")
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["eval_args"]["mode"]["test"] == "full"
    assert config["metrics"] == ["Hit", "NDCG"] and config["valid_metric"] == "NDCG@10"
    assert config["MAX_ITEM_LIST_LENGTH"] == 20 and config["loss_type"] == "CE"
    assert config["train_neg_sample_args"]["distribution"] == "none"


def test_build_config_restores_sys_argv():
    before = list(sys.argv)
    build_config("SASRec", "Instruments", cmd_args=["--epochs=3"])
    assert sys.argv == before


def test_model_lookup_prefers_recbole_qrec_then_recbole():
    assert get_model("SASRec").__module__ == "recbole.model.sequential_recommender.sasrec"
    with pytest.raises(UnknownModelError, match="case-sensitive"):
        get_model("sasrec_typo")


def test_time_ordered_split_requires_the_timestamp_column():
    with pytest.raises(ConfigError, match="lacks 'timestamp'"):
        build_config("SASRec", "Instruments", config_dict={"load_col": {"inter": ["user_id", "item_id"]}})


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="Did you mean 'stopping_step'"):
        build_config("SASRec", "Instruments", cmd_args=["--stoping_step=3"])


def test_matmul_precision_is_checked_and_the_t5_models_use_tf32():
    with pytest.raises(ConfigError, match="float32_matmul_precision must be one of"):
        build_config("SASRec", "Instruments", cmd_args=["--float32_matmul_precision=fast"])
    assert build_config("SASRec", "Instruments")["float32_matmul_precision"] == "highest"
    assert build_config("TIGER", "Instruments")["float32_matmul_precision"] == "high"


def test_numpy_aliases_recbole_reads_exist():
    assert np.float_ is np.float64 and np.complex_ is np.complex128 and np.unicode_ is np.str_
