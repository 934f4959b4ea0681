"""TIGER on a 500-user subset of Instruments: semantic IDs, training, constrained ranking, metrics, entry point."""

from __future__ import annotations

import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.evaluator import Collector, Evaluator
from recbole.utils import init_seed

from dataset_prep.features import code_file_features
from recbole_qrec.config import build_config
from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.data.sid import load_code_table, sid_path
from recbole_qrec.errors import ConfigError, MalformedDataError
from recbole_qrec.generation import constrained_beam_search
from recbole_qrec.model.layers import checked_full_length_inputs, length_bucketed_loss, t5_loss
from recbole_qrec.model.tiger import TIGER
from recbole_qrec.quantization import append_level
from recbole_qrec.tokenize import main as tokenize_main
from recbole_qrec.trainer import get_trainer
from conftest import (assert_compiled_loss_is_eager_loss, first_batch, host_nodes_of_cuda_loss, losses_over_steps,
                      run_entry_point)

TINY = {
    "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 8, "epochs": 1, "train_batch_size": 256, "eval_batch_size": 256, "use_gpu": False,
}
TINY_TOKENIZER = ["epochs=2", "hidden_dims=[64]", "batch_size=512", "codebook_size=64", "code_dim=8"]
BEAM = 20


pytestmark = pytest.mark.usefixtures("one_thread")


def subset_config(data_path: Path, **overrides):
    settings = {"data_path": str(data_path), "checkpoint_dir": str(data_path.parent / "saved"), **TINY, **overrides}
    return build_config("TIGER", "Instruments", config_dict=settings)


@pytest.fixture(scope="module")
def prepared(work):
    """Config, loaders and a TIGER (text_codes + extra level) on the subset."""
    config = subset_config(work / "dataset")
    init_seed(config["seed"], True)
    train, valid, test, _ = data_preparation(config, create_dataset(config))
    return config, train, valid, test, TIGER(config, train._dataset).eval()


def beam(model: TIGER, interaction: Interaction, **kwargs) -> tuple[torch.Tensor, ...]:
    """The shared constrained beam search, called directly on the model's own inputs."""
    tokens, mask = model.encoder_inputs(interaction)
    return constrained_beam_search(model.t5, tokens, mask, model.index, model.vocab, BEAM, **kwargs)


# Semantic IDs

def test_text_codes_get_the_disambiguation_level_and_are_unique(prepared, work):
    model, dataset = prepared[4], prepared[1]._dataset
    content = load_code_table(dataset, work / "dataset" / "Instruments" / "Instruments.item", "text_codes", pad_code=0)
    codes = model.item_codes
    assert codes.shape == (dataset.item_num, 5) and bool((codes[0] == 0).all())
    assert torch.equal(codes[:, :4], content)
    assert codes[1:, 4].tolist() == append_level(content[1:].numpy())[:, 4].tolist()
    assert int(codes[1:, 4].max()) > 0, "the subset's LLaMA codes collide, so the extra level must be used"
    assert len(codes[1:].unique(dim=0)) == dataset.item_num - 1


def test_sid_file_source_reads_the_tokenizer_output(prepared, work, amazon_dir):
    features = work / "text.npy"
    rows = max(map(int, prepared[1]._dataset.field2id_token["item_id"][1:])) + 1  # one per item id of the subset
    np.save(features, code_file_features(amazon_dir / "Instruments" / "Instruments.index_lemb.json")[:rows])
    tokenize_main(["--dataset", "Instruments", "--features", str(features), "--data_path", str(work / "dataset"),
                   "--device", "cpu", "--set", *TINY_TOKENIZER])
    config = subset_config(work / "dataset", sid_source="file")
    dataset = create_dataset(config)
    model = TIGER(config, dataset)
    assert torch.equal(model.item_codes, load_code_table(dataset, sid_path(dataset.dataset_path, dataset.dataset_name), "sid", pad_code=0))
    assert model.vocab.levels == 4 and model.vocab.codebook_size <= 64
    with pytest.raises(ConfigError, match="code_levels is 3 but sid_source is 'file'"):
        TIGER(subset_config(work / "dataset", sid_source="file", code_levels=3), dataset)


