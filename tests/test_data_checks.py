"""recbole_qrec.data.check_dataset and the feature/code loaders on real small files: every problem is one clear
error naming the file (and line), and nothing is written; the fingerprint identifies the files' bytes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from recbole.data import create_dataset

from dataset_prep.convert import convert
from recbole_qrec.compat import CEngineCsvPandas
from recbole_qrec.config import build_config
from recbole_qrec.data import available_datasets, check_dataset, ensure_atomic_files
from recbole_qrec.data.atomic_files import item_tokens
from recbole_qrec.data.features import NonFiniteFeaturesError, codes_to_features
from recbole_qrec.data.item_features import load_item_features
from recbole_qrec.errors import DataMismatchError, DatasetNotFoundError, MalformedDataError
from recbole_qrec.quick_start import run_recbole_qrec
from recbole_qrec.tokenize import load_tokenizer_config, tokenize_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBSET = {"users": 500, "items": 2650, "interactions": 5541}  # the first 500 users of Instruments
FAST = {"epochs": 1, "train_batch_size": 256, "eval_batch_size": 256, "use_gpu": False}
TIGER_TINY = {**FAST, "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
              "MAX_ITEM_LIST_LENGTH": 8}
FDSA_TINY = {**FAST, "hidden_size": 32, "inner_size": 64, "n_layers": 1}
TOKENIZER_TINY = {"epochs": 1, "hidden_dims": [32], "batch_size": 512, "codebook_size": 16, "code_dim": 8}
ITEM_ROW = "99999\tA_1 B_1 C_1 D_1\ta_1 b_1 c_1 d_1"
SHORT_USER = ["99999\t0\t0", "99999\t1\t1"]  # two interactions: no validation one under leave-one-out


def tree(root: Path) -> list[tuple[str, int, int]]:
    """Every file under ``root`` with its size and modification time: equal lists mean nothing was written."""
    return sorted((str(path.relative_to(root)), path.stat().st_size, path.stat().st_mtime_ns)
                  for path in root.rglob("*") if path.is_file())


@pytest.fixture
def data(work: Path, tmp_path: Path) -> Path:
    """A private copy of the converted 500-user subset: ``tmp_path/dataset/Instruments/``."""
    shutil.copytree(work / "dataset" / "Instruments", tmp_path / "dataset" / "Instruments")
    return tmp_path / "dataset"


def subset_config(data_path: Path, model: str = "SASRec", dataset: str = "Instruments", **settings):
    return build_config(model, dataset, config_dict={"data_path": str(data_path), "allow_data_mismatch": True,
                                                     **settings})


def rewrite(path: Path, change: Callable[[list[str]], list[str]]) -> None:
    """Apply ``change`` to the lines of ``path`` (the last element is "" when the file ends with a newline)."""
    path.write_text("\n".join(change(path.read_text().split("\n"))))


def set_line(number: int, text: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: lines[: number - 1] + [text] + lines[number:]


def inter(folder: Path) -> Path:
    return folder / "Instruments" / "Instruments.inter"


def item(folder: Path) -> Path:
    return folder / "Instruments" / "Instruments.item"


BROKEN_FILES = {
    "non-numeric float": (lambda d: rewrite(inter(d), set_line(5, "0\t3\tabc")), {},
                          r"Instruments.inter line 5: timestamp value 'abc' is not a number, but the header declares "
                          r"timestamp:float — "),
    "NaN": (lambda d: rewrite(inter(d), set_line(5, "0\t3\tnan")), {},
            r"Instruments.inter line 5: timestamp value 'nan' is not finite \(NaN or infinity\)"),
    "infinity": (lambda d: rewrite(inter(d), set_line(6, "0\t4\t-inf")), {},
                 r"Instruments.inter line 6: timestamp value '-inf' is not finite"),
    "missing field": (lambda d: rewrite(inter(d), set_line(7, "0\t3")), {},
                      r"Instruments.inter line 7: 2 fields, but the header has 3 \(user_id, item_id, timestamp\) — "),
    "extra field": (lambda d: rewrite(inter(d), set_line(7, "0\t3\t4\t1")), {},
                    r"Instruments.inter line 7: 4 fields, but the header has 3"),
    "truncated last line": (lambda d: rewrite(inter(d), lambda lines: lines[:-2] + [lines[-2][:3]]), {},
                            rf"Instruments.inter line {SUBSET['interactions'] + 1}: the file ends without a newline, so "
                            r"its last row may be cut off"),
    "header lacks timestamp": (lambda d: rewrite(inter(d), set_line(1, "user_id:token\titem_id:token\ttime:float")), {},
                               r"Instruments.inter line 1: the header has columns \['user_id', 'item_id', 'time'\] but "
                               r"the config loads \['timestamp'\]"),
    "header lacks types": (lambda d: rewrite(inter(d), set_line(1, "user_id\titem_id\ttimestamp")), {},
                           r"Instruments.inter line 1: header 'user_id\\titem_id\\ttimestamp' does not name every "
                           r"column as name:type"),
    "unknown column type": (lambda d: rewrite(inter(d), set_line(1, "user_id:token\titem_id:token\ttimestamp:date")), {},
                            r"Instruments.inter line 1: column 'timestamp' has type 'date', which RecBole does not "
                            r"read — declare it as one of token, token_seq, float, float_seq"),
    "item id typed float": (lambda d: rewrite(inter(d), set_line(1, "user_id:token\titem_id:float\ttimestamp:float")),
                            {}, r"Instruments.inter line 1: the header declares item_id:float, but RecBole reads "
                                r"item_id as token — write item_id:token in the header"),
    "timestamp typed token": (lambda d: rewrite(inter(d), set_line(1, "user_id:token\titem_id:token\ttimestamp:token")),
                              {}, r"Instruments.inter line 1: the header declares timestamp:token, but RecBole reads "
                                  r"timestamp as float — "),
    "not UTF-8": (lambda d: inter(d).write_bytes(inter(d).read_bytes().replace(b"\n0\t3\t", b"\n0\t\xff\t", 1)), {},
                  r"Instruments.inter line \d+: bytes that are not utf-8 text"),
    "empty": (lambda d: inter(d).write_text(""), {}, r"Instruments.inter is empty — "),
    "byte-order mark": (lambda d: inter(d).write_bytes(b"\xef\xbb\xbf" + inter(d).read_bytes()), {},
                        r"Instruments.inter line 1: the file starts with a byte-order mark \(BOM\), which RecBole reads "
                        r"as part of the first column's name — save it as utf-8 without BOM"),
    "empty item id": (lambda d: rewrite(inter(d), set_line(3, "0\t\t1")), {},
                      r"Instruments.inter line 3: item_id is empty — every row needs its item_id"),
    "no rows": (lambda d: rewrite(inter(d), lambda lines: lines[:1] + [""]), {},
                r"Instruments.inter has a header but no interactions — "),
    "user with two interactions": (lambda d: rewrite(inter(d), lambda lines: lines[:-1] + [*SHORT_USER, ""]), {},
                                   r"Instruments.inter: 1 user\(s\) have fewer than 3 interactions \(e.g. 99999\), too "
                                   r"few for the leave-one-out split's training, validation and test interaction, so "
                                   r"RecBole would never evaluate them — "),
    ".item row for an unknown item": (lambda d: rewrite(item(d), lambda lines: lines[:-1] + [ITEM_ROW, ""]), {},
                                      r"Instruments.item has rows for 1 item\(s\) that Instruments.inter never mentions "
                                      r"\(e.g. 99999\) — "),
    ".inter item without a .item row": (lambda d: rewrite(item(d), lambda lines: lines[:1] + lines[2:]), {},
                                        r"Instruments.item has no row for 1 item\(s\) of Instruments.inter \(e.g. 0\)"),
    "duplicate .item row": (lambda d: rewrite(item(d), lambda lines: lines[:-1] + [lines[1], ""]), {},
                            rf"Instruments.item line {SUBSET['items'] + 2}: a second row for item_id '0' \(first on "
                            r"line 2\) — keep one row per item_id; "),
    "repeated interaction": (lambda d: rewrite(inter(d), lambda lines: lines[:-1] + [lines[4], ""]), {},
                             rf"Instruments.inter line {SUBSET['interactions'] + 2}: a second row for user_id '0', "
                             r"item_id '3', timestamp '3' \(first on line 5\) — keep one row per user_id, item_id, "
                             r"timestamp; "),
    "repeated interaction before a bad row": (
        lambda d: rewrite(inter(d), lambda lines: lines[:-1] + [lines[4], "0\t3\tabc", ""]), {},
        rf"Instruments.inter line {SUBSET['interactions'] + 2}: a second row for user_id '0', item_id '3', "
        r"timestamp '3' \(first on line 5\)"),
    "bad row before a repeated interaction": (
        lambda d: rewrite(inter(d), lambda lines: lines[:-1] + ["0\t3\tabc", lines[4], ""]), {},
        rf"Instruments.inter line {SUBSET['interactions'] + 2}: timestamp value 'abc' is not a number"),
    "the earliest of two repeated rows": (
        lambda d: rewrite(inter(d), lambda lines: lines[:-1] + [lines[10], lines[4], ""]), {},
        rf"Instruments.inter line {SUBSET['interactions'] + 2}: a second row for .* \(first on line 11\)"),
    ".item lacks a declared content field": (
        lambda d: rewrite(item(d), lambda lines: [line.split("\t", 2)[0] + "\t" + line.split("\t", 2)[-1]
                                                  if line else line for line in lines]),
        {}, r"Instruments.item line 1: the header has columns \['item_id', 'text_codes'\] but the config loads "
            r"\['image_codes'\]"),
    ".item absent": (lambda d: item(d).unlink(), {},
                     r"Instruments.item not found, but item_content_fields are \['text_codes', 'image_codes'\] — "),
    "NaN in a float_seq column": (
        lambda d: rewrite(item(d), lambda lines: [lines[0] + "\temb:float_seq", lines[1] + "\t0.5 nan",
                                                  *(line + "\t0.5 0.5" for line in lines[2:-1]), ""]),
        {}, r"Instruments.item line 2: emb value 'nan' is not finite"),
    "named items where feature rows are indexed by id": (
        lambda d: rewrite(inter(d), set_line(2, "0\tB00X\t0")), {"model": "QBert4Rec", "text_feature_file": "x.npy"},
        r"Instruments.inter line 2: item_id 'B00X' is not an integer id, but feature files are indexed by item id"),
}


@pytest.mark.parametrize("case", list(BROKEN_FILES))
def test_a_broken_atomic_file_stops_the_run_before_anything_is_written(case, data, tmp_path, monkeypatch):
    corrupt, settings, message = BROKEN_FILES[case]
    corrupt(data)
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    settings = dict(settings)
    model = settings.pop("model", "SASRec")
    with pytest.raises(MalformedDataError, match=message) as err:
        run_recbole_qrec(model, "Instruments", config_dict={"data_path": "dataset", "allow_data_mismatch": True,
                                                           **FAST, **settings})
    assert "\n" not in str(err.value) and " — " in str(err.value)
    assert tree(tmp_path) == before, "a failed run wrote files"


def test_catalogue_items_without_interactions_are_allowed_when_the_model_loads_the_item_file(data):
    rewrite(item(data), lambda lines: lines[:-1] + [ITEM_ROW, ""])
    fingerprint = check_dataset(subset_config(data, "QBert4Rec"))  # load_col: {item: [item_id]}: a cold-start item
    assert (fingerprint["users"], fingerprint["items"], fingerprint["interactions"]) == tuple(SUBSET.values())


def test_short_users_are_allowed_when_recbole_filters_them(data):
    rewrite(inter(data), lambda lines: lines[:-1] + [*SHORT_USER, ""])
    fingerprint = check_dataset(subset_config(data, user_inter_num_interval="[3,inf)"))
    assert fingerprint["users"] == SUBSET["users"] + 1


def test_fingerprint_is_stable_and_follows_every_byte(data, caplog):
    config = subset_config(data)
    first = check_dataset(config)
    assert "has 500 users, 2,650 items, 5,541 interactions, but its expected_counts" in caplog.text
    assert config["data_fingerprint"] == first and first == check_dataset(subset_config(data))
    assert {key: first[key] for key in SUBSET} == SUBSET
    assert first["files"] == ["Instruments.inter", "Instruments.item"] and len(first["sha256"]) == 64
    assert first["expected_counts_match"] is False  # a subset, run with allow_data_mismatch
    raw = inter(data).read_bytes()
    inter(data).write_bytes(raw.replace(b"\t1\n", b"\t7\n", 1))  # one timestamp changes, the counts do not
    changed = check_dataset(subset_config(data))
    assert changed["sha256"] != first["sha256"] and {key: changed[key] for key in SUBSET} == SUBSET
    inter(data).write_bytes(raw)
    assert check_dataset(subset_config(data))["sha256"] == first["sha256"]


@pytest.fixture(scope="module")
def full_instruments(amazon_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full") / "dataset"
    convert("Instruments", src=amazon_dir, out=out)
    return out


def test_the_full_instruments_data_has_its_expected_counts(full_instruments):
    fingerprint = check_dataset(build_config("SASRec", "Instruments", config_dict={"data_path": str(full_instruments)}))
    assert (fingerprint["users"], fingerprint["items"], fingerprint["interactions"]) == (17112, 6250, 136226)
    assert fingerprint["expected_counts_match"] is True


def test_a_truncated_copy_fails_on_its_counts(full_instruments, tmp_path, monkeypatch, caplog):
    shutil.copytree(full_instruments / "Instruments", tmp_path / "dataset" / "Instruments")
    rewrite(inter(tmp_path / "dataset"), lambda lines: lines[:100_001] + [""])  # whole rows: only the counts tell
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    with pytest.raises(DataMismatchError) as err:
        run_recbole_qrec("SASRec", "Instruments", config_dict={"data_path": "dataset", **FAST})
    assert str(err.value).startswith(
        "dataset Instruments in dataset/Instruments/ has 11,451 users, 6,247 items, 100,000 interactions, but its "
        "expected_counts (properties/dataset/Instruments.yaml) are 17,112 users, 6,250 items, 136,226 interactions — "
        "re-convert the full dataset with `python -m dataset_prep.convert --dataset Instruments --src DIR --out "
        "dataset/`, or pass --allow_data_mismatch=True"
    )
    assert tree(tmp_path) == before
    allowed = build_config("SASRec", "Instruments", config_dict={"data_path": "dataset", "allow_data_mismatch": True})
    with pytest.raises(MalformedDataError, match=r"Instruments.item has rows for 3 item\(s\) that Instruments.inter "
                                                 r"never mentions \(e.g. 6247, 6248, 6249\)"):
        check_dataset(allowed)  # allowed, the count mismatch is only logged; the cut .inter disagrees with .item
    assert "running anyway (allow_data_mismatch=True)" in caplog.text


def test_an_unknown_dataset_lists_the_datasets_found_and_the_convert_command(data, tmp_path):
    assert available_datasets(data) == ["Instruments"] and available_datasets(tmp_path / "absent") == []
    config = subset_config(data, dataset="Nope")
    with pytest.raises(DatasetNotFoundError) as err:
        ensure_atomic_files(config)
    assert str(err.value) == (
        f"dataset 'Nope' not found under data_path '{data.as_posix()}/' (found: Instruments) — convert it with "
        f"`python -m dataset_prep.convert --dataset Nope --src DIR --out {data.as_posix()}/` or pass --data_path"
    )


def test_the_command_line_reports_an_unknown_dataset_in_one_line_and_writes_nothing(data, tmp_path):
    before = tree(tmp_path)
    done = subprocess.run([sys.executable, "-m", "recbole_qrec", "--model=SASRec", "--dataset=Nope"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr == ("error: dataset 'Nope' not found under data_path 'dataset/' (found: Instruments) — convert "
                           "it with `python -m dataset_prep.convert --dataset Nope --src DIR --out dataset/` or pass "
                           "--data_path\n")
    assert tree(tmp_path) == before


def test_a_code_error_found_while_recbole_loads_the_item_file_ends_the_run_without_a_pandas_warning(data, tmp_path):
    rewrite(item(data), lambda lines: [lines[0], lines[1].rsplit(" ", 1)[0], *lines[2:]])  # item 0: 3 text levels
    before = tree(tmp_path)
    done = subprocess.run([sys.executable, "-m", "recbole_qrec", "--model=TIGER", "--dataset=Instruments",
                           "--allow_data_mismatch=True", *(f"--{key}={value}" for key, value in TIGER_TINY.items())],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1] == ("error: dataset/Instruments/Instruments.item: items have different numbers "
                                            "of code levels [3, 4] — every item needs the same number of levels")
    assert tree(tmp_path) == before


# Feature and code files

@pytest.fixture
def text_features(amazon_dir: Path) -> np.ndarray:
    """Proxy text features of the subset's items 0..2649 (its item ids are contiguous)."""
    index = json.loads((amazon_dir / "Instruments" / "Instruments.index_lemb.json").read_text())
    codes = {int(key): [int(token[3:-1]) for token in tokens] for key, tokens in index.items()
             if int(key) < SUBSET["items"]}
    return codes_to_features(codes, SUBSET["items"]).features


