"""Q-Bert4Rec on a 500-user subset of Instruments: the tokenize stage (stages 1-2), stage 3, scoring, persistence,
entry point."""

from __future__ import annotations

import copy
import json
import logging
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.model.layers import TransformerEncoder
from recbole.utils import init_seed

from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.data.item_features import code_proxy, load_item_features
from recbole_qrec.data.sid import read_code_column
from recbole_qrec.errors import ConfigError
from recbole_qrec.model.qbert4rec import FIRST_CODE_TOKEN, MASK_TOKEN, QBert4Rec
from recbole_qrec.model.qbert4rec_modules.contrastive import masked_info_nce
from recbole_qrec.model.qbert4rec_modules.fused_encoder import FusedTransformerEncoder
from recbole_qrec.model.qbert4rec_modules.injection import depth_histogram
from recbole_qrec.model.qbert4rec_modules.injection_training import fuse_items, train_injection
from recbole_qrec.model.qbert4rec_modules.masking import MultiMask
from recbole_qrec.qbert4rec_stage import build_injection
from recbole_qrec.tokenize import ensure_semantic_ids
from recbole_qrec.trainer import QBert4RecTrainer
from recbole_qrec.trainer.pretrain_trainer import MIN_PRETRAIN_LOSS_DROP
from conftest import (assert_compiled_loss_is_eager_loss, first_batch, host_nodes_of_cuda_loss, run_entry_point,
                      work_config)

TINY = {
    "injection_dim": 32, "injection_epochs": 2, "injection_batch_size": 512,
    "sid_levels": 3, "sid_codebook_size": 32, "sid_code_dim": 16, "sid_epochs": 3,
    "hidden_size": 32, "inner_size": 64, "n_layers": 1, "n_heads": 2, "MAX_ITEM_LIST_LENGTH": 8,
    "pretrain_epochs": 1, "epochs": 1, "train_batch_size": 256, "eval_batch_size": 256, "use_gpu": False,
}
LEVELS, LENGTHS = 4, (80, 40, 12, 4)


pytestmark = pytest.mark.usefixtures("one_thread")


def subset_config(work, **overrides):
    return work_config("QBert4Rec", work, **{**TINY, **overrides})


def load_data(config, source_configs=()):
    """As the entry point: the tokenize stage (when its output is missing or stale), then the dataset, its
    train/valid/test loaders and the sources' pretraining loaders, seeded as the entry point seeds them."""
    ensure_semantic_ids(config, source_configs)
    init_seed(config["seed"], True)
    dataset = create_dataset(config, source_configs)
    return (dataset, *data_preparation(config, dataset))


@pytest.fixture(scope="module")
def prepared(work):
    """Config and loaders of the subset (stages 1-2 run by the tokenize stage), and a QBert4Rec built on them."""
    config = subset_config(work)
    _, train, valid, test, _ = load_data(config)
    return config, train, valid, test, QBert4Rec(config, train._dataset)


@pytest.fixture(scope="module")
def features(prepared):
    config, train, *_ = prepared
    return load_item_features(config, train._dataset)


# Stage 1: cross-modal semantic injection

def test_npy_features_follow_the_item_tokens_and_zero_rows_mark_a_missing_modality(prepared, work, tmp_path):
    dataset = prepared[1]._dataset
    tokens = list(dataset.field2id_token["item_id"][1:])
    matrix = np.arange(1, max(map(int, tokens)) + 2, dtype=np.float32)[:, None].repeat(3, 1)  # row r holds r + 1
    matrix[int(tokens[3])] = 0
    np.save(tmp_path / "image.npy", matrix)
    features = load_item_features(subset_config(work, image_feature_file=str(tmp_path / "image.npy")), dataset)
    text, image = features.matrices
    codes = read_code_column(work / "dataset" / "Instruments" / "Instruments.item", "text_codes")
    hot = [(np.nonzero(row)[0] % 256).tolist() for row in text.numpy()]  # one-hot of the 4 text code levels
    assert text.shape[1] == 4 * 256 and hot == [codes[token] for token in tokens]
    expected = [0.0 if index == 3 else int(token) + 1.0 for index, token in enumerate(tokens)]
    assert image[:, 0].tolist() == expected
    assert features.present[:, 1].tolist() == [index != 3 for index in range(len(tokens))]


