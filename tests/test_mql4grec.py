"""MQL4GRec on a 500-user Instruments subset (text + image codes) with a 300-user Games source (text codes only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.evaluator import Collector, Evaluator
from recbole.utils import init_seed

from dataset_prep.subset import convert_user_subsets
from recbole_qrec.config import build_config
from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.data.cross_domain import pretrain_dataset_names, source_settings
from recbole_qrec.data.item_features import run_content_sources
from recbole_qrec.data.sid import load_code_table
from recbole_qrec.errors import ConfigError
from recbole_qrec.generation import constrained_beam_search, credit_target_group
from recbole_qrec.model.macrec import MACRec
from recbole_qrec.model.mql4grec import MQL4GRec
from recbole_qrec.model.mql4grec_modules.fusion import fuse_beams
from recbole_qrec.model.mql4grec_modules.mixes import one_direction_per_row
from recbole_qrec.model.mql4grec_modules.tasks import N_SPECIAL
from recbole_qrec.results import config_hash
from recbole_qrec.trainer import PretrainFineTuneTrainer
from conftest import (assert_compiled_loss_is_eager_loss, first_batch, host_nodes_of_cuda_loss, run_entry_point,
                      work_config)

TINY = {
    "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 8, "epochs": 1, "train_batch_size": 256, "eval_batch_size": 256, "use_gpu": False,
}
SUBSET_USERS = {"Instruments": 500, "Games": 300}
BEAM = 20
STRICT = {"eval_rule": "strict"}
TASKS = ["text_next", "image_next", "text_to_image_next", "image_to_text_next", "text_to_image", "image_to_text"]
CROSS = "text_to_image_next+image_to_text_next"  # the official mix's one cross-language example per row


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def work(amazon_dir, tmp_path_factory):
    """``processed/`` with the first 500 Instruments and 300 Games users, both converted into ``dataset/``."""
    return convert_user_subsets(amazon_dir, tmp_path_factory.mktemp("mql4grec"), SUBSET_USERS)


def subset_config(work: Path, **overrides):
    return work_config("MQL4GRec", work, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def prepared(work):
    """Config, loaders and an untrained MQL4GRec (no sources) on the Instruments subset."""
    config = subset_config(work)
    init_seed(config["seed"], True)
    train, valid, test, _ = data_preparation(config, create_dataset(config))
    return config, train, valid, test, MQL4GRec(config, train._dataset).eval()


@pytest.fixture(scope="module")
def cross_domain(work):
    """The config with Games as pretraining source, the target's training split (carrying the source's code
    tables), the source's training loader, and an MQL4GRec built from them."""
    config = subset_config(work, pretrain_datasets=["Games"], pretrain_epochs=2, pretrain_learning_rate=3e-3,
                           lr_scheduler="constant", warmup_steps=0)
    sources = [build_config("MQL4GRec", name, config_dict=source_settings(config)) for name in pretrain_dataset_names(config)]
    init_seed(config["seed"], True)
    train, _, _, pretrain_data = data_preparation(config, create_dataset(config, sources))
    torch.manual_seed(0)
    return config, train, pretrain_data, MQL4GRec(config, train._dataset)


def item_file_codes(work: Path, dataset, field: str) -> torch.Tensor:
    return load_code_table(dataset, work / "dataset" / "Instruments" / "Instruments.item", field, pad_code=0)


# Languages and task examples

@pytest.mark.parametrize("rule", ["group", "strict"])
def test_languages_are_the_item_codes_in_disjoint_token_blocks(prepared, work, rule):
    config, train, *_ = prepared
    model = MQL4GRec(subset_config(work, eval_rule=rule), train._dataset)
    dataset = train._dataset
    text, image = model.target_codes.codes("text"), model.target_codes.codes("image")
    levels = 5 if rule == "strict" else 4
    assert torch.equal(text[:, :4], item_file_codes(work, dataset, "text_codes"))
    assert torch.equal(image[:, :4], item_file_codes(work, dataset, "image_codes"))
    assert text.shape == image.shape == (dataset.item_num, levels)
    distinct = len(text[1:].unique(dim=0))
    assert distinct == dataset.item_num - 1 if rule == "strict" else distinct < dataset.item_num - 1  # shared text IDs
    size = model.vocabs["text"].codebook_size
    assert size == max(int(text.max()), int(image.max())) + 1 == model.vocabs["image"].codebook_size
    text_ids = set(model.vocabs["text"].encode(text[1:]).flatten().tolist())
    image_ids = set(model.vocabs["image"].encode(image[1:]).flatten().tolist())
    assert not text_ids & image_ids and min(text_ids | image_ids) >= N_SPECIAL
    assert max(image_ids) < model.t5.config.vocab_size == N_SPECIAL + 2 * levels * size


