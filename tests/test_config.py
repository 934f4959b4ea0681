"""Config layering: RecBole defaults < properties/ < user YAML < command line; and config checks."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from recbole_qrec.config import build_config, check_config_values, default_config_files, read_config_file
from recbole_qrec.errors import ConfigError, UnknownModelError
from recbole_qrec.utils import get_model


def test_properties_sit_between_recbole_defaults_and_the_user(tmp_path):
    config = build_config("FDSA", "Instruments")
    assert config["topk"] == [1, 5, 10]  # overall.yaml beats RecBole's [10]
    assert config["selected_features"] == ["text_codes"]  # model yaml beats RecBole's ['class']
    assert config["item_content_fields"] == ["text_codes", "image_codes"]  # dataset yaml
    assert config["hidden_size"] == 64 and config["eval_args"]["order"] == "TO"

    user = tmp_path / "user.yaml"
    user.write_text("topk: [7]\nvalid_metric: NDCG@7\nhidden_size: 32\n")
    config = build_config("FDSA", "Instruments", [str(user)])
    assert config["topk"] == [7] and config["hidden_size"] == 32

    config = build_config("FDSA", "Instruments", [str(user)], cmd_args=["--hidden_size=16"])
    assert config["topk"] == [7] and config["hidden_size"] == 16


def test_properties_are_internal_defaults_and_only_the_users_settings_are_external(tmp_path):
    config = build_config("TIGER", "Instruments", cmd_args=["--epochs=3"])
    assert config.internal_config_dict["beam_size"] == 20 and config.internal_config_dict["topk"] == [1, 5, 10]
    assert config.external_config_dict == {"epochs": 3}


def test_default_files_are_layered_overall_model_dataset():
    files = default_config_files("SASRec", "Games")
    assert [f.split("properties/")[1] for f in files] == ["overall.yaml", "model/SASRec.yaml", "dataset/Games.yaml"]


def test_harness_protocol():
    config = build_config("SASRec", "Instruments")
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["eval_args"]["mode"]["test"] == "full"
    assert config["metrics"] == ["Hit", "NDCG"] and config["valid_metric"] == "NDCG@10"
    assert config["MAX_ITEM_LIST_LENGTH"] == 20 and config["loss_type"] == "CE"
    assert config["train_neg_sample_args"]["distribution"] == "none"


def test_build_config_reads_its_arguments_not_sys_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run_recbole_qrec.py", "--epochs=7", "--no_such_key=1"])
    assert build_config("SASRec", "Instruments")["epochs"] == 300
    assert build_config("SASRec", "Instruments", cmd_args=["--epochs=3"])["epochs"] == 3


def test_command_line_nulls_lists_and_mappings_read_as_in_yaml():
    assert build_config("MMESID", "Instruments", cmd_args=["--sid_producer=~"])["sid_producer"] is None
    tasks = build_config("MACRec", "Instruments", cmd_args=["--tasks=[text_next, image_next]"])["tasks"]
    assert tasks == ["text_next", "image_next"]
    assert build_config("MACRec", "Instruments", cmd_args=["--tasks=['text_next']"])["tasks"] == ["text_next"]
    clip = build_config("MACRec", "Instruments", cmd_args=["--clip_grad_norm={max_norm: 0.5}"])["clip_grad_norm"]
    assert clip == {"max_norm": 0.5}
    # Not YAML: left as the string, which the model's own check names.
    assert build_config("MACRec", "Instruments", cmd_args=["--tasks=[text_next"])["tasks"] == "[text_next"


def test_allow_data_mismatch_is_a_config_key():
    assert build_config("SASRec", "Instruments")["allow_data_mismatch"] is False
    assert build_config("SASRec", "Instruments", cmd_args=["--allow_data_mismatch=True"])["allow_data_mismatch"] is True


def test_model_lookup_prefers_recbole_qrec_then_recbole():
    assert get_model("SASRec").__module__ == "recbole.model.sequential_recommender.sasrec"
    with pytest.raises(UnknownModelError, match="case-sensitive"):
        get_model("sasrec_typo")


@pytest.mark.parametrize(("typed", "meant"), [("tiger", "TIGER"), ("Qbert4rec", "QBert4Rec"), ("sasrec", "SASRec")])
def test_a_wrong_case_model_name_suggests_one_that_works(typed, meant):
    with pytest.raises(UnknownModelError, match=f"Unknown model '{typed}' — did you mean '{meant}'?"):
        build_config(typed, "Instruments")
    assert build_config(meant, "Instruments")["model"] == meant


def test_time_ordered_split_requires_the_timestamp_column():
    with pytest.raises(ConfigError, match="lacks 'timestamp'"):
        build_config("SASRec", "Instruments", config_dict={"load_col": {"inter": ["user_id", "item_id"]}})


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean 'stopping_step'"):
        build_config("SASRec", "Instruments", cmd_args=["--stoping_step=3"])


def test_matmul_precision_is_checked_and_the_t5_models_use_tf32():
    with pytest.raises(ConfigError, match="float32_matmul_precision must be one of"):
        build_config("SASRec", "Instruments", cmd_args=["--float32_matmul_precision=fast"])
    assert build_config("SASRec", "Instruments")["float32_matmul_precision"] == "highest"
    assert build_config("TIGER", "Instruments")["float32_matmul_precision"] == "high"


def test_sid_producer_is_the_tokenizer_or_a_model_with_a_stage():
    assert build_config("TIGER", "Instruments")["sid_producer"] is None  # <dataset>.sid
    assert build_config("QBert4Rec", "Instruments")["sid_producer"] == "QBert4Rec"  # <dataset>.QBert4Rec.sid
    with pytest.raises(ConfigError, match=r"^sid_producer must be one of ~, QBert4Rec, MMESID, got 'TIGER' — ~: .* "
                                          r"e.g. --sid_producer=QBert4Rec$"):
        build_config("TIGER", "Instruments", cmd_args=["--sid_producer=TIGER"])


@pytest.mark.parametrize(
    ("key", "value", "default", "expected"),
    [
        ("epochs", "abc", 300, "an integer >= 1"),
        ("epochs", 0, 300, "an integer >= 1"),
        ("epochs", True, 300, "an integer >= 1"),
        ("pretrain_epochs", -1, 30, "an integer >= 0"),
        ("sid_epochs", 1.5, 100, "an integer >= 0"),
        ("eval_batch_size", 0, 4096, "an integer >= 1"),
        ("pretrain_batch_size", "abc", 512, "an integer >= 1"),
        ("learning_rate", -0.1, 0.001, "a number > 0"),
        ("injection_learning_rate", "abc", 0.001, "a number > 0"),
        ("dropout_prob", 1.1, 0.3, "a number in [0, 1]"),
        ("dropout_prob", 0.5, 0, None),  # an int default of a probability still takes a fraction
        ("attn_dropout_prob", float("nan"), 0.5, "a number in [0, 1]"),
        ("mask_ratio", -0.2, 0.2, "a number in [0, 1]"),
        ("gate_threshold", 2, 0.5, "a number in [0, 1]"),
        ("code_proxy_level_decay", 0, 1.0, "a number in (0, 1]"),
        ("code_proxy_level_decay", 1, 1.0, None),
        ("weight_decay", -1e-4, 0.01, "a number >= 0"),
        ("consistency_weight", -1, 0.1, "a number >= 0"),
        ("injection_temperature", 0, 0.1, "a number > 0"),
        ("inner_size", 0, 256, "an integer >= 1"),
        ("sid_code_dim", 0, 32, "an integer >= 1"),
        ("sid_codebook_size", 1, 256, "an integer >= 2"),
        ("d_ff", 0, 1024, "an integer >= 1"),
        ("num_decoder_layers", 0, 4, "an integer >= 1"),
        ("num_heads", -2, 6, "an integer >= 1"),
        ("MAX_ITEM_LIST_LENGTH", 0, 20, "an integer >= 1"),
        ("length_bucket_rows", -1, 1024, "an integer >= 0"),
        ("length_bucket_rows", 0, 1024, None),
        ("topk", [5, 0], [10], "a non-empty list of integers >= 1 (or an integer >= 1)"),
        ("topk", 5, [10], None),
        ("seed", "abc", 2020, "an integer"),
        ("initializer_range", 0.02, 0.02, None),
        ("reproducibility", "yes", True, "True or False"),
        ("mlp_hidden_size", [64, 32], [128, 64], None),  # a list-valued *_size key keeps its list
        # keys whose default is ~ (optional rules: ~ or a number in range)
        ("train_time_limit", None, None, None),
        ("train_time_limit", 0, None, "a number > 0 or ~"),
        ("valid_sample_users", 2.5, None, "an integer >= 1 or ~"),
        ("cold_start_share", 1, None, "a number in (0, 1) or ~"),
        ("cold_start_share", 0.1, None, None),
        ("unseen_prefix_levels", 0, None, "an integer >= 1 or ~"),
        ("sid_seed", -1, None, "an integer >= 0 or ~"),
        ("sid_seed", "2020", None, "an integer >= 0 or ~"),
        ("sid_seed", 2020, None, None),
    ],
)
def test_every_numeric_key_is_checked_by_its_rule_or_its_defaults_type(key, value, default, expected):
    if expected is None:
        check_config_values({key: value}, {key: default})
        return
    with pytest.raises(ConfigError, match=f"^{key} must be {re.escape(expected)}, got "):
        check_config_values({key: value}, {key: default})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty or holds only comments"),
        ("# a comment\n", "is empty or holds only comments"),
        ("epochs: [1\n", "is not valid YAML at line 2, column 1"),
        ("[1, 2]\n", "holds a YAML list, not a mapping"),
        ("1: 2\n", "has the key 1, which is not a name"),
    ],
)
def test_config_files_that_say_nothing_or_cannot_be_read_are_errors(text, fragment, tmp_path):
    path = tmp_path / "user.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        read_config_file(path)
    with pytest.raises(ConfigError, match=fragment):
        build_config("SASRec", "Instruments", [str(path)])


def test_a_config_file_that_is_not_utf8_or_not_a_file_is_an_error(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("epochs: 3 # \xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_config_file(tmp_path / "latin1.yaml")
    with pytest.raises(ConfigError, match=r"cannot be read \(Is a directory\)"):
        read_config_file(tmp_path)


def test_recbole_rejections_and_bad_structures_are_config_errors():
    with pytest.raises(ConfigError, match="RecBole rejected the configuration: There is no metric named 'Foo'"):
        build_config("SASRec", "Instruments", config_dict={"metrics": ["Foo"]})
    with pytest.raises(ConfigError, match="load_col must map file suffixes to field lists"):
        build_config("SASRec", "Instruments", cmd_args=["--load_col=[1]"])


def test_numpy_aliases_recbole_reads_exist():
    build_config("SASRec", "Instruments")  # a Config restores them
    assert np.float_ is np.float64 and np.complex_ is np.complex128 and np.unicode_ is np.str_


def test_an_optional_key_suggests_its_own_example():
    with pytest.raises(ConfigError, match=r"^train_time_limit must be a number > 0 or ~, got -5 — e.g. --train_time_limit=600$"):
        check_config_values({"train_time_limit": -5}, {"train_time_limit": None})


@pytest.mark.parametrize(("args", "fragment"), [
    (["--valid_metric=NDCG@20"], r"^valid_metric 'NDCG@20' is not computed by the evaluation .* give hit@1, .*ndcg@10\) — "),
    (["--valid_metric=foo@10"], r"^valid_metric 'foo@10' is not computed"),
    (["--metrics=['Recall']"], r"^valid_metric 'NDCG@10' is not computed .* give recall@1, recall@5, recall@10\)"),
    (["--valid_metric=10"], r"^valid_metric must be a metric name such as NDCG@10, got 10 — "),
    (["--loss_type=FOO"], r"^loss_type for SASRec must be one of CE, BPR, got 'FOO' — e.g. --loss_type=CE"),
    (["--eval_args={'order': 'RO'}"], r"^eval_args.order is 'RO', but a sequential model \(SASRec\) needs .* add order: TO"),
    (["--eval_args={'mode': 'full'}"], r"^eval_args.order is 'RO'"),  # a partial eval_args takes RecBole's order
])
def test_settings_that_fail_after_training_started_are_config_errors(args, fragment):
    """RecBole would fail with a KeyError after the first epoch (valid_metric), or a traceback while building the
    dataset (order) or the model (loss_type)."""
    with pytest.raises(ConfigError, match=fragment):
        build_config("SASRec", "Instruments", cmd_args=args)
    assert build_config("SASRec", "Instruments", cmd_args=["--valid_metric=hit@5"])["valid_metric"] == "hit@5"


@pytest.mark.parametrize("path", ["int.npy", "os.npy", "str.npy"])
def test_a_path_that_starts_with_a_python_name_stays_a_path(path):
    """RecBole evaluates each command-line value and kept only NameError, SyntaxError and TypeError as strings:
    ``int.npy`` (an AttributeError) stopped the run with an unexpected error."""
    config = build_config("QBert4Rec", "Instruments", cmd_args=[f"--text_feature_file={path}"])
    assert config["text_feature_file"] == path
    assert build_config("SASRec", "Instruments", cmd_args=["--epochs=7"])["epochs"] == 7


@pytest.mark.parametrize("key", ["results_dir", "checkpoint_dir"])
def test_an_output_folder_that_is_a_file_is_refused_before_training(key, tmp_path):
    """The run trained to the end and then failed with FileExistsError (exit 1)."""
    (tmp_path / "afile").write_text("x")
    for value in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(ConfigError, match=rf"^{key} .* cannot hold the run's files: .*afile is a file, not a folder — "):
            build_config("SASRec", "Instruments", cmd_args=[f"--{key}={value}"])
    assert build_config("SASRec", "Instruments", cmd_args=[f"--{key}={tmp_path / 'new' / 'dir'}"])[key].endswith("dir")