BAD_FEATURES = {
    "NaN row": (lambda m: np.where(np.arange(len(m))[:, None] == 7, np.nan, m), NonFiniteFeaturesError,
                r"bad.npy: NaN or infinite features for 1 item\(s\), ids 7 — "),
    "missing rows": (lambda m: m[:100], MalformedDataError,
                     r"bad.npy has 100 rows but the dataset has item ids up to 2,649 — row i must hold item i's "
                     r"features"),
    "extra rows": (lambda m: np.concatenate([m, m[:5]]), MalformedDataError,
                   r"bad.npy has 2,655 rows but the dataset's largest item id is 2,649, so 5 row\(s\) belong to items "
                   r"that do not exist — "),
    "empty file": (lambda m: b"", MalformedDataError,
                   r"bad.npy is not a readable .npy file \(No data left in file\) — "),
    "beyond float32": (lambda m: m.astype(np.float64) * 1e300, MalformedDataError,
                       r"bad.npy \(float64\) has values beyond the float32 range \(±3.4e38\) for 2650 item\(s\), ids 0, "
                       r"1, .* — scale the features"),
    "not a matrix": (lambda m: m[:, 0], MalformedDataError,
                     r"bad.npy has shape \(2650,\) \(float32\) — features must be a 2-D float matrix"),
    "no columns": (lambda m: m[:, :0], MalformedDataError,
                   r"bad.npy has shape \(2650, 0\) \(float32\) — features must be a 2-D float matrix with at "
                   r"least one column"),
    "npz archive": (lambda m: {"features": m}, MalformedDataError,
                    r"bad.npy is a .npz archive of arrays \['features'\], not one .npy matrix — save the feature matrix "
                    r"alone with numpy.save"),
    "only zero rows": (np.zeros_like, MalformedDataError,
                       r"text_feature_file .*bad.npy holds only zero rows for the 2,650 items of Instruments, and a zero "
                       r"row means 'no text for this item' — "),
}