def test_per_row_task_examples_match_the_code_tables_by_hand(prepared, work):
    train = prepared[1]
    model, batch = MQL4GRec(subset_config(work, task_mix="per_row", **STRICT), train._dataset), first_batch(train)
    examples = model.task_examples(batch)
    assert list(examples) == TASKS
    size = model.vocabs["text"].codebook_size

    def text(item: int) -> list[int]:
        codes = model.target_codes.codes("text")[item].tolist()
        return [N_SPECIAL + level * size + code for level, code in enumerate(codes)]

    def image(item: int) -> list[int]:
        codes = model.target_codes.codes("image")[item].tolist()
        return [N_SPECIAL + (5 + level) * size + code for level, code in enumerate(codes)]

    prompts = {name: example.input_ids[:, 0].unique().tolist() for name, example in examples.items()}
    assert all(len(tokens) == 1 and 2 <= tokens[0] < N_SPECIAL for tokens in prompts.values())
    assert len({tokens[0] for tokens in prompts.values()}) == 6
    for row in (0, 1, 7):
        history = batch["item_id_list"][row, : batch["item_length"][row]].tolist()
        target = int(batch["item_id"][row])
        expected = {
            "text_next": (sum(map(text, history), []), text(target)),
            "image_next": (sum(map(image, history), []), image(target)),
            "text_to_image_next": (sum(map(text, history), []), image(target)),
            "image_to_text_next": (sum(map(image, history), []), text(target)),
            "text_to_image": (text(target), image(target)),
            "image_to_text": (image(target), text(target)),
        }
        for name, (source, labels) in expected.items():
            example = examples[name]
            tokens = [prompts[name][0], *source]
            padding = [0] * (example.input_ids.shape[1] - len(tokens))
            assert example.input_ids[row].tolist() == tokens + padding, name
            assert example.attention_mask[row].tolist() == [1] * len(tokens) + padding, name
            assert example.labels[row].tolist() == labels, name


def test_official_mix_shares_cross_rows_and_translates_consistent_item_pairs(prepared):
    model, batch = prepared[4], first_batch(prepared[1])
    examples = model.task_examples(batch)
    rows = len(batch)
    assert len(examples["text_next"].labels) == len(examples["image_next"].labels) == rows
    # one cross example per row, in one example of the batch's rows: each row reads one language's history and
    # writes the other's ID of the row's target
    cross = examples[CROSS]
    assert len(cross.labels) == rows
    prompts = {name: cross.input_ids.new_tensor(N_SPECIAL - len(TASKS) + TASKS.index(name)) for name in TASKS}
    forward = cross.input_ids[:, 0] == prompts["text_to_image_next"]
    assert torch.equal(forward | (cross.input_ids[:, 0] == prompts["image_to_text_next"]), torch.ones_like(forward))
    assert rows // 4 < int(forward.sum()) < rows - rows // 4
    for language, other, chosen in (("text", "image", forward), ("image", "text", ~forward)):
        assert torch.equal(cross.input_ids[chosen, 1:], examples[f"{language}_next"].input_ids[chosen, 1:])
        assert torch.equal(cross.attention_mask[chosen], examples[f"{language}_next"].attention_mask[chosen])
        assert torch.equal(cross.labels[chosen], examples[f"{other}_next"].labels[chosen])
    # translation: an item's ID in one language in, the same item's ID in the other out
    text, image = model.target_codes.codes("text"), model.target_codes.codes("image")
    pairs = {(tuple(model.vocabs["text"].encode(text[item]).tolist()), tuple(model.vocabs["image"].encode(image[item]).tolist()))
             for item in range(1, len(text))}
    translation = examples["text_to_image"]
    assert abs(len(translation.labels) - rows * model.items_per_row[None]) <= 1
    assert all((tuple(source), tuple(labels)) in pairs
               for source, labels in zip(translation.input_ids[:, 1:].tolist(), translation.labels.tolist()))