def test_the_code_proxy_builds_the_rows_asked_for_in_their_order(work):
    item_file = work / "dataset" / "Instruments" / "Instruments.item"
    every_item = code_proxy(item_file, "text_codes")  # row r: item id r
    rows = [7, 0, 3, len(every_item) + 5]  # the last id has no codes: a zero row
    picked = code_proxy(item_file, "text_codes", rows)
    assert picked.shape == (4, 4 * 256) and np.array_equal(picked[:3], every_item[[7, 0, 3]]) and not picked[3].any()
    assert (every_item.sum(1) == 4).all() and len({row.tobytes() for row in picked[:3]}) == 3


def test_injection_loss_decreases_and_gates_give_different_depths(prepared, features):
    config = prepared[0]
    torch.manual_seed(0)
    module = build_injection(config, features)
    curve = train_injection(module, features, epochs=4, batch_size=512, learning_rate=1e-3,
                            generator=torch.Generator().manual_seed(0))
    assert len(curve.losses) == 4 and curve.losses[-1] < curve.losses[0]
    _, depth = fuse_items(module, features, batch_size=1024)
    assert depth.unique().numel() > 1, "hard gating sent every item through the same number of blocks"
    histogram = depth_histogram(depth, config["injection_layers"])
    assert histogram[0] == 0 and sum(histogram) == len(features.present)
    # each epoch's training depths count every item once, and move while the gates train
    assert len(curve.depths) == 4 and all(counts[0] == 0 and sum(counts) == len(features.present)
                                          and len(counts) == config["injection_layers"] + 1 for counts in curve.depths)
    assert curve.depths[0] != curve.depths[-1]


def test_static_fusion_uses_every_block(work, features):
    config = subset_config(work, fusion="static")
    module = build_injection(config, features)
    _, depth = fuse_items(module, features, batch_size=1024)
    assert len(module.gates) == 0 and bool((depth == config["injection_layers"]).all())


def test_items_missing_a_modality_are_left_out_of_its_contrastive_terms():
    first, second = torch.randn(6, 8), torch.randn(6, 8)
    rows = torch.tensor([True, True, False, True, False, True])
    changed = second.clone()
    changed[~rows] = torch.randn(2, 8) * 100
    assert masked_info_nce(first, second, rows, 0.1) == masked_info_nce(first, changed, rows, 0.1)
    assert masked_info_nce(first, second, torch.zeros(6, dtype=torch.bool), 0.1) == 0
    assert masked_info_nce(first, second, torch.eye(6, dtype=torch.bool)[2], 0.1) == 0  # one item: nothing to contrast


def test_the_masked_contrastive_term_equals_infonce_over_the_remaining_items():
    """Computed over the whole batch with the other items masked out, it is the InfoNCE of the remaining items
    alone, in value and in gradient (and the left-out items get none)."""
    first, second = torch.randn(9, 16, requires_grad=True), torch.randn(9, 16, requires_grad=True)
    rows = torch.tensor([True, False, True, True, False, True, True, False, True])
    masked = masked_info_nce(first, second, rows, 0.1)
    masked_grads = torch.autograd.grad(masked, [first, second])
    logits = F.normalize(first[rows], dim=-1) @ F.normalize(second[rows], dim=-1).T / 0.1
    targets = torch.arange(int(rows.sum()))
    reference = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    reference_grads = torch.autograd.grad(reference, [first, second])
    assert torch.allclose(masked, reference, atol=1e-6)
    for got, expected in zip(masked_grads, reference_grads):
        assert torch.allclose(got, expected, atol=1e-6) and not got[~rows].any()


# Multi-mask pretraining strategies, on a hand-made batch (lengths in tokens, 4 levels per item)

@pytest.fixture
def real_tokens():
    positions = torch.arange(84)
    return torch.stack([positions < length for length in LENGTHS])


def runs(row):
    """(start, end) of every run of True in a 1-D bool tensor."""
    padded = torch.cat([torch.tensor([False]), row, torch.tensor([False])]).int()
    edges = padded.diff()
    return list(zip(edges.eq(1).nonzero().flatten().tolist(), edges.eq(-1).nonzero().flatten().tolist()))