def save_matrix(path: Path, value: np.ndarray | dict[str, np.ndarray] | bytes) -> None:
    """``value`` as a .npy file, a dict of arrays as a .npz archive, or bytes as they are, under ``path`` whatever its
    suffix."""
    with open(path, "wb") as handle:
        if isinstance(value, bytes):
            handle.write(value)
        elif isinstance(value, dict):
            np.savez(handle, **value)
        else:
            np.save(handle, value)


@pytest.mark.parametrize("case", [case for case in BAD_FEATURES if case != "only zero rows"])
def test_the_tokenizer_refuses_bad_feature_files_and_writes_nothing(case, data, text_features, tmp_path):
    change, error, message = BAD_FEATURES[case]
    save_matrix(tmp_path / "bad.npy", change(text_features))
    np.save(tmp_path / "good.npy", text_features)
    before = tree(tmp_path)
    with pytest.raises(error, match=message):
        tokenize_dataset("Instruments", [tmp_path / "good.npy", tmp_path / "bad.npy"],
                         load_tokenizer_config(REPO_ROOT / "properties" / "tokenizer.yaml", TOKENIZER_TINY), data, "cpu")
    assert tree(tmp_path) == before


def test_a_feature_path_that_is_a_folder_is_named_as_one(data, tmp_path):
    (tmp_path / "features.npy").mkdir()
    before = tree(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"feature file .*features.npy is a folder, not a .npy file — create "):
        tokenize_dataset("Instruments", [tmp_path / "features.npy"],
                         load_tokenizer_config(REPO_ROOT / "properties" / "tokenizer.yaml", TOKENIZER_TINY), data, "cpu")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("case", ["NaN row", "missing rows", "extra rows", "npz archive", "beyond float32",
                                  "no columns", "only zero rows"])