def test_cross_examples_of_two_shapes_are_split_by_direction(prepared):
    """IDs of different lengths in the two languages cannot share one example: each direction keeps its rows."""
    model, batch = prepared[4], first_batch(prepared[1])
    tokens = {language: model.target_codes.tokens(language, batch["item_id"], model.vocabs[language])
              for language in ("text", "image")}
    history = {language: model.target_codes.tokens(language, model.history(batch), model.vocabs[language])
               for language in ("text", "image")}
    tokens["image"], history["image"] = tokens["image"][:, :-1], history["image"][..., :-1]  # one level fewer
    cross = [task for task in model.tasks if task.name in ("text_to_image_next", "image_to_text_next")]
    direction = torch.randint(2, (len(batch),))
    split = one_direction_per_row(cross, direction, history, tokens)
    assert list(split) == ["text_to_image_next", "image_to_text_next"]
    assert torch.equal(split["text_to_image_next"].labels, tokens["image"][direction == 0])
    assert torch.equal(split["image_to_text_next"].labels, tokens["text"][direction == 1])


def test_official_mix_gives_the_official_task_proportions_over_an_epoch(prepared, work):
    model, train = prepared[4], prepared[1]
    inters = json.loads((work / "processed" / "Instruments" / "Instruments.inter.json").read_text())
    rows = sum(len(items) - 3 for items in inters.values())  # the official training examples per next-item task
    items = len({item for sequence in inters.values() for item in sequence})  # official: each item once per epoch
    counts = dict.fromkeys([*TASKS[:2], CROSS, *TASKS[4:]], 0)
    torch.manual_seed(0)
    for batch in train:
        for name, example in model.task_examples(batch).items():
            counts[name] += len(example.labels)
    total = sum(counts.values())
    assert counts["text_next"] == counts["image_next"] == counts[CROSS] == rows
    assert counts["text_to_image"] == pytest.approx(items, rel=0.03) and counts["image_to_text"] == pytest.approx(items, rel=0.03)
    official_share = 2 * rows / (3 * rows + 2 * items)  # Instruments: 63.5%
    assert (counts["text_next"] + counts["image_next"]) / total == pytest.approx(official_share, abs=0.005)


def test_a_domain_without_image_codes_trains_only_text_tasks(cross_domain, work):
    _, _, pretrain_data, model = cross_domain
    games = pretrain_data["Games"]
    assert list(pretrain_data) == ["Games"] and model.source_codes["Games"].languages == ("text",)
    codes = model.source_codes["Games"].codes("text")
    assert codes.shape == (games._dataset.item_num, 4) and int(codes.max()) < model.vocabs["text"].codebook_size
    assert not [key for key in model.state_dict() if "Games" in key], "source tables are for pretraining only"
    batch = first_batch(games)
    examples = model.task_examples(batch, domain="Games")
    assert list(examples) == ["text_next"]
    assert torch.equal(examples["text_next"].labels, model.vocabs["text"].encode(codes[batch["item_id"]]))
    assert torch.isfinite(model.pretrain_loss(batch, "Games"))


# Training