def test_colliding_sid_file_is_a_clear_error(prepared, work, tmp_path):
    shutil.copytree(work / "dataset", tmp_path / "dataset")
    dataset = prepared[1]._dataset
    tokens = dataset.field2id_token["item_id"][1:]
    lines = [f"{token}\ta_{index // 2} b_0" for index, token in enumerate(tokens)]  # pairs of items share a tuple
    (tmp_path / "dataset" / "Instruments" / "Instruments.sid").write_text(
        "item_id:token\tsid:token_seq\n" + "\n".join(lines) + "\n")
    config = subset_config(tmp_path / "dataset", sid_source="file")
    dataset = create_dataset(config)
    with pytest.raises(MalformedDataError, match="not collision-free"):
        TIGER(config, dataset)


def test_code_levels_three_gives_the_papers_three_levels_plus_disambiguation(prepared, work):
    dataset = prepared[1]._dataset
    model = TIGER(subset_config(work / "dataset", code_levels=3), dataset)
    content = load_code_table(dataset, work / "dataset" / "Instruments" / "Instruments.item", "text_codes", pad_code=0)
    codes = model.item_codes
    assert codes.shape == (dataset.item_num, 4) and torch.equal(codes[:, :3], content[:, :3])
    assert codes[1:, 3].tolist() == append_level(content[1:, :3].numpy())[:, 3].tolist()
    assert len(codes[1:].unique(dim=0)) == dataset.item_num - 1
    assert int(codes[1:, 3].max()) > int(prepared[4].item_codes[1:, 4].max()), "3 levels collide more than 4"


def test_user_token_is_the_hashed_user_id_in_its_own_range(prepared, work):
    model, batch, dataset = prepared[4], first_batch(prepared[3]), prepared[1]._dataset
    tokens, mask = model.encoder_inputs(batch)
    users = [dataset.field2id_token["user_id"][user] for user in batch["user_id"].tolist()]
    expected = [model.vocab.size + zlib.crc32(user.encode()) % 2000 for user in users]
    assert model.user_buckets == 2000 and tokens[:, 0].tolist() == expected and bool(mask[:, 0].all())
    assert model.t5.config.vocab_size == model.vocab.size + 2000
    assert bool((tokens[:, 1:] < model.vocab.size).all()), "item tokens stay below the user range"
    assert len(set(expected)) > len(expected) // 2, "users spread over the buckets"
    history = model.item_tokens(batch["item_id_list"][:, : int(batch["item_length"].max())]).flatten(1)
    assert torch.equal(tokens[:, 1:], history)
    plain = TIGER(subset_config(work / "dataset", user_buckets=0), dataset)
    assert torch.equal(plain.encoder_inputs(batch)[0], history) and plain.t5.config.vocab_size == plain.vocab.size


@pytest.mark.parametrize(("overrides", "message"), [({"sid_source": "titles"}, "sid_source must be"),
                                                    ({"beam_size": 5}, "beam_size"),
                                                    ({"length_bucket_rows": -1}, "length_bucket_rows must be"),
                                                    ({"full_length_inputs": "yes"}, "full_length_inputs must be"),
                                                    ({"code_levels": 5}, "code_levels must be"),
                                                    ({"user_buckets": -2}, "user_buckets must be")])
def test_bad_settings_are_config_errors(prepared, work, overrides, message):
    with pytest.raises(ConfigError, match=message):
        TIGER(subset_config(work / "dataset", **overrides), prepared[1]._dataset)


