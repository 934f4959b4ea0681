"""Result records: the config hash ignores paths, fine-tuning and pretraining epochs are counted apart, the data
fingerprint and the code's git state are recorded, and a non-finite metric is never written."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
from pathlib import Path

import pytest
import torch

from recbole_qrec.config import build_config
from recbole_qrec.quick_start import run_recbole_qrec
from recbole_qrec.results import append_result, check_finite, config_hash, git_state
from recbole_qrec.resources import PACKAGE_DIR

MQL4GREC = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
            "MAX_ITEM_LIST_LENGTH": 8, "tasks": ["text_next"], "beam_size": 10, "pretrain_epochs": 1, "epochs": 1,
            "train_batch_size": 512, "pretrain_batch_size": 512, "eval_batch_size": 512, "use_gpu": False,
            "allow_data_mismatch": True}

pytestmark = pytest.mark.usefixtures("one_thread")


def sasrec_config(**settings):
    return build_config("SASRec", "Instruments", config_dict=settings)


def test_config_hash_ignores_where_a_run_happens_but_not_what_it_computes(tmp_path):
    here = sasrec_config(data_path=str(tmp_path / "a"), checkpoint_dir="saved", results_dir="results")
    there = sasrec_config(data_path=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "ckpt"),
                          results_dir=str(tmp_path / "out"), resume_checkpoint="saved/x.pth", show_progress=True,
                          gpu_id="1", allow_data_mismatch=True)
    there["data_fingerprint"] = {"sha256": "0" * 64, "users": 1, "items": 1, "interactions": 1}
    assert config_hash(here) == config_hash(there)
    assert config_hash(sasrec_config(learning_rate=0.01)) != config_hash(here)
    assert config_hash(sasrec_config(seed=7)) == config_hash(here)  # seeds of one configuration


@pytest.fixture(scope="module")
def pretrained_run(work: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny MQL4GRec run with 1 pretraining and 1 fine-tuning epoch: its folder and its record."""
    folder = tmp_path_factory.mktemp("mql4grec")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        record = run_recbole_qrec("MQL4GRec", "Instruments", config_dict={"data_path": str(work / "dataset"), **MQL4GREC})
    return folder, record


def test_fine_tuning_and_pretraining_epochs_are_recorded_apart(pretrained_run):
    folder, record = pretrained_run
    assert record["epochs"] == 1 and record["pretrain_epochs"] == 1
    assert record["train_seconds_per_epoch"] > 0 and record["pretrain_seconds_per_epoch"] > 0
    checkpoint = torch.load(folder / record["checkpoint"], weights_only=True)
    weights = checkpoint["state_dict"]  # parameters and buffers (code tables)
    assert 0 < record["parameters"] < sum(value.numel() for value in weights.values())
    assert record["parameters"] > weights["t5.shared.weight"].numel()  # the token table is one of several parameters
    assert json.loads((folder / "results" / "results.jsonl").read_text()) == record


def test_fine_tuning_a_pretrained_checkpoint_records_no_pretraining(pretrained_run, work):
    folder, record = pretrained_run
    pretrained = Path(record["checkpoint"]).with_name(Path(record["checkpoint"]).stem + "-pretrained.pth")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        resumed = run_recbole_qrec("MQL4GRec", "Instruments", config_dict={
            "data_path": str(work / "dataset"), **MQL4GREC, "resume_checkpoint": str(pretrained)})
    assert resumed["epochs"] == 1 and resumed["pretrain_epochs"] == 0 and resumed["pretrain_seconds_per_epoch"] is None
    assert resumed["resumed_from"] == str(pretrained) and resumed["checkpoint"] != record["checkpoint"]
    assert resumed["config_hash"] == record["config_hash"]


def test_the_record_carries_the_data_fingerprint_and_the_code_state(pretrained_run):
    _, record = pretrained_run
    fingerprint = record["data_fingerprint"]
    assert {"sha256", "users", "items", "interactions", "files", "expected_counts_match"} <= set(fingerprint)
    assert fingerprint["users"] == 500 and fingerprint["items"] == 2650 and len(fingerprint["sha256"]) == 64
    assert record["data_counts_match"] is False  # a 500-user subset, run with allow_data_mismatch
    commit, dirty = git_state()
    assert record["git_commit"] == commit and record["git_dirty"] == dirty
    if (PACKAGE_DIR.parent / ".git").exists():  # run from the source checkout
        assert len(commit) == 40 and isinstance(dirty, bool)


def test_outside_a_git_checkout_the_commit_is_unknown(tmp_path):
    assert git_state(tmp_path) == ("unknown", None)


def test_run_outputs_beside_the_code_leave_the_checkout_clean_and_an_edit_does_not(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    package = tmp_path / "package"
    package.mkdir()
    (package / "model.py").write_text("WIDTH = 64\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "code")
    (tmp_path / "main_results").mkdir()  # what a run writes beside the code
    (tmp_path / "main_results" / "results.jsonl").write_text("{}\n")
    (package / "notes.txt").write_text("untracked\n")
    assert git_state(package) == (git("rev-parse", "HEAD"), False)
    (package / "model.py").write_text("WIDTH = 128\n")
    assert git_state(package) == (git("rev-parse", "HEAD"), True)


@pytest.mark.parametrize("bad", [float("-inf"), float("nan")])
def test_a_non_finite_metric_is_never_recorded(bad, tmp_path):
    record = {"model": "SASRec", "dataset": "Instruments", "best_valid_score": 0.1, "valid": {"ndcg@10": 0.1},
              "test": {"ndcg@10": bad}}
    with pytest.raises(ValueError, match="refusing to record non-finite metrics"):
        check_finite(record)
    with pytest.raises(ValueError):
        append_result(record, tmp_path)
    assert not (tmp_path / "results.jsonl").exists()


def test_the_record_carries_its_tags_and_validation_curve(pretrained_run):
    _, record = pretrained_run
    assert record["tags"] == {}
    assert [point["epoch"] for point in record["valid_curve"]] == [0]
    assert record["valid_curve"][0]["ndcg@10"] == record["valid"]["ndcg@10"]


def test_run_tags_change_no_config_hash():
    assert config_hash(sasrec_config(run_tags={"sweep": "s1", "trial": 3})) == config_hash(sasrec_config())


def append_many(results_dir: str, writer: int) -> None:
    for index in range(20):
        append_result({"writer": writer, "index": index}, results_dir)


def test_runs_finishing_at_once_keep_every_record(tmp_path):
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=append_many, args=(str(tmp_path), writer)) for writer in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join()
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted((line["writer"], line["index"]) for line in lines) == [(w, i) for w in range(4) for i in range(20)]


def test_a_line_left_unfinished_by_another_writer_keeps_the_record_apart(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"model": "SAS', encoding="utf-8")  # a writer killed mid-line
    append_result({"model": "SASRec", "seed": 1}, tmp_path)
    lines = (tmp_path / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines[0] == '{"model": "SAS' and json.loads(lines[1]) == {"model": "SASRec", "seed": 1}
