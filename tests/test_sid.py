"""Code tables aligned with RecBole's internal item ids (recbole_qrec.data.sid)."""

from __future__ import annotations

import json

import pytest
from recbole.data import create_dataset

from dataset_prep.convert import convert
from recbole_qrec.config import build_config
from recbole_qrec.data.sid import load_code_table
from recbole_qrec.errors import MalformedDataError


@pytest.fixture(scope="module")
def subset_dataset(instruments_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("sid")
    convert("Instruments", src=instruments_subset, out=out)
    config = build_config("SASRec", "Instruments", cmd_args=[f"--data_path={out}"])
    return create_dataset(config), out / "Instruments"


def test_rows_follow_recbole_internal_ids(subset_dataset, amazon_dir):
    dataset, folder = subset_dataset
    table = load_code_table(dataset, folder / "Instruments.item", "image_codes", pad_code=256)
    index = json.loads((amazon_dir / "Instruments" / "Instruments.index_vitemb.json").read_text())
    assert table.shape == (dataset.item_num, 4)
    assert table[0].tolist() == [256] * 4
    for internal_id in (1, 2, dataset.item_num // 2, dataset.item_num - 1):
        token = dataset.field2id_token["item_id"][internal_id]
        assert table[internal_id].tolist() == [int(t.strip("<>").split("_")[1]) for t in index[token]]


def test_missing_items_and_bad_tokens_are_clear_errors(subset_dataset, tmp_path):
    dataset, _ = subset_dataset
    partial = tmp_path / "partial.sid"
    partial.write_text("item_id:token\tsid:token_seq\n0\ta_1 b_2\n")
    with pytest.raises(MalformedDataError, match="items have no sid"):
        load_code_table(dataset, partial, "sid", pad_code=256)
    bad = tmp_path / "bad.sid"
    bad.write_text("item_id:token\tsid:token_seq\n0\ta1 b2\n")
    with pytest.raises(MalformedDataError, match="must look like"):
        load_code_table(dataset, bad, "sid", pad_code=256)
    with pytest.raises(MalformedDataError, match="recbole_qrec.tokenize"):
        load_code_table(dataset, tmp_path / "absent.sid", "sid", pad_code=256)