def test_qbert4rec_refuses_bad_feature_files(case, data, text_features, tmp_path):
    change, error, message = BAD_FEATURES[case]
    save_matrix(tmp_path / "bad.npy", change(text_features))
    config = subset_config(data, "QBert4Rec", text_feature_file=str(tmp_path / "bad.npy"))
    with pytest.raises(error, match=message):
        load_item_features(config, create_dataset(config))


# Any dataset: a name the code has never seen, with no YAML

@pytest.fixture
def my_shop(instruments_subset: Path, tmp_path: Path) -> Path:
    """The subset converted under a new name, ``MyShop``, with both code files."""
    source, target = instruments_subset / "Instruments", tmp_path / "processed" / "MyShop"
    target.mkdir(parents=True)
    for path in source.iterdir():
        shutil.copy(path, target / path.name.replace("Instruments", "MyShop"))
    convert("MyShop", src=tmp_path / "processed", out=tmp_path / "dataset")
    return tmp_path / "dataset"


def test_a_new_dataset_declares_its_content_fields_from_the_item_header(my_shop):
    assert not (REPO_ROOT / "properties" / "dataset" / "MyShop.yaml").exists()
    config = build_config("QBert4Rec", "MyShop", config_dict={"data_path": str(my_shop)})
    assert config["item_content_fields"] is None
    fingerprint = check_dataset(config)
    assert config["item_content_fields"] == ["image_codes", "text_codes"]
    assert fingerprint["expected_counts_match"] is True and fingerprint["users"] == SUBSET["users"]
    features = load_item_features(config, create_dataset(config))
    assert features.modalities == ["text", "image"]