@pytest.mark.parametrize("strategy", ["mlm", "span", "tail", "multi"])
def test_padding_is_never_masked_and_every_sequence_gets_a_mask(strategy, real_tokens):
    masker = MultiMask(strategy, 0.3, LEVELS, regions=3)
    for _ in range(50):
        mask = masker(real_tokens)
        assert not (mask & ~real_tokens).any()
        if strategy != "mlm":
            assert mask.any(1).all()


@pytest.mark.parametrize(("strategies", "prob"), [(["span", "bert"], 0.3), ([], 0.3), ("mlm", 1.5)])
def test_bad_mask_settings_are_config_errors(strategies, prob):
    with pytest.raises(ConfigError):
        MultiMask(strategies, prob, LEVELS, regions=3)


def test_tail_masks_exactly_the_last_items_tokens(real_tokens):
    mask = MultiMask("tail", 0.3, LEVELS, regions=3)(real_tokens)
    for row, length in zip(mask, LENGTHS):
        assert row.nonzero().flatten().tolist() == list(range(length - LEVELS, length))


def test_span_is_one_contiguous_run(real_tokens):
    masker = MultiMask("span", 0.3, LEVELS, regions=3)
    for _ in range(50):
        for row, length in zip(masker(real_tokens), LENGTHS):
            (start, end), = runs(row)
            assert end - start == max(1, round(0.3 * length))


def test_multi_region_masks_several_disjoint_spans(real_tokens):
    masker = MultiMask("multi", 0.3, LEVELS, regions=3)
    for _ in range(50):
        mask = masker(real_tokens)
        assert [len(runs(row)) for row in mask[:3]] == [3, 3, 3]  # 80, 40 and 12 tokens leave room for 3 gaps


@pytest.mark.parametrize("strategy", ["mlm", "span", "multi"])
def test_masked_share_is_the_mask_probability(strategy, real_tokens):
    masker = MultiMask(strategy, 0.3, LEVELS, regions=3)
    long_rows = real_tokens[:2]
    share = torch.stack([masker(long_rows).sum() / long_rows.sum() for _ in range(300)]).mean()
    assert abs(float(share) - 0.3) < 0.02


def test_mixed_strategies_draw_one_strategy_per_sequence(real_tokens):
    masker = MultiMask(["span", "tail"], 0.3, LEVELS, regions=3)
    tails = MultiMask("tail", 0.3, LEVELS, regions=3)(real_tokens)
    kinds = set()
    for _ in range(40):
        for row, tail in zip(masker(real_tokens)[:2], tails[:2]):
            kinds.add("tail" if torch.equal(row, tail) else "span")
            assert len(runs(row)) == 1
    assert kinds == {"span", "tail"}


# Stage 3: the semantic-ID transformer

def test_codes_are_unique_and_row_zero_is_padding(prepared):
    codes = prepared[4].item_codes
    assert codes.shape == (prepared[1]._dataset.item_num, 3)
    assert bool((codes[0] == 0).all()) and len(codes[1:].unique(dim=0)) == len(codes) - 1


