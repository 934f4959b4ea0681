"""Content for a dataset without any (Arts): a tiny SASRec trained on a 300-user subset of Arts, its item embeddings
exported as features, tokenized into the ``text_codes`` field of ``Arts.item``, read by TIGER like converted text
codes, and the runs' content sources (``id-embedding:SASRec``) recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.utils import init_seed

from dataset_prep.convert import convert
from dataset_prep.subset import write_user_subset
from recbole_qrec.config import build_config
from recbole_qrec.data import check_dataset, create_dataset, data_preparation
from recbole_qrec.data.features import FeaturePaths, content_sources, feature_source, load_features
from recbole_qrec.data.item_features import run_content_sources
from recbole_qrec.data.sid import read_code_column
from recbole_qrec.errors import ConfigError
from recbole_qrec.model.tiger import TIGER
from recbole_qrec.quick_start import run_recbole_qrec
from recbole_qrec.tokenize import checkpoint_features_path, main as tokenize_main

USERS = 300
SASREC = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "epochs": 1, "train_batch_size": 512,
          "eval_batch_size": 512, "use_gpu": False, "show_progress": False, "allow_data_mismatch": True}
TOKENIZER = ["epochs=3", "hidden_dims=[32]", "batch_size=512", "codebook_size=32", "code_dim=8", "levels=3"]
TIGER_TINY = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
              "MAX_ITEM_LIST_LENGTH": 8, "train_batch_size": 128, "use_gpu": False, "allow_data_mismatch": True}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def arts(amazon_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(data_path, SASRec checkpoint)``: the first 300 Arts users as atomic files and a SASRec trained 1 epoch."""
    root = tmp_path_factory.mktemp("arts")
    write_user_subset("Arts", amazon_dir / "Arts", root / "processed", USERS)
    convert("Arts", src=root / "processed", out=root / "dataset")
    before = Path.cwd()
    os.chdir(root)  # RecBole's logger writes log/ into the working folder
    try:
        run_recbole_qrec("SASRec", "Arts", config_dict={**SASREC, "data_path": str(root / "dataset"),
                                                         "checkpoint_dir": str(root / "saved"),
                                                         "results_dir": str(root / "results")})
    finally:
        os.chdir(before)
    return root / "dataset", next((root / "saved").glob("SASRec-*.pth"))


@pytest.fixture(scope="module")
def tokenized(arts: tuple[Path, Path]) -> tuple[Path, Path]:
    data_path, checkpoint = arts
    tokenize_main(["--dataset", "Arts", "--data_path", str(data_path), "--checkpoint", str(checkpoint),
                   "--item_field", "text_codes", "--device", "cpu", "--set", *TOKENIZER])
    return data_path, checkpoint


def create_model(config) -> tuple[TIGER, object]:
    init_seed(config["seed"], True)
    train, _, _, _ = data_preparation(config, create_dataset(config))
    return TIGER(config, train._dataset), train


def test_before_the_step_arts_has_no_content_and_tiger_says_so(arts):
    data_path, _ = arts
    config = build_config("TIGER", "Arts", config_dict={**TIGER_TINY, "data_path": str(data_path)})
    check_dataset(config)  # runs before the module's tokenize step writes Arts.item
    assert config["item_content_fields"] == []
    with pytest.raises(ConfigError, match="sid_source is 'text_codes', which dataset Arts does not provide"):
        create_model(config)
    fdsa = build_config("FDSA", "Arts", config_dict={"data_path": str(data_path), "allow_data_mismatch": True})
    with pytest.raises(ConfigError, match="but dataset Arts has no item content features"):
        check_dataset(fdsa)


