"""MACRec on the 500-user Instruments subset (text and image codes): its alignment losses, ranking and entry point."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.utils import init_seed

from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.data.features import content_sources
from recbole_qrec.data.item_features import code_proxy, item_rows
from recbole_qrec.data.sid import read_code_column
from recbole_qrec.errors import ConfigError
from recbole_qrec.model.macrec import MACRec
from recbole_qrec.model.mql4grec import MQL4GRec
from recbole_qrec.tokenize import main as tokenize_main
from conftest import (assert_compiled_loss_is_eager_loss, first_batch, host_nodes_of_cuda_loss, losses_over_steps,
                      run_entry_point, work_config)

TINY = {
    "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 5, "epochs": 1, "train_batch_size": 256, "eval_batch_size": 256, "use_gpu": False,
    "beam_size": 10,
}
EXPLICIT_TASKS = {"text_to_image_next", "image_to_text_next", "text_to_image", "image_to_text"}

pytestmark = pytest.mark.usefixtures("one_thread")


def subset_config(work: Path, **overrides):
    return work_config("MACRec", work, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def prepared(work):
    """Config, training and test loaders, and an untrained MACRec (eval mode: no dropout) on the subset."""
    config = subset_config(work)
    init_seed(config["seed"], True)
    train, _, test, _ = data_preparation(config, create_dataset(config))
    return config, train, test, MACRec(config, train._dataset).eval()


def test_implicit_alignment_loss_is_finite_and_training_lowers_it(prepared, work):
    config, train, _, _ = prepared
    torch.manual_seed(0)
    model = MACRec(config, train._dataset).eval()
    batch = first_batch(train)[:64]
    losses = losses_over_steps(model, lambda: model.implicit_align_loss(batch), steps=6)
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < losses[0] * 0.9, losses


def test_the_loss_is_the_task_mixture_plus_the_weighted_implicit_alignment(prepared, work):
    config, train, _, model = prepared
    batch = first_batch(train)[:64]
    without = MACRec(subset_config(work, implicit_align_weight=0), train._dataset).eval()
    mql4grec = MQL4GRec(config, train._dataset).eval()  # the same T5 trained on the tasks alone
    for other in (without, mql4grec):
        other.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.manual_seed(0)  # the same random draws of the task mix in each call
        task_loss = mql4grec.calculate_loss(batch)
        torch.manual_seed(0)
        full = model.calculate_loss(batch)
        torch.manual_seed(0)
        zero = without.calculate_loss(batch)
        align = model.implicit_align_loss(batch)
    assert model.implicit_align_weight == 0.01 and float(align) > 0
    torch.testing.assert_close(zero, task_loss)
    torch.testing.assert_close(full, task_loss + 0.01 * align)


@pytest.mark.parametrize("calls", ["per_length", "one"])
def test_compile_model_traces_the_loss_as_one_graph(prepared, work, calls):
    """``compile_model`` traces MACRec's loss (task mixture plus implicit alignment) with full-length histories as one
    graph and gives the eager loss, with one T5 call per input length or one in all."""
    _, train, _, _ = prepared
    model = MACRec(subset_config(work, full_length_inputs=True, t5_calls=calls), train._dataset).eval()
    assert_compiled_loss_is_eager_loss(model, first_batch(train), fullgraph=True)
    assert host_nodes_of_cuda_loss(model, first_batch(train)) == []  # (test_tiger.py: the cudagraphs backend)


def test_without_explicit_tasks_only_the_next_item_tasks_train(prepared, work):
    _, train, _, model = prepared
    batch = first_batch(train)
    implicit_only = MACRec(subset_config(work, tasks=["text_next", "image_next"]), train._dataset)
    torch.manual_seed(0)
    assert EXPLICIT_TASKS <= {name for key in model.task_examples(batch) for name in key.split("+")}
    assert set(implicit_only.task_examples(batch)) == {"text_next", "image_next"}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"implicit_align_weight": -0.1}, "implicit_align_weight must be a number >= 0"),  # the config's check
    ({"implicit_align_temperature": 0}, "implicit_align_temperature must be a number > 0"),  # the config's check
    ({"image_sid_source": None}, "implicit_align_weight is 0.01 but the target has codes in"),
])
def test_bad_settings_are_config_errors(prepared, work, overrides, message):
    with pytest.raises(ConfigError, match=message):
        MACRec(subset_config(work, **overrides), prepared[1]._dataset)


@pytest.mark.parametrize("rule", ["group", "strict"])
def test_full_sort_predict_scores_only_real_items(prepared, work, rule):
    _, train, test, _ = prepared
    torch.manual_seed(0)
    model = MACRec(subset_config(work, eval_rule=rule), train._dataset).eval()
    interaction = first_batch(test)[:16]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        beams = [model.beam(interaction, language)[0] for language in model.ranking_languages]
    assert scores.shape == (16, train._dataset.item_num) and bool(torch.isneginf(scores[:, 0]).all())
    finite = torch.isfinite(scores)
    generated = torch.zeros_like(finite).scatter_(1, torch.cat(beams, dim=1), True)
    if rule == "group":  # the target may take the score of the generated ID it shares
        generated[torch.arange(16), interaction["item_id"]] |= finite[torch.arange(16), interaction["item_id"]]
    assert bool((torch.cat(beams) >= 1).all()) and bool(finite.any(1).all())
    assert torch.equal(finite, generated)


def test_entry_point_trains_and_evaluates_macrec(work, tmp_path):
    settings = {**TINY, "data_path": work / "dataset", "allow_data_mismatch": True}
    log, record = run_entry_point("MACRec", settings, tmp_path)
    assert "implicit_align_weight = 0.01" in log
    assert record["model"] == "MACRec"
    assert all(0.0 <= value <= 1.0 for value in record["test"].values()) and "ndcg@10" in record["test"]


def test_macrec_reads_its_own_aligned_tokenizer_one_language_per_modality(work, tmp_path, capsys):
    data = tmp_path / "dataset"
    shutil.copytree(work / "dataset", data)
    item_file = data / "Instruments" / "Instruments.item"
    features = []
    for field in ("text_codes", "image_codes"):
        features.append(tmp_path / f"{field}.npy")
        np.save(features[-1], code_proxy(item_file, field))
    converted = {field: read_code_column(item_file, field) for field in ("text_codes", "image_codes")}
    tokenize = ["--dataset", "Instruments", "--data_path", str(data), "--features", *map(str, features),
                "--device", "cpu", "--item_field", "text_codes", "image_codes", "--set", "levels=2", "codebook_size=16",
                "code_dim=8", "hidden_dims=[32]", "epochs=2", "batch_size=512"]
    with pytest.raises(SystemExit) as stop:  # two fields need one quantizer per modality
        tokenize_main(tokenize)
    assert stop.value.code == 2 and "--set quantizers=per_modality and one field per feature file" in capsys.readouterr().err
    tokenize_main([*tokenize, "quantizers=per_modality", "collision_strategy=append_level", "alignment=contrastive"])

    aligned = {field: read_code_column(item_file, field) for field in ("text_codes", "image_codes")}
    assert all(len(codes) == 2 and max(codes) < 16 for table in aligned.values() for codes in table.values())
    assert aligned["text_codes"] != aligned["image_codes"] and aligned["text_codes"] != converted["text_codes"]
    assert set(content_sources(data / "Instruments", "Instruments")) == {"text_codes", "image_codes"}
    config = work_config("MACRec", tmp_path, **TINY)
    init_seed(config["seed"], True)
    train, _, _, _ = data_preparation(config, create_dataset(config))
    model = MACRec(config, train._dataset)
    items = item_rows(train._dataset)
    for language, field in (("text", "text_codes"), ("image", "image_codes")):
        read = model.target_codes.codes(language)[1:].tolist()
        assert read == [aligned[field][str(item)] for item in items], language
