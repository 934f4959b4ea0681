"""python -m recbole_qrec.tokenize: features -> RQ-VAE -> <dataset>.sid + report, read back through RecBole."""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading

import numpy as np
import pytest
from recbole.data import create_dataset

from conftest import work_config
from dataset_prep.convert import convert
from dataset_prep.features import code_file_features
from recbole_qrec.config import build_config
from recbole_qrec.data.sid import load_code_table
from recbole_qrec.errors import MalformedDataError
from recbole_qrec.tokenize import (DEFAULT_CONFIG, load_tokenizer_config, parse_overrides, semantic_ids_lock,
                                   tokenize_dataset)
from recbole_qrec.tokenize import main as tokenize_main

TINY = ["epochs=2", "hidden_dims=[64]", "batch_size=512", "codebook_size=64", "code_dim=8"]
SUBSET_ITEMS = 2650  # the 500-user subset's items are the ids 0..2649


@pytest.fixture(scope="module")
def workspace(instruments_subset, amazon_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenize")
    convert("Instruments", src=instruments_subset, out=root / "dataset")
    features = root / "text.npy"
    np.save(features, code_file_features(amazon_dir / "Instruments" / "Instruments.index_lemb.json")[:SUBSET_ITEMS])
    return root, features


def test_cli_writes_collision_free_sids_that_recbole_models_can_read(workspace, capsys):
    root, features = workspace
    tokenize_main(["--dataset", "Instruments", "--features", str(features), "--data_path", str(root / "dataset"),
                   "--device", "cpu", "--set", *TINY])
    assert "collisions" in capsys.readouterr().out
    folder = root / "dataset" / "Instruments"
    lines = (folder / "Instruments.sid").read_text().splitlines()
    assert lines[0] == "item_id:token\tsid:token_seq" and len(lines) == 1 + SUBSET_ITEMS
    tuples = [line.split("\t")[1] for line in lines[1:]]
    assert len(set(tuples)) == len(tuples), "semantic IDs collide"
    assert all(token[0] in "abcd" for token in tuples[0].split())

    report = json.loads((folder / "Instruments.sid.json").read_text())
    assert report["n_items"] == SUBSET_ITEMS and report["levels"] == 4 and report["collision_rate_after"] == 0.0
    assert 0.0 < report["collision_rate_before"] <= 1.0
    assert len(report["utilisation"]) == 4 and all(0 < u <= 1 for u in report["utilisation"])
    assert all(1.0 <= p <= 64 for p in report["perplexity"]) and report["config"]["codebook_size"] == 64
    assert not list(folder.glob("*.tmp"))

    config = build_config("SASRec", "Instruments", cmd_args=[f"--data_path={root / 'dataset'}"])
    dataset = create_dataset(config)
    table = load_code_table(dataset, folder / "Instruments.sid", "sid", pad_code=64)
    assert table.shape == (dataset.item_num, 4) and int(table[1:].max()) < 64
    assert len({tuple(row) for row in table[1:].tolist()}) == dataset.item_num - 1


def test_items_listed_only_in_the_item_file_get_semantic_ids_too(workspace, tmp_path):
    root, features = workspace
    shutil.copytree(root / "dataset" / "Instruments", tmp_path / "Instruments")
    with open(tmp_path / "Instruments" / "Instruments.item", "a", encoding="utf-8") as handle:
        handle.write(f"{SUBSET_ITEMS}\tA_1 B_2 C_3 D_4\ta_1 b_2 c_3 d_4\n")  # a catalogue item without interactions
    matrix = np.load(features)
    np.save(tmp_path / "catalogue.npy", np.concatenate([matrix, matrix[:1]]))
    config = load_tokenizer_config(DEFAULT_CONFIG, parse_overrides(TINY))
    result = tokenize_dataset("Instruments", [tmp_path / "catalogue.npy"], config, tmp_path, "cpu")
    lines = (tmp_path / "Instruments" / "Instruments.sid").read_text().splitlines()
    assert len(result.codes) == SUBSET_ITEMS + 1 and lines[-1].startswith(f"{SUBSET_ITEMS}\t")
    with pytest.raises(MalformedDataError, match=r"catalogue.npy has 2,651 rows but the dataset's largest item id is "
                                                 r"2,649, so 1 row\(s\) belong to items that do not exist"):
        tokenize_dataset("Instruments", [tmp_path / "catalogue.npy"], config, root / "dataset", "cpu")


def test_bad_settings_are_clear_errors(workspace, capsys, monkeypatch):
    root, features = workspace
    monkeypatch.delenv("QREC_DEBUG", raising=False)
    args = ["--dataset", "Instruments", "--data_path", str(root / "dataset"), "--device", "cpu", "--set", *TINY]
    with pytest.raises(SystemExit) as exited:
        tokenize_main([*args, "--features", str(features), "--set", "epoch=3"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("error: Unknown tokenizer setting 'epoch' — did you mean 'epochs'?")



@pytest.mark.parametrize(("device", "message"), [("gpu", "--device 'gpu' is not a torch device — use cpu, cuda"),
                                                 ("cuda:99", "--device cuda:99 is not available here")])
def test_an_unusable_device_is_one_error_line_and_writes_nothing(workspace, capsys, monkeypatch, device, message):
    root, features = workspace
    monkeypatch.delenv("QREC_DEBUG", raising=False)
    before = sorted((path, path.stat().st_mtime_ns) for path in root.rglob("*"))
    with pytest.raises(SystemExit) as exited:
        tokenize_main(["--dataset", "Instruments", "--data_path", str(root / "dataset"), "--device", device,
                       "--features", str(features), "--set", *TINY])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    assert sorted((path, path.stat().st_mtime_ns) for path in root.rglob("*")) == before


@pytest.mark.parametrize(("given", "message"), [
    (["--features", "FEATURES", "FEATURES"], "--features names .*text.npy more than once — give each modality's "
                                             "feature file once$"),
    (["--features", "FEATURES", "FEATURES", "--item_field", "text_codes", "text_codes"],
     "item_field names text_codes more than once — give each content-code field once, one per feature file$"),
])
def test_a_feature_file_or_item_field_named_twice_is_one_error_line(workspace, capsys, monkeypatch, given, message):
    root, features = workspace
    monkeypatch.delenv("QREC_DEBUG", raising=False)
    before = sorted((path, path.stat().st_mtime_ns) for path in root.rglob("*"))
    with pytest.raises(SystemExit) as exited:
        tokenize_main(["--dataset", "Instruments", "--data_path", str(root / "dataset"), "--device", "cpu",
                       *[str(features) if arg == "FEATURES" else arg for arg in given],
                       "--set", *TINY, "quantizers=per_modality", "collision_strategy=append_level"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(f"^error: {message}", err.strip()), err
    assert sorted((path, path.stat().st_mtime_ns) for path in root.rglob("*")) == before


@pytest.mark.parametrize(("config_text", "settings", "fragment"), [
    (None, [], r"Config file '.*missing.yaml' does not exist — check the path given to --config$"),
    ("levels: [4\n", [], r"Config file '.*tokenizer.yaml' is not valid YAML at line 2"),
    ("- levels\n", [], r"Config file '.*tokenizer.yaml' holds a YAML list, not a mapping — "),
    ("# nothing\n", [], r"Config file '.*tokenizer.yaml' is empty or holds only comments — .* leave it out of --config$"),
    ("levels: 2\n", ["hidden_dims=[64"], r"--set hidden_dims=\[64: the value is not valid YAML \(expected ',' or ']'"),
])
def test_a_bad_tokenizer_yaml_or_set_value_is_one_error_line(tmp_path, capsys, monkeypatch, config_text, settings,
                                                             fragment):
    monkeypatch.delenv("QREC_DEBUG", raising=False)
    config = tmp_path / ("missing.yaml" if config_text is None else "tokenizer.yaml")
    if config_text is not None:
        config.write_text(config_text, encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        tokenize_main(["--dataset", "Instruments", "--data_path", str(tmp_path), "--features", str(tmp_path / "t.npy"),
                       "--config", str(config), "--set", *settings])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(f"^error: {fragment}", err.strip()), err
    assert sorted(path.name for path in tmp_path.iterdir()) == ([] if config_text is None else ["tokenizer.yaml"])


# Runs sharing a data_path take turns at a model's own tokenize stage

def test_a_second_run_waits_for_the_stage_lock_of_the_first(work, caplog):
    """While one run holds QBert4Rec's stage lock of the data_path, another QBert4Rec run (any target) does not get
    past it and logs that it waits; a model that reads no stage of its own (SASRec) is not held up."""
    caplog.set_level(logging.INFO)
    first, second = work_config("QBert4Rec", work), work_config("QBert4Rec", work, seed=7)
    entered = threading.Event()
    order = []

    def other_run():
        with semantic_ids_lock(second):
            order.append("second")
            entered.set()

    with semantic_ids_lock(first):
        thread = threading.Thread(target=other_run)
        thread.start()
        assert not entered.wait(0.5), "the second run got past the lock the first one holds"
        assert "is checking, running or reading the QBert4Rec tokenize stage: waiting for it" in caplog.text
        with semantic_ids_lock(work_config("SASRec", work)):
            order.append("SASRec")
        order.append("first done")
    thread.join(5)
    assert order == ["SASRec", "first done", "second"] and caplog.text.count("waiting for it") == 1
    assert (work / "dataset" / ".QBert4Rec.sid.lock").is_file()