def test_features_are_the_checkpoints_item_embeddings_by_item_token(tokenized):
    data_path, checkpoint = tokenized
    features_file = checkpoint_features_path(data_path, "Arts", "SASRec")
    features = load_features(features_file)
    table = torch.load(checkpoint, weights_only=True)["state_dict"]["item_embedding.weight"].numpy()
    config = build_config("SASRec", "Arts", config_dict={"data_path": str(data_path), "allow_data_mismatch": True})
    dataset = create_dataset(config)
    tokens = dataset.field2id_token["item_id"][1:]
    assert features.shape == (max(map(int, tokens)) + 1, 16)
    for internal, token in enumerate(tokens, start=1):
        np.testing.assert_array_equal(features[int(token)], table[internal])
    assert feature_source(features_file) == "id-embedding:SASRec"


def test_every_item_gets_a_unique_code_tuple_in_the_item_file(tokenized):
    data_path, _ = tokenized
    folder = data_path / "Arts"
    items = {line.split("\t")[1] for line in (folder / "Arts.inter").read_text().splitlines()[1:]}
    codes = read_code_column(folder / "Arts.item", "text_codes")
    assert set(codes) == items
    assert len({tuple(row) for row in codes.values()}) == len(items), "semantic IDs collide"
    assert {len(row) for row in codes.values()} == {3} and max(max(row) for row in codes.values()) < 32
    metadata = json.loads((folder / "Arts.content.json").read_text())
    assert metadata["text_codes"]["source"] == "id-embedding:SASRec"
    assert metadata["text_codes"]["tokenizer"]["collision_rate_after"] == 0.0


def test_tiger_trains_on_the_codes_and_records_their_source(tokenized):
    data_path, _ = tokenized
    config = build_config("TIGER", "Arts", config_dict={**TIGER_TINY, "data_path": str(data_path)})
    check_dataset(config)
    assert config["item_content_fields"] == ["text_codes"]
    model, train = create_model(config)
    assert len(model.item_codes[1:].unique(dim=0)) == train._dataset.item_num - 1
    batch = next(iter(train))
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert run_content_sources(config) == {"Arts": {"text_codes": "id-embedding:SASRec"}}


def test_models_say_which_content_they_read_and_which_is_missing(tokenized, caplog):
    data_path, _ = tokenized
    settings = {"data_path": str(data_path), "allow_data_mismatch": True}
    assert run_content_sources(build_config("SASRec", "Arts", config_dict=settings)) == {"Arts": {}}
    mql = build_config("MQL4GRec", "Arts", config_dict={**settings, "image_sid_source": None})
    assert run_content_sources(mql) == {"Arts": {"text_codes": "id-embedding:SASRec"}}
    qbert = build_config("QBert4Rec", "Arts", config_dict=settings)
    with caplog.at_level("WARNING"):
        assert run_content_sources(qbert) == {"Arts": {"text": "id-embedding:SASRec", "image": "missing"}}
    assert "QBert4Rec on Arts: no image in the dataset" in caplog.text


def test_rerun_reuses_the_export_and_bad_field_names_are_errors(tokenized, capsys):
    data_path, checkpoint = tokenized
    features_file = checkpoint_features_path(data_path, "Arts", "SASRec")
    written = features_file.stat().st_mtime_ns
    # Arts.item changed since the checkpoint was written, so a new export would fail its data check: it is reused.
    tokenize_main(["--dataset", "Arts", "--data_path", str(data_path), "--checkpoint", str(checkpoint),
                   "--item_field", "text_codes", "--device", "cpu", "--set", *TOKENIZER])
    assert features_file.stat().st_mtime_ns == written and FeaturePaths.of(features_file).progress.exists()
    assert content_sources(data_path / "Arts", "Arts") == {"text_codes": "id-embedding:SASRec"}
    with pytest.raises(SystemExit) as stop:
        tokenize_main(["--dataset", "Arts", "--data_path", str(data_path), "--features", str(features_file),
                       "--item_field", "sasrec", "--device", "cpu"])
    assert stop.value.code == 2
    assert "item_field 'sasrec' does not end in _codes" in capsys.readouterr().err
