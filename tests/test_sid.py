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


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        (["0\ta_1 b_2"], r"partial.sid: 2649 items have no sid \(e.g. 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, \.\.\.\) — re-create"),
        (None, r"partial.sid: 1 row\(s\) for items that dataset Instruments does not have \(e.g. 99999\) — "),
        (["0\ta1 b2"], r"partial.sid line 2: sid token 'a1' is not of the form 'a_12 b_7 c_201 d_3'"),
        (["0\tb_224 a_170"], r"partial.sid line 2: sid token 'b_224' stands at level 1, whose letter is 'a': the levels "
                              r"go a, b, c, \.\.\. in order"),
        (None, r"partial.sid: item '2' has code 99999 in its sid, more than the 2650 items and than 1024 codes per "
               r"level — a typo\?"),
        (["0\ta_1 b_2", "0\ta_1 b_3"], r"partial.sid line 3: a second row for item '0' — keep one row per item"),
        (["0\ta_1\tb_2"], r"partial.sid line 2: 3 fields, the header has 2 — "),
        (["0\ta_1 b_\udcff2"], r"partial.sid line 2: bytes that are not utf-8 text — save the file as utf-8$"),
    ],
)
def test_a_bad_code_file_is_a_clear_error(subset_dataset, tmp_path, rows, fragment):
    dataset, _ = subset_dataset
    tokens = dataset.field2id_token["item_id"][1:]
    if rows is None and "typo" in fragment:  # every item of the dataset, one with a far too large code
        rows = [f"{token}\ta_1 b_{99999 if token == '2' else index}" for index, token in enumerate(tokens)]
    elif rows is None:  # every item of the dataset, and one it does not have
        rows = [f"{token}\ta_1 b_{index}" for index, token in enumerate(tokens)] + ["99999\ta_1 b_0"]
    partial = tmp_path / "partial.sid"
    text = "item_id:token\tsid:token_seq\n" + "\n".join(rows) + "\n"
    partial.write_bytes(text.encode("utf-8", "surrogateescape"))  # \udcff: the byte 0xff
    with pytest.raises(MalformedDataError, match=fragment):
        load_code_table(dataset, partial, "sid", pad_code=256)


def test_a_missing_code_file_names_the_commands_that_write_it(subset_dataset, tmp_path):
    dataset, _ = subset_dataset
    with pytest.raises(MalformedDataError, match="does not exist — create semantic IDs with `python -m recbole_qrec.tokenize`"):
        load_code_table(dataset, tmp_path / "absent.sid", "sid", pad_code=256)
