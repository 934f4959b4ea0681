"""Quality figures of the semantic-ID code tables in run records, and the table's ``--tokenizer`` columns."""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from dataset_prep.features import code_file_features
from recbole.data.dataset import SequentialDataset

from recbole_qrec.cli import main
from recbole_qrec.config import build_config
from recbole_qrec.data import check_dataset, create_dataset
from recbole_qrec.data.sid import read_code_column, sid_metadata_path, sid_path
from recbole_qrec.data.sid_quality import code_table_quality, tokenizer_hash
from recbole_qrec.model.tiger import TIGER
from recbole_qrec.quantization.metrics import collision_rate, level_usage
from recbole_qrec.results import build_record
from recbole_qrec.tokenize import main as tokenize_main
from recbole_qrec.trainer import get_trainer
from recbole_qrec.utils import get_model

TINY = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
        "MAX_ITEM_LIST_LENGTH": 8, "use_gpu": False, "allow_data_mismatch": True}
TINY_TOKENIZER = ["epochs=2", "hidden_dims=[64]", "batch_size=512", "codebook_size=64", "code_dim=8"]

pytestmark = pytest.mark.usefixtures("one_thread")


def subset_config(model: str, work: Path, **overrides):
    return build_config(model, "Instruments", config_dict={"data_path": str(work / "dataset"), **TINY, **overrides})


def raw_codes(work: Path, dataset: SequentialDataset, field: str, levels: int | None = None) -> np.ndarray:
    """The dataset's items' codes of ``field`` read straight from ``Instruments.item``, in internal-id order."""
    codes = read_code_column(work / "dataset" / "Instruments" / "Instruments.item", field)
    return np.array([codes[token][:levels] for token in dataset.field2id_token["item_id"][1:]])


@pytest.mark.parametrize("levels", [None, 3])
def test_tiger_text_code_figures_are_those_of_the_raw_codes(work, levels):
    config = subset_config("TIGER", work, code_levels=levels)
    dataset = create_dataset(config)
    figures = code_table_quality(config, dataset)["text_codes"]
    codes = raw_codes(work, dataset, "text_codes", levels)
    utilisation, perplexity = level_usage(codes, 256)
    distinct = len(np.unique(codes, axis=0))
    assert figures["collision_rate_before"] == collision_rate(codes) > 0  # the real codes collide, more on 3 levels
    assert (figures["utilisation"], figures["perplexity"]) == (utilisation, perplexity)
    assert figures["collision_rate_after"] == 0.0  # TIGER's extra level makes every ID unique
    assert figures["extra_level_share"] == pytest.approx((len(codes) - distinct) / len(codes))
    assert figures["source"] == "text:llama" and figures["tokenizer_hash"] is None and figures["main"]


@pytest.mark.parametrize("rule", ["group", "strict"])
def test_mql4grec_keeps_shared_codes_only_under_eval_rule_group(work, rule):
    config = subset_config("MQL4GRec", work, eval_rule=rule)
    quality = code_table_quality(config, create_dataset(config))
    assert set(quality) == {"text_codes", "image_codes"}
    assert quality["text_codes"]["main"] and not quality["image_codes"]["main"]
    text = quality["text_codes"]
    assert text["collision_rate_before"] > 0
    assert text["collision_rate_after"] == (text["collision_rate_before"] if rule == "group" else 0.0)
    assert (text["extra_level_share"] > 0) == (rule == "strict")


def test_tokenizer_sid_figures_come_from_its_report_and_codes(work, amazon_dir):
    config = subset_config("TIGER", work, sid_source="file")
    items = max(map(int, create_dataset(subset_config("TIGER", work)).field2id_token["item_id"][1:])) + 1
    np.save(work / "text.npy", code_file_features(amazon_dir / "Instruments" / "Instruments.index_lemb.json")[:items])
    tokenize_main(["--dataset", "Instruments", "--features", str(work / "text.npy"), "--data_path",
                   str(work / "dataset"), "--device", "cpu", "--set", *TINY_TOKENIZER])
    dataset = create_dataset(config)
    figures = code_table_quality(config, dataset)["sid"]
    report = json.loads(sid_metadata_path(sid_path(dataset.dataset_path, "Instruments")).read_text())
    codes = dataset.code_tables["sid"][1:].numpy()
    assert figures["collision_rate_before"] == report["collision_rate_before"]
    assert figures["collision_rate_after"] == collision_rate(codes) == 0.0 and figures["extra_level_share"] == 0.0
    assert figures["codebook_size"] == 64 and figures["utilisation"] == level_usage(codes, 64)[0]
    other_seed = {"config": {**report["config"], "seed": report["config"]["seed"] + 1}}
    assert figures["tokenizer_hash"] == tokenizer_hash(report) != tokenizer_hash(other_seed)