def test_a_beam_wider_than_the_catalogue_is_refused_in_beam_mode(prepared, work):
    dataset = prepared[1]._dataset
    items = dataset.item_num - 1  # RecBole's item 0 is padding
    with pytest.raises(ConfigError, match=rf"^beam_size {items + 1} exceeds the {items:,} items of Instruments — set "
                                          rf"beam_size <= {items} "):
        TIGER(subset_config(work / "dataset", beam_size=items + 1), dataset)
    assert TIGER(subset_config(work / "dataset", beam_size=items), dataset).beam_size == items
    assert TIGER(subset_config(work / "dataset", beam_size=10 * items, eval_mode="exact"), dataset).eval_mode == "exact"


def test_compile_model_traces_the_loss_in_one_graph(prepared, work):
    """With ``full_length_inputs`` (the CUDA default) ``compile_model`` traces TIGER's loss without a graph break, as
    CUDA graphs (``compile_mode: reduce-overhead``) need, and gives the eager loss; on a CUDA device the traced step
    holds no host tensor, which would make the cudagraphs backend skip its graphs (transformers' own decoder inputs
    put one there)."""
    _, train, _, _, _ = prepared
    model = TIGER(subset_config(work / "dataset", full_length_inputs=True), train._dataset).eval()
    assert_compiled_loss_is_eager_loss(model, first_batch(train), fullgraph=True)
    assert host_nodes_of_cuda_loss(model, first_batch(train)) == []


# Training and ranking

def test_training_steps_decrease_the_loss(prepared):
    config, train, *_ = prepared
    torch.manual_seed(0)
    model = TIGER(config, train._dataset)
    batch = first_batch(train)[:64]
    losses = losses_over_steps(model, lambda: model.calculate_loss(batch), steps=12)
    assert sum(losses[-3:]) / 3 < losses[0] * 0.9


@pytest.mark.parametrize("part_rows", [32, 21, 1])  # 2, 3 and 64 parts of the 64 rows
def test_length_buckets_give_the_loss_of_one_call_on_the_padded_batch(prepared, part_rows):
    model, batch = prepared[4], first_batch(prepared[1])[:64]
    tokens, mask = model.encoder_inputs(batch)
    labels = model.item_tokens(batch["item_id"])
    assert len(mask.sum(1).unique()) > 3, "the rows must have histories of several lengths"
    with torch.no_grad():
        one_call = model.t5(input_ids=tokens, attention_mask=mask, labels=labels).loss
        bucketed = length_bucketed_loss(model.t5, tokens, mask, labels, part_rows)
    torch.testing.assert_close(bucketed, one_call, rtol=1e-5, atol=1e-6)


def test_t5_loss_is_transformers_loss_of_the_labels(prepared):
    """The training loss with decoder inputs built on the device equals transformers' loss from the labels alone (its
    ``_shift_right``), label padding (-100) included."""
    model, batch = prepared[4].eval(), first_batch(prepared[1])[:32]
    tokens, mask = model.encoder_inputs(batch)
    labels = model.item_tokens(batch["item_id"])
    labels[::3, -1] = -100
    with torch.no_grad():
        expected = model.t5(input_ids=tokens, attention_mask=mask, labels=labels).loss
        torch.testing.assert_close(t5_loss(model.t5, tokens, mask, labels), expected, rtol=0, atol=0)