@pytest.mark.parametrize("loss_name", ["pretrain_loss", "calculate_loss"])
def test_stage3_loss_decreases(prepared, loss_name):
    config, train, *_ = prepared
    model = QBert4Rec(config, train._dataset)
    batch = first_batch(train)[:64]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(12):
        loss = getattr(model, loss_name)(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < losses[0] * 0.95


def test_compile_model_traces_the_fine_tuning_loss(prepared):
    """``compile_model`` traces QBert4Rec's fine-tuning loss and gives the eager loss (eval mode: no dropout)."""
    config, train, *_ = prepared
    model = QBert4Rec(config, train._dataset).eval()
    assert_compiled_loss_is_eager_loss(model, first_batch(train)[:64])
    assert host_nodes_of_cuda_loss(model, first_batch(train)[:64]) == []  # (test_tiger.py: the cudagraphs backend)


def slow_scores(model, item_seq, length, items):
    """One user at a time, no padding, by explicit loops: ``levels``: per-level log-probabilities summed;
    ``item``: the slot's mean state against ID embedding + mean code-token embedding, plus the item's bias."""
    levels, codebook = model.levels, model.heads.weight.shape[1]

    def tokens_of(item):
        return [FIRST_CODE_TOKEN + level * codebook + int(model.item_codes[item, level]) for level in range(levels)]

    tokens = torch.tensor([[tokens_of(item) for item in item_seq[:length].tolist()] + [[MASK_TOKEN] * levels]])
    embedded = model.token_embedding(tokens.flatten(1))
    for slot, item in enumerate(item_seq[:length].tolist() if model.item_id_input else []):
        for level in range(levels):
            embedded[0, slot * levels + level] += model.item_output.id_embedding.weight[item]
    positions = torch.arange(length + 1).repeat_interleave(levels)
    embedded = embedded + model.position_embedding(positions) + model.level_embedding(torch.arange(levels).repeat(length + 1))
    hidden = model.encoder(model.input_norm(embedded), torch.zeros(1, 1, 1, len(positions)),
                           output_all_encoded_layers=False)[-1].view(length + 1, levels, -1)[length]
    scores = []
    for item in items:
        if model.item_output is None:
            total = 0.0
            for level in range(levels):
                logits = hidden[level] @ model.heads.weight[level].T + model.heads.bias[level]
                total += float(logits.log_softmax(-1)[model.item_codes[item, level]])
        else:
            embedding = model.item_output.id_embedding.weight[item] + model.token_embedding.weight[tokens_of(item)].mean(0)
            total = float(hidden.mean(0) @ embedding + model.item_output.bias[item])
        scores.append(total)
    return torch.tensor(scores)


@pytest.mark.parametrize("scoring, item_id_input", [("item", False), ("levels", False), ("item", True)])
def test_full_sort_predict_matches_a_slow_reference(prepared, work, scoring, item_id_input):
    config, train, _, test, _ = prepared
    model = QBert4Rec(subset_config(work, scoring=scoring, item_id_input=item_id_input), train._dataset)
    model.eval()
    interaction = first_batch(test)[:4]
    items = [1, 2, 7, 50, model.n_items - 1]
    with torch.no_grad():
        fast = model.full_sort_predict(interaction)
        assert fast.shape == (4, model.n_items)
        for row in range(4):
            slow = slow_scores(model, interaction["item_id_list"][row], int(interaction["item_length"][row]), items)
            torch.testing.assert_close(fast[row, items], slow, atol=1e-5, rtol=0)
        targets = interaction["item_id"].unsqueeze(1)
        torch.testing.assert_close(model.predict(interaction), fast.gather(1, targets).squeeze(1))


def test_item_id_input_hides_the_ids_of_masked_items_in_pretraining(prepared, work):
    """Tail masking hides each sequence's appended target: moving the ID embeddings of targets seen in no history
    leaves the pretraining loss unchanged, moving those of history items changes it."""
    config, train, *_ = prepared
    model = QBert4Rec(subset_config(work, item_id_input=True, mask_strategy=["tail"]), train._dataset).eval()
    batch = first_batch(train)[:64]
    in_history = set(batch["item_id_list"].flatten().tolist()) - {0}
    hidden_only = sorted(set(batch["item_id"].tolist()) - in_history)
    assert hidden_only and in_history
    with torch.no_grad():
        model.heads.weight.mul_(100)  # sharp code distributions: the loss feels its inputs
        before = model.pretrain_loss(batch)
        weights = model.item_output.id_embedding.weight
        weights[hidden_only] += torch.randn(len(hidden_only), weights.shape[1])
        torch.testing.assert_close(model.pretrain_loss(batch), before, atol=1e-6, rtol=0)
        weights[sorted(in_history)] += torch.randn(len(in_history), weights.shape[1])
        assert abs(float(model.pretrain_loss(batch) - before)) > 1e-3


def test_saved_state_reloads_to_identical_scores(prepared, tmp_path):
    config, train, _, test, model = prepared
    torch.save(model.state_dict(), tmp_path / "state.pth")
    fresh = QBert4Rec(config, train._dataset)
    fresh.load_state_dict(torch.load(tmp_path / "state.pth", weights_only=True))
    model.eval(), fresh.eval()
    interaction = first_batch(test)
    with torch.no_grad():
        assert torch.equal(model.full_sort_predict(interaction), fresh.full_sort_predict(interaction))


# Training and the entry point

def test_trainer_pretrains_then_fine_tunes(prepared):
    config, train, valid, *_ = prepared
    model = QBert4Rec(config, train._dataset)
    trainer = QBert4RecTrainer(config, model)
    losses = trainer.pretrain(train, verbose=False)
    assert len(losses) == config["pretrain_epochs"]
    assert trainer.optimizer.param_groups[0]["lr"] == config["learning_rate"]  # the fine-tuning optimizer is back
    best_score, best_result = trainer.fit(train, valid, saved=False)
    assert 0 <= best_score <= 1 and trainer.cur_step == 0


@pytest.mark.parametrize("learning_rate, discard", [(0.0, False), (1e-6, True), (1e-6, False), (0.02, True)])
def test_a_pretraining_that_barely_learns_is_warned_of_and_discarded_when_asked(prepared, caplog, learning_rate,
                                                                                discard):
    config, train, *_ = prepared
    config = copy.deepcopy(config)
    for key, value in {"pretrain_epochs": 10, "pretrain_batch_size": 64, "pretrain_learning_rate": learning_rate,
                       "warmup_steps": 0, "discard_stalled_pretraining": discard}.items():
        config[key] = value
    init_seed(config["seed"], True)
    trainer = QBert4RecTrainer(config, QBert4Rec(config, train._dataset))
    initial = copy.deepcopy(trainer.model.state_dict())
    with caplog.at_level(logging.WARNING):
        trainer.pretrain(train, verbose=False)
    curve = trainer.pretrain_loss_curve
    stalled = curve[-1] > 0.98 * curve[0]  # the loss fell by less than 2% from the first epoch to the last
    assert stalled == (learning_rate != 0.02)  # 0 and 1e-6: (next to) no step
    assert ("pretraining barely learned" in caplog.text) == stalled
    assert trainer.pretraining_discarded == (stalled and discard) and ("discarded" in caplog.text) == (stalled and discard)
    # at 1e-6 pretraining moves the weights (kept: changed) and, discarded, fine-tuning starts from the initial ones
    unchanged = all(torch.equal(initial[key], value) for key, value in trainer.model.state_dict().items())
    assert unchanged == (learning_rate == 0.0 or trainer.pretraining_discarded)


def test_the_stall_check_measures_the_last_epoch_whose_weights_fine_tuning_starts_from(prepared):
    config, train, *_ = prepared
    trainer = QBert4RecTrainer(config, QBert4Rec(config, train._dataset))
    # Arts' pretraining with content_kept_codes, loss per step at epochs 0, 1, 2, 4, 29: down 2.7%, back up to -1.1%
    trainer.pretrain_loss_curve = [5.347, 5.252, 5.201, 5.284, 5.289]
    assert trainer.pretraining_loss_drop() == pytest.approx(1 - 5.289 / 5.347)
    assert trainer.pretraining_loss_drop() < MIN_PRETRAIN_LOSS_DROP < 1 - 5.201 / 5.347


def test_pretraining_batches_by_its_own_size_and_is_checkpointed(prepared, tmp_path):
    config, train, valid, *_ = prepared
    config = copy.deepcopy(config)
    config["pretrain_sequences"] = "prefix"  # every training prefix: more rows than one batch of 500 users
    model = QBert4Rec(config, train._dataset)
    trainer = QBert4RecTrainer(config, model)
    trainer.saved_model_file = str(tmp_path / "QBert4Rec.pth")
    (_, loader), = trainer.pretraining_data(train)
    assert config["pretrain_batch_size"] != config["train_batch_size"]
    assert max(len(batch) for batch in loader) == config["pretrain_batch_size"]
    assert len(loader) == -(-len(train._dataset) // config["pretrain_batch_size"])
    trainer.fit(train, valid, saved=True)
    pretrained = torch.load(tmp_path / "QBert4Rec-pretrained.pth", weights_only=True)
    fine_tuned = torch.load(tmp_path / "QBert4Rec.pth", weights_only=True)
    assert pretrained["epoch"] == -1 and pretrained["state_dict"].keys() == fine_tuned["state_dict"].keys()
    assert not torch.equal(pretrained["state_dict"]["token_embedding.weight"],
                           fine_tuned["state_dict"]["token_embedding.weight"])

    tuning = copy.deepcopy(config)
    tuning["weight_decay"] = 0.25  # a fine-tuning setting that differs from the pretraining optimizer's
    resumed = QBert4RecTrainer(tuning, QBert4Rec(tuning, train._dataset))
    resumed.saved_model_file = str(tmp_path / "QBert4Rec-again.pth")
    resumed.resume_checkpoint(tmp_path / "QBert4Rec-pretrained.pth")
    assert resumed.start_epoch == 0 and resumed.saved_model_file == str(tmp_path / "QBert4Rec-again.pth")
    group = resumed.optimizer.param_groups[0]
    assert group["weight_decay"] == 0.25 and group["lr"] == tuning["learning_rate"]
    assert not resumed.optimizer.state, "the pretraining optimizer's moments were carried into fine-tuning"
    assert torch.equal(resumed.model.state_dict()["heads.weight"], pretrained["state_dict"]["heads.weight"])
    resumed.fit(train, valid, saved=True)
    assert not resumed.pretrain_epoch_seconds, "pretraining ran again after the resume"
    assert len(resumed.epoch_seconds) == config["epochs"]
    kept = torch.load(tmp_path / "QBert4Rec-pretrained.pth", weights_only=True)["state_dict"]["heads.weight"]
    assert torch.equal(kept, pretrained["state_dict"]["heads.weight"])


def test_harness_uses_the_qbert4rec_trainer():
    from recbole_qrec.trainer import get_trainer
    assert issubclass(get_trainer("sequential", "QBert4Rec"), QBert4RecTrainer)


def test_entry_point_runs_the_tokenize_stage_and_qbert4rec_end_to_end(work, tmp_path):
    data = tmp_path / "dataset" / "Instruments"
    shutil.copytree(work / "dataset" / "Instruments", data, ignore=shutil.ignore_patterns("*.sid*"))
    log, record = run_entry_point("QBert4Rec", {**TINY, "data_path": tmp_path / "dataset", "allow_data_mismatch": True},
                                  tmp_path)
    assert record["model"] == "QBert4Rec" and record["test"]
    assert all(0.0 <= value <= 1.0 for value in record["test"].values())
    assert len(record["pretrain_loss_curve"]) == record["pretrain_epochs"] == TINY["pretrain_epochs"]
    assert "Instruments.QBert4Rec.sid are missing" in log and "running the tokenize stage" in log
    metadata = json.loads((data / "Instruments.QBert4Rec.sid.json").read_text())
    assert metadata["stage"] == "QBert4Rec" and metadata["collision_rate_after"] == 0.0


def test_fused_encoder_computes_recbole_encoder_function():
    """The fused encoder loads RecBole's encoder's state dict and gives its outputs and gradients (dropout off),
    padding keys masked out as RecBole masks them."""
    settings = dict(n_layers=2, n_heads=2, hidden_size=16, inner_size=32, hidden_dropout_prob=0.0,
                    attn_dropout_prob=0.0, hidden_act="gelu", layer_norm_eps=1e-12)
    torch.manual_seed(0)
    recbole_encoder, fused = TransformerEncoder(**settings), FusedTransformerEncoder(**settings)
    fused.load_state_dict(recbole_encoder.state_dict())
    tokens = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 2]])
    mask = torch.where((tokens != 0)[:, None, None, :], 0.0, -10000.0)
    inputs = [torch.randn(2, 5, 16, requires_grad=True) for _ in range(2)]
    inputs[1].data.copy_(inputs[0].data)
    outputs = [encoder(x, mask)[-1] for encoder, x in zip((recbole_encoder, fused), inputs)]
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    for output in outputs:
        output.pow(2).sum().backward()
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad, atol=1e-5, rtol=1e-5)
    for (name, recbole_weight), fused_weight in zip(recbole_encoder.named_parameters(), fused.parameters()):
        torch.testing.assert_close(fused_weight.grad, recbole_weight.grad, atol=1e-5, rtol=1e-5, msg=name)