def record_of_untrained_run(config, dataset, model) -> dict:
    check_dataset(config)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return build_record(config, trainer, 0.1, {"ndcg@10": 0.1}, {"ndcg@10": 0.1}, 1.0, saved=False, dataset=dataset)


def test_a_record_of_a_tiger_run_carries_the_figures_and_one_of_an_id_model_none(work):
    config = subset_config("TIGER", work)
    dataset = create_dataset(config)
    record = record_of_untrained_run(config, dataset, TIGER(config, dataset))
    assert record["tokenizer"] == json.loads(json.dumps(code_table_quality(config, dataset)))
    assert set(record["tokenizer"]) == {"text_codes"} and record["tokenizer"]["text_codes"]["collision_rate_after"] == 0
    sasrec = build_config("SASRec", "Instruments", config_dict={"data_path": str(work / "dataset"), "use_gpu": False,
                                                                 "allow_data_mismatch": True, "hidden_size": 8,
                                                                 "inner_size": 8, "n_layers": 1})
    dataset = create_dataset(sasrec)
    assert record_of_untrained_run(sasrec, dataset, get_model("SASRec")(sasrec, dataset))["tokenizer"] == {}


def tokenizer_record(model: str, seed: int, before: float, utilisation: list[float]) -> dict:
    main_table = {"collision_rate_before": before, "collision_rate_after": 0.0, "utilisation": utilisation,
                  "main": True}
    other = {"collision_rate_before": 0.9, "collision_rate_after": 0.9, "utilisation": [0.0], "main": False}
    return {"model": model, "dataset": "Instruments", "config_hash": model, "seed": seed, "test": {"ndcg@10": 0.1},
            "tokenizer": {"image_codes": other, "text_codes": main_table}}


def table_output(tmp_path: Path, records: list[dict], *options: str) -> str:
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = io.StringIO()
    with redirect_stdout(out):
        main(["table", str(path), "--metrics", "ndcg@10", "--out", str(tmp_path / "t"), "--format", "md,csv", *options])
    return out.getvalue()


def test_table_tokenizer_columns_show_the_main_tables_mean_figures(tmp_path):
    records = [tokenizer_record("TIGER", 1, 0.04, [0.5, 1.0]), tokenizer_record("TIGER", 2, 0.06, [0.25, 0.75]),
               {"model": "SASRec", "dataset": "Instruments", "config_hash": "s", "seed": 1, "test": {"ndcg@10": 0.1}}]
    plain = table_output(tmp_path, records)
    assert "collisions" not in plain and "collisions" not in (tmp_path / "t.csv").read_text()
    shown = table_output(tmp_path, records, "--tokenizer")
    lines = shown.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {row[0]: row for row in ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:4])}
    columns = [header.index(f"Instruments {name}") for name in ("collisions before", "collisions after", "utilisation")]
    assert [rows["TIGER"][i] for i in columns] == ["0.0500", "0.0000", "0.6250"]
    assert [rows["SASRec"][i] for i in columns] == ["", "", ""]
    assert header[: len(plain.splitlines()[0].strip("|").split("|"))] == [
        cell.strip() for cell in plain.splitlines()[0].strip("|").split("|")]
    table_csv = {row["model"]: row for row in csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text()))}
    assert float(table_csv["TIGER"]["Instruments utilisation"]) == pytest.approx(0.625)
    assert table_csv["SASRec"]["Instruments collisions before"] == ""