def test_full_length_inputs_give_the_same_loss_and_scores(prepared, work):
    """Padding every history to MAX_ITEM_LIST_LENGTH or to the batch's longest (the default on a CPU) changes the
    shapes only: padding is masked."""
    model, batch = prepared[4].eval(), first_batch(prepared[3])
    batch = batch[batch["item_length"].argsort()[:16]]  # the shortest histories
    padded = TIGER(subset_config(work / "dataset", full_length_inputs=True), prepared[1]._dataset).eval()
    padded.load_state_dict(model.state_dict())
    assert checked_full_length_inputs(None, "cuda") and not checked_full_length_inputs(None, "cpu")
    tokens, _ = padded.encoder_inputs(batch)
    assert tokens.shape[1] > model.encoder_inputs(batch)[0].shape[1], "the batch's longest history must be shorter"
    with torch.no_grad():
        torch.testing.assert_close(padded.calculate_loss(batch), model.calculate_loss(batch), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(padded.full_sort_predict(batch), model.full_sort_predict(batch),
                                   rtol=1e-4, atol=1e-5)


def test_full_sort_predict_scores_exactly_the_beam(prepared):
    model, test = prepared[4], prepared[3]
    interaction = first_batch(test)[:16]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        items, beam_scores = beam(model, interaction)
        candidates = interaction.repeat_interleave(BEAM)
        candidates.update(Interaction({"item_id": items.flatten()}))
        forced = model.predict(candidates).view(len(items), BEAM)
    assert scores.shape == (16, model.n_items)
    finite = torch.isfinite(scores)
    assert finite.sum(1).tolist() == [BEAM] * 16 and not finite[:, 0].any()
    for row in range(16):
        assert sorted(finite[row].nonzero().flatten().tolist()) == sorted(items[row].tolist())
    torch.testing.assert_close(scores.gather(1, items), beam_scores)
    torch.testing.assert_close(forced, beam_scores, atol=1e-4, rtol=1e-5)  # predict gives any item its beam score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sequence_that_is_no_item_is_never_recommended(prepared, seed):
    config, train, _, test, _ = prepared
    torch.manual_seed(seed)
    model = TIGER(config, train._dataset).eval()
    interaction = first_batch(test)[:32]
    with torch.no_grad():
        items, _, tokens = beam(model, interaction, return_tokens=True)
        finite = torch.isfinite(model.full_sort_predict(interaction))
        greedy = greedy_codes(model, interaction)
    item_tuples = {tuple(row) for row in model.item_codes[1:].tolist()}
    assert any(tuple(row) not in item_tuples for row in greedy.tolist()), "unconstrained decoding never left the items"
    assert bool((items >= 1).all())
    assert torch.equal(model.vocab.decode(tokens), model.item_codes[items])  # each beam spells its item's codes
    assert all(tuple(model.item_codes[column].tolist()) in item_tuples for column in finite.nonzero()[:, 1].tolist())


def greedy_codes(model: TIGER, interaction: Interaction) -> torch.Tensor:
    """Unconstrained greedy decoding of ``L`` code tokens (each level's most likely code), as codes."""
    tokens, mask = model.encoder_inputs(interaction)
    decoded = torch.full((len(tokens), 1), model.vocab.decoder_start_id)
    for level in range(model.vocab.levels):
        logits = model.t5(input_ids=tokens, attention_mask=mask, decoder_input_ids=decoded).logits[:, -1]
        best = logits[:, model.vocab.level_slice(level)].argmax(-1) + model.vocab.level_start(level)
        decoded = torch.cat([decoded, best[:, None]], dim=1)
    return model.vocab.decode(decoded[:, 1:])


@pytest.mark.parametrize("exempt", [None, "norms"])
def test_weight_decay_spares_the_layer_norms_only_when_told(prepared, exempt):
    """One AdamW step with zero gradients is weight decay alone: every decayed weight shrinks by lr x decay, and with
    ``weight_decay_exempt: norms`` T5's layer-norm weights (and nothing else) stay as they were."""
    config = subset_config(Path(prepared[0]["data_path"]), learner="adamw", learning_rate=0.1, weight_decay=0.5,
                           weight_decay_exempt=exempt)
    model = TIGER(config, prepared[1]._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "TIGER")(config, model)
    norms = {name for name, module in model.named_modules() if type(module).__name__ == "T5LayerNorm"}
    assert len(norms) == 2 * TINY["num_layers"] + 3 * TINY["num_decoder_layers"] + 2  # per block, then the final two
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    trainer.optimizer.step()
    for name, parameter in model.named_parameters():
        spared = exempt == "norms" and name.rsplit(".", 1)[0] in norms
        factor = 1.0 if spared else 1 - 0.1 * 0.5
        assert torch.allclose(parameter.detach(), before[name] * factor), name


# Metrics through RecBole's evaluator

def hand_metrics(ranks: list[float]) -> dict[str, float]:
    """HR@k and NDCG@k of one target per user at 1-based ``ranks`` (``inf``: not recommended)."""
    result = {}
    for k in (1, 5, 10):
        result[f"hit@{k}"] = sum(rank <= k for rank in ranks) / len(ranks)
        result[f"ndcg@{k}"] = sum(1 / math.log2(rank + 1) for rank in ranks if rank <= k) / len(ranks)
    return result


def target_rank(beam_items: list[int], target: int) -> float:
    return beam_items.index(target) + 1 if target in beam_items else math.inf


def test_known_beam_ranks_give_hand_computed_metrics(prepared):
    config, _, _, test, model = prepared
    ranks = [1, 2, 3, 5, 6, 8, 10, 11, 15, 20, math.inf, math.inf]
    interaction = first_batch(test)[: len(ranks)]
    with torch.no_grad():
        items = beam(model, interaction)[0].tolist()
    outside = [next(item for item in range(1, model.n_items) if item not in row) for row in items]
    targets = torch.tensor([row[rank - 1] if rank < math.inf else other
                            for row, rank, other in zip(items, ranks, outside)])
    interaction.update(Interaction({"item_id": targets}))
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
    collector = Collector(config)
    collector.eval_batch_collect(scores, interaction, torch.arange(len(ranks)), targets)
    result = Evaluator(config).evaluate(collector.get_data_struct())
    assert result == pytest.approx(hand_metrics(ranks), abs=1e-4)


def test_trainer_evaluation_equals_the_ranks_in_the_beam(prepared):
    config, train, valid, test, _ = prepared
    init_seed(config["seed"], True)
    model = TIGER(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "TIGER")(config, model)
    trainer.fit(train, valid, saved=False)
    result = trainer.evaluate(test, load_best_model=False)
    ranks = []
    with torch.no_grad():
        for interaction, _, _, positive_i in test:
            items = beam(model, interaction)[0].tolist()
            ranks += [target_rank(row, target) for row, target in zip(items, positive_i.tolist())]
    assert result == pytest.approx(hand_metrics(ranks), abs=1e-4)


def test_a_few_epochs_of_training_learn_the_next_item(work):
    """A weaker property than beating popularity: on this 500-user subset a 1-layer TIGER of width 32 needs more than
    a minute of CPU to match popularity's test HR@10 (0.048; 0.042 after 10 epochs); 4 epochs take 3 times the
    untrained model's HR@10 and of a random ranking's (10 / items) with a wide margin (0.028 against 0.002 and 0.004)."""
    config = subset_config(work / "dataset", epochs=4, train_batch_size=128, learning_rate=5e-3, lr_scheduler="constant",
                           warmup_steps=0)
    init_seed(config["seed"], True)
    train, valid, test, _ = data_preparation(config, create_dataset(config))
    model = TIGER(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "TIGER")(config, model)
    untrained = trainer.evaluate(test, load_best_model=False)["hit@10"]
    trainer.fit(train, None, saved=False, verbose=False)
    trained = trainer.evaluate(test, load_best_model=False)["hit@10"]
    assert trained >= 3 * max(untrained, 10 / (model.n_items - 1))


# The entry point

def test_entry_point_runs_tiger_end_to_end(work, tmp_path):
    _, record = run_entry_point("TIGER", {**TINY, "data_path": work / "dataset", "allow_data_mismatch": True}, tmp_path)
    assert record["model"] == "TIGER" and record["epochs"] == 1
    assert set(record["test"]) == {"hit@1", "hit@5", "hit@10", "ndcg@1", "ndcg@5", "ndcg@10"}
    assert all(0.0 <= value <= 1.0 for value in record["test"].values())