def test_bytes_that_are_not_utf8_in_the_item_file_of_a_dataset_without_yaml_are_one_error(my_shop):
    item_file = my_shop / "MyShop" / "MyShop.item"
    item_file.write_bytes(item_file.read_bytes().replace(b"\n1\t", b"\n1\t\xff", 1))
    config = build_config("QBert4Rec", "MyShop", config_dict={"data_path": str(my_shop)})
    with pytest.raises(MalformedDataError, match=r"MyShop.item line 3: bytes that are not utf-8 text — save the file "
                                                 r"as utf-8 \(or set encoding\)$"):
        check_dataset(config)  # its content fields are read from the .item header first
    with pytest.raises(MalformedDataError, match=r"MyShop.item line 3: bytes that are not utf-8 text — save the file "
                                                 r"as utf-8$"):
        item_tokens(my_shop, "MyShop")  # the items the tokenizer codes


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("model", "settings"), [("TIGER", TIGER_TINY), ("FDSA", FDSA_TINY)])
def test_a_new_dataset_trains_with_no_hand_written_yaml(model, settings, my_shop, instruments_subset, tmp_path,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = run_recbole_qrec(model, "MyShop", config_dict={"data_path": "dataset", **settings})
    assert record["model"] == model and record["dataset"] == "MyShop" and record["epochs"] == 1
    assert all(0.0 <= value <= 1.0 for value in record["test"].values())
    # The same files under the bundled name, whose YAML declares the content fields, give the same run.
    convert("Instruments", src=instruments_subset, out=tmp_path / "dataset")
    bundled = run_recbole_qrec(model, "Instruments",
                               config_dict={"data_path": "dataset", "allow_data_mismatch": True, **settings})
    assert record["test"] == bundled["test"] and record["valid"] == bundled["valid"]


ODD_VALUES = ("id:token\tx:float\tv:float_seq\tt:token_seq\n1\t0.1\t1.5 2.25\ta_1 b_2\n2\t1e-7\t\tc_3\n"
              '3\t\t3.14159265358979323846 -0\t"a quoted token"\n4\t935599.989840342945\t-28144.60687437467338\t\n'
              "5\t-0.30000000000000004\tnan\tx_9\n")


@pytest.mark.parametrize("separator", ["\t", "::"])
def test_recbole_reads_atomic_files_with_the_c_parser_to_the_same_frames(data, tmp_path, separator):
    """RecBole's dataset module reads atomic files through :class:`CEngineCsvPandas`: with a one-character separator
    the C parser gives the frame RecBole's Python parser gives, on the real files and on values the parsers could
    read apart (decimals that pandas' parsers round differently, exponents, empty fields, quotes); a longer separator
    stays with the Python parser."""
    from recbole.data.dataset import dataset as recbole_dataset

    subset_config(data)  # building a config prepares RecBole
    assert isinstance(recbole_dataset.pd, CEngineCsvPandas)
    odd = tmp_path / "odd.csv"
    odd.write_text(ODD_VALUES.replace("\t", separator))
    files = [odd, *sorted((data / "Instruments").glob("Instruments.*"))] if separator == "\t" else [odd]
    for path in files:
        if path.suffix == ".json":
            continue
        header = path.read_text().split("\n", 1)[0].split(separator)
        options = {"delimiter": separator, "usecols": header, "engine": "python",
                   "dtype": {field: np.float64 if field.endswith(":float") else str for field in header}}
        pd.testing.assert_frame_equal(recbole_dataset.pd.read_csv(path, **options), pd.read_csv(path, **options),
                                      check_exact=True)