@pytest.mark.parametrize("mix", ["official", "per_row"])
@pytest.mark.parametrize("part_rows", [0, 64])  # the history tasks' rows in one T5 call, or in length buckets
def test_task_mixture_loss_is_the_mean_over_all_examples(prepared, work, mix, part_rows):
    train = prepared[1]
    model = MQL4GRec(subset_config(work, task_mix=mix, length_bucket_rows=part_rows), train._dataset).eval()
    batch = first_batch(train)[:64]
    torch.manual_seed(0)
    examples = model.task_examples(batch)
    with torch.no_grad():
        per_task = torch.stack([model.t5(**example._asdict()).loss for example in examples.values()])
        torch.manual_seed(0)  # the same random draws (cross directions, translated items) as above
        mixture = model.calculate_loss(batch)
    rows = torch.tensor([len(example.labels) for example in examples.values()], dtype=torch.float)
    assert len({example.input_ids.shape[1] for example in examples.values()}) == 2
    torch.testing.assert_close(mixture, (per_task * rows).sum() / rows.sum(), rtol=1e-5, atol=1e-6)
    if mix == "per_row":  # every task has every row: the mean of the per-task losses
        torch.testing.assert_close(mixture, per_task.mean(), rtol=1e-5, atol=1e-6)


def test_full_length_inputs_give_the_loss_of_batch_padded_inputs(prepared, work):
    """Histories padded to MAX_ITEM_LIST_LENGTH or to the batch's longest (the default on a CPU): the same mixture
    loss."""
    train, model = prepared[1], prepared[4]
    padded = MQL4GRec(subset_config(work, full_length_inputs=True), train._dataset).eval()
    padded.load_state_dict(model.state_dict())
    batch = first_batch(train)
    batch = batch[batch["item_length"].argsort()[:64]]  # the shortest histories
    assert padded.history(batch).shape[1] > model.history(batch).shape[1]
    with torch.no_grad():
        torch.manual_seed(0)
        full = padded.calculate_loss(batch)
        torch.manual_seed(0)  # the same task draws
        torch.testing.assert_close(model.calculate_loss(batch), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mix", ["official", "per_row"])
def test_one_t5_call_gives_the_loss_and_gradients_of_one_call_per_input_length(prepared, work, mix):
    """``t5_calls: one`` runs the history and the translation tasks through T5 once, the translation inputs padded
    and masked, where ``per_length`` runs it once per input length: the same loss and gradients, in half the calls."""
    train, model = prepared[1], prepared[4]
    one = MQL4GRec(subset_config(work, task_mix=mix, t5_calls="one"), train._dataset).eval()
    per_length = MQL4GRec(subset_config(work, task_mix=mix, t5_calls="per_length"), train._dataset).eval()
    per_length.load_state_dict(model.state_dict())
    one.load_state_dict(model.state_dict())
    batch = first_batch(train)
    results = {}
    for name, variant in (("one", one), ("per_length", per_length)):
        calls = []
        hook = variant.t5.register_forward_hook(lambda module, args, output: calls.append(1))
        torch.manual_seed(0)  # the same task draws
        loss = variant.calculate_loss(batch)
        loss.backward()
        hook.remove()
        results[name] = loss.detach(), {key: p.grad for key, p in variant.named_parameters() if p.grad is not None}, calls
    (loss_one, grads_one, calls_one), (loss_per_length, grads_per_length, calls_per_length) = results.values()
    assert (len(calls_one), len(calls_per_length)) == (1, 2)
    torch.testing.assert_close(loss_one, loss_per_length, rtol=1e-5, atol=1e-6)
    assert grads_one.keys() == grads_per_length.keys()
    for key, grad in grads_per_length.items():
        torch.testing.assert_close(grads_one[key], grad, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("mix, calls", [("official", "per_length"), ("per_row", "per_length"), ("official", "one")])
def test_compile_model_traces_the_loss_of_either_task_mix_as_one_graph(prepared, work, mix, calls):
    """``compile_model`` traces either task mix with full-length histories as one graph (the shapes of a step known
    before it runs: no row count read back from the device, which once split the official mix's step in six graphs)
    and gives the eager loss; a frozen dataclass of a task once made tracing fail at the first step."""
    config, train, _, _, _ = prepared
    model = MQL4GRec(subset_config(work, task_mix=mix, full_length_inputs=True, t5_calls=calls), train._dataset).eval()
    assert_compiled_loss_is_eager_loss(model, first_batch(train), fullgraph=True)
    assert host_nodes_of_cuda_loss(model, first_batch(train)) == []  # (test_tiger.py: the cudagraphs backend)


@pytest.mark.parametrize("domain", ["Games", "fine-tune"])
def test_training_steps_decrease_the_loss(cross_domain, domain):
    config, train, pretrain_data, _ = cross_domain
    torch.manual_seed(0)
    model = MQL4GRec(config, train._dataset)
    loader = pretrain_data["Games"] if domain == "Games" else train
    batch = first_batch(loader)[:64]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        torch.manual_seed(1)  # the same examples every step (cross directions and translated items are drawn)
        loss = model.calculate_loss(batch) if domain == "fine-tune" else model.pretrain_loss(batch, domain)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < losses[0] * 0.9


def test_pretraining_on_the_games_source_lowers_the_epoch_loss(cross_domain):
    config, train, pretrain_data, model = cross_domain
    losses = PretrainFineTuneTrainer(config, model).pretrain(train, pretrain_data, verbose=False)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert losses[1] < losses[0]  # by about 7% on this subset


# Ranking

def floor_sum_reference(beams: list[tuple[list[int], list[float]]], levels: list[int]) -> dict[int, float]:
    """Slow fusion of one user's beams: sum of scores, a beam's lowest score for an item it lacks."""
    lists = [{item: score for item, score in zip(items, scores) if score > -math.inf} for items, scores in beams]
    floors = [min(scores.values()) for scores in lists]
    return {item: sum(scores.get(item, floor) for scores, floor in zip(lists, floors)) for item in set().union(*lists)}


def official_reference(beams: list[tuple[list[int], list[float]]], levels: list[int]) -> dict[int, float]:
    """The official ensemble's loop: beam positions in turn, text then image; a score seen before is averaged with
    the new one plus 1 (scores length-normalised over the L codes and EOS)."""
    fused: dict[int, float] = {}
    for position in range(len(beams[0][0])):
        for (items, scores), length in zip(beams, levels):
            item, score = items[position], scores[position] / (length + 1)
            if score > -math.inf:
                fused[item] = (score + fused[item]) / 2 + 1 if item in fused else score
    return fused


REFERENCES = {"official": official_reference, "floor_sum": floor_sum_reference}


def test_fusion_of_hand_made_beams():
    text = (torch.tensor([[3, 5, 7]]), torch.tensor([[-1.0, -2.0, -4.0]]))
    image = (torch.tensor([[5, 9, -1]]), torch.tensor([[-0.5, -3.0, -math.inf]]))
    floor_sum = torch.full((1, 10), -math.inf)
    floor_sum[0, [3, 5, 7, 9]] = torch.tensor([-1.0 - 3.0, -2.0 - 0.5, -4.0 - 3.0, -4.0 - 3.0])
    assert torch.equal(fuse_beams([text, image], 10, [4, 4], "floor_sum"), floor_sum)
    official = torch.full((1, 10), -math.inf)  # 4 codes + EOS: scores / 5; item 5 in both beams: mean + 1
    official[0, [3, 5, 7, 9]] = torch.tensor([-0.2, (-0.4 - 0.1) / 2 + 1, -0.8, -0.6])
    torch.testing.assert_close(fuse_beams([text, image], 10, [4, 4], "official"), official)
    assert official[0].topk(2).indices.tolist() == [5, 3]  # found by both languages: ranked first
    assert torch.equal(fuse_beams([text], 10, [4], "floor_sum")[0, [3, 5, 7]], text[1][0])
    torch.testing.assert_close(fuse_beams([text], 10, [4], "official")[0, [3, 5, 7]], text[1][0] / 5)


@pytest.mark.parametrize("fusion", ["official", "floor_sum"])
def test_full_sort_predict_follows_the_fusion_of_both_beams(prepared, work, fusion):
    train, test = prepared[1], prepared[3]
    model = MQL4GRec(subset_config(work, beam_fusion=fusion, **STRICT), train._dataset).eval()
    interaction = first_batch(test)[:16]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        beams = [model.beam(interaction, language) for language in ("text", "image")]
    assert model.ranking_languages == ["text", "image"] and scores.shape == (16, model.n_items)
    for row in range(16):
        reference = REFERENCES[fusion]([(items[row].tolist(), values[row].tolist()) for items, values in beams], [5, 5])
        finite = torch.isfinite(scores[row]).nonzero().flatten().tolist()
        assert sorted(finite) == sorted(reference) and 0 not in finite
        torch.testing.assert_close(scores[row, finite], torch.tensor([reference[item] for item in finite]))
        top = scores[row].topk(10).indices.tolist()
        best = sorted(reference.values(), reverse=True)[:10]
        torch.testing.assert_close(torch.tensor([reference[item] for item in top]), torch.tensor(best))


@pytest.mark.parametrize("fusion", ["official", "floor_sum"])
def test_predict_scores_items_as_a_beam_over_all_items_would(prepared, work, fusion):
    train, test = prepared[1], prepared[3]
    model = MQL4GRec(subset_config(work, beam_fusion=fusion, **STRICT), train._dataset).eval()
    exhaustive = MQL4GRec(subset_config(work, beam_fusion=fusion, beam_size=model.n_items - 1, **STRICT),
                          train._dataset).eval()
    exhaustive.load_state_dict(model.state_dict())
    interaction = first_batch(test)[:3]
    candidates = interaction.repeat_interleave(model.n_items - 1)
    candidates.update(Interaction({"item_id": torch.arange(1, model.n_items).repeat(3)}))
    with torch.no_grad():
        full = exhaustive.full_sort_predict(interaction)
        forced = model.predict(candidates).view(3, -1)
    assert torch.isfinite(full[:, 1:]).all()  # every item is in both exhaustive beams: no floors
    torch.testing.assert_close(forced, full[:, 1:], atol=2e-4, rtol=1e-5)


def rank_metrics(config, scores: torch.Tensor, interaction: Interaction) -> dict[str, float]:
    """RecBole's Hit/NDCG of ``scores`` for the targets of ``interaction``."""
    collector = Collector(config)
    collector.eval_batch_collect(scores, interaction, torch.arange(len(interaction)), interaction["item_id"])
    return Evaluator(config).evaluate(collector.get_data_struct())


def test_group_rule_counts_a_generated_id_the_target_shares_and_strict_does_not(prepared, work, monkeypatch):
    config, train, _, test, group_model = prepared
    strict_model = MQL4GRec(subset_config(work, **STRICT), train._dataset).eval()
    groups = group_model.groups["text"]
    shared = (groups != torch.arange(len(groups))).nonzero().flatten()  # items whose text ID an earlier item has
    assert len(shared) >= 2, "the real text codes of the subset have shared IDs"
    targets, firsts = shared[:2], groups[shared[:2]]
    assert torch.equal(group_model.target_codes.codes("text")[targets], group_model.target_codes.codes("text")[firsts])
    interaction = first_batch(test)[:2]
    interaction.update(Interaction({"item_id": targets}))
    others = torch.tensor([[item for item in range(1, 40) if item not in firsts.tolist() + targets.tolist()][:7]] * 2)
    # Both models generate the first item's text ID at rank 1 (group: the shared ID, strict: that item's own ID)
    # and other items; the target's own strict ID is in neither beam.
    text_beam = (torch.cat([firsts[:, None], others[:, :3]], 1), torch.tensor([[-1.0, -2.0, -3.0, -4.0]] * 2))
    image_beam = (others[:, 3:], torch.tensor([[-1.5, -2.5, -3.5, -4.5]] * 2))
    for model in (group_model, strict_model):
        monkeypatch.setattr(model, "beam", lambda _, language: text_beam if language == "text" else image_beam)
    with torch.no_grad():
        group = rank_metrics(config, group_model.full_sort_predict(interaction), interaction)
        strict = rank_metrics(config, strict_model.full_sort_predict(interaction), interaction)
    assert group["hit@1"] == 1.0 and group["ndcg@10"] == 1.0
    assert strict["hit@10"] == 0.0


def test_group_rule_moves_only_the_target_and_its_groups_first_item():
    scores = torch.tensor([[-math.inf, 0.5, -1.0, 0.2, -math.inf]])
    groups = torch.tensor([0, 1, 2, 1, 4])  # item 3 shares item 1's ID
    assert torch.equal(credit_target_group(scores, torch.tensor([3]), groups), scores[:, [0, 3, 2, 1, 4]])
    assert torch.equal(credit_target_group(scores, torch.tensor([2]), groups), scores)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_sequence_that_is_no_item_is_never_recommended(prepared, seed):
    config, train, _, test, _ = prepared
    torch.manual_seed(seed)
    model = MQL4GRec(config, train._dataset).eval()
    interaction = first_batch(test)[:32]
    with torch.no_grad():
        finite = torch.isfinite(model.full_sort_predict(interaction))
        found = torch.zeros_like(finite)
        for language in ("text", "image"):
            vocab, codes = model.vocabs[language], model.target_codes.codes(language)
            tokens, mask = model.history_input(interaction, language)
            items, _, generated = constrained_beam_search(model.t5, tokens, mask, model.indexes[language], vocab, BEAM,
                                                          return_tokens=True)
            assert bool((items >= 1).all()) and torch.equal(vocab.decode(generated), codes[items])
            found.scatter_(1, items, True)
            free = level_wise_greedy(model, tokens, mask, language)
            item_tuples = {tuple(row) for row in codes[1:].tolist()}
            assert any(tuple(row) not in item_tuples for row in free.tolist()), "free decoding never left the items"
    # the group rule hands a shared ID's score from its first item to the target that shares it
    assert torch.equal(finite, credit_target_group(found, interaction["item_id"], model.groups["text"]))


def level_wise_greedy(model: MQL4GRec, tokens: torch.Tensor, mask: torch.Tensor, language: str) -> torch.Tensor:
    """Greedy ``generate`` restricted only to each level's token block (no item constraint), as codes."""
    vocab = model.vocabs[language]

    def level_block(batch_id: int, decoded: torch.Tensor) -> list[int]:
        return list(range(vocab.level_start(len(decoded) - 1), vocab.level_start(len(decoded))))

    output = model.t5.generate(input_ids=tokens, attention_mask=mask, max_new_tokens=vocab.levels, num_beams=1,
                               do_sample=False, prefix_allowed_tokens_fn=level_block)
    return vocab.decode(output[:, 1:])


# Settings and the entry point

@pytest.mark.parametrize(("overrides", "message"), [
    ({"tasks": ["text_next", "captioning"]}, "tasks must be a non-empty list"),
    ({"beam_size": 5}, "beam_size"),
    ({"image_sid_source": "video_codes"}, "image_sid_source must be .* or --image_sid_source=None to leave that"),
    ({"tasks": ["text_to_image", "image_to_text"]}, "next-item generation task"),
    ({"pretrain_tasks": []}, "pretrain_tasks must be a non-empty list"),
    ({"eval_rule": "loose"}, "eval_rule must be one of group, strict"),
    ({"task_mix": "uniform"}, "task_mix must be one of official, per_row"),
    ({"t5_calls": "two"}, "t5_calls must be one of per_length, one, got .two. — e.g. --t5_calls=one"),
    ({"beam_fusion": "max"}, "beam_fusion must be one of official, floor_sum"),
])
def test_bad_settings_are_config_errors(prepared, work, overrides, message):
    with pytest.raises(ConfigError, match=message):
        MQL4GRec(subset_config(work, **overrides), prepared[1]._dataset)


def test_a_target_without_image_codes_runs_text_only_at_the_defaults(work, caplog):
    """Games has text codes only: at its default image source MQL4GRec leaves the image language out, says so (a
    warning, and the run's content sources name the field missing) and is the model of ``image_sid_source: None``;
    the same field named by the user, or MACRec, whose alignment needs both languages, is a ConfigError."""
    settings = {**TINY, "data_path": str(work / "dataset"), "checkpoint_dir": str(work / "saved"), **STRICT}
    config = build_config("MQL4GRec", "Games", config_dict=settings)
    init_seed(config["seed"], True)
    train, _, test, _ = data_preparation(config, create_dataset(config))
    with caplog.at_level("WARNING"):
        sources = run_content_sources(config)["Games"]
    assert sources["image_codes"] == "missing" and sources["text_codes"] != "missing", sources
    assert "MQL4GRec on Games: no image_codes in the dataset — it runs without that content" in caplog.text
    text_only = build_config("MQL4GRec", "Games", config_dict={**settings, "image_sid_source": None})
    models = []
    for model_config in (config, text_only):
        torch.manual_seed(0)
        models.append(MQL4GRec(model_config, train._dataset).eval())
    assert models[0].target_codes.languages == ("text",) and models[0].ranking_languages == ["text"]
    assert models[0].t5.config.vocab_size == models[1].t5.config.vocab_size
    interaction = first_batch(test)[:8]
    with torch.no_grad():
        torch.testing.assert_close(models[0].full_sort_predict(interaction), models[1].full_sort_predict(interaction))
    assert torch.isfinite(models[0].calculate_loss(first_batch(train)))
    named = build_config("MQL4GRec", "Games", config_dict={**settings, "image_sid_source": "image_codes"})
    with pytest.raises(ConfigError, match="image_sid_source is 'image_codes', which dataset Games does not provide"):
        MQL4GRec(named, train._dataset)
    with pytest.raises(ConfigError, match="MACRec aligns the text and image languages, but dataset Games has no "
                                          "image_codes .* or MQL4GRec, which runs without a language the dataset lacks"):
        MACRec(build_config("MACRec", "Games", config_dict=settings), train._dataset)


def test_sources_that_cannot_work_are_config_errors(cross_domain, work):
    with pytest.raises(ConfigError, match="pretrain_epochs"):
        pretrain_dataset_names(subset_config(work, pretrain_datasets=["Games"]))
    config = subset_config(work, pretrain_datasets=["Games"], pretrain_epochs=1, pretrain_tasks=["image_next"])
    with pytest.raises(ConfigError, match="pretraining source Games"):
        MQL4GRec(config, cross_domain[1]._dataset)


def test_text_only_target_ranks_with_the_text_beam(prepared, work):
    config, train, _, test, _ = prepared
    model = MQL4GRec(subset_config(work, image_sid_source=None, **STRICT), train._dataset).eval()
    interaction = first_batch(test)[:8]
    with torch.no_grad():
        items, scores = model.beam(interaction, "text")
        full = model.full_sort_predict(interaction)
    assert model.ranking_languages == ["text"] and list(model.task_examples(first_batch(train))) == ["text_next"]
    torch.testing.assert_close(full.gather(1, items), scores / 6)  # official fusion of one beam: 5 codes + EOS
    assert torch.isfinite(full).sum().item() == 8 * BEAM


def test_entry_point_pretrains_on_games_and_fine_tunes_on_instruments(work, tmp_path):
    settings = {**TINY, "pretrain_datasets": "['Games']", "pretrain_epochs": 1, "data_path": work / "dataset",
                "allow_data_mismatch": True}
    log, record = run_entry_point("MQL4GRec", settings, tmp_path)
    assert "pretraining source Games" in log and "pretrain epoch 0" in log
    assert "eval_rule = group" in log  # the rule is part of the logged configuration and of the config hash
    assert record["model"] == "MQL4GRec"
    assert set(record["test"]) == {"hit@1", "hit@5", "hit@10", "ndcg@1", "ndcg@5", "ndcg@10"}
    assert all(0.0 <= value <= 1.0 for value in record["test"].values())


def test_the_official_defaults_and_their_alternatives_change_the_config_hash(work):
    defaults = subset_config(work)
    assert (defaults["eval_rule"], defaults["task_mix"], defaults["beam_fusion"]) == ("group", "official", "official")
    assert (defaults["lr_scheduler"], defaults["clip_grad_norm"]) == ("cosine", {"max_norm": 1.0})
    hashes = {config_hash(subset_config(work, **change)) for change in
              [{}, STRICT, {"task_mix": "per_row"}, {"beam_fusion": "floor_sum"}]}
    assert len(hashes) == 4
