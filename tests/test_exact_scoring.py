"""Exact ranking (``eval_mode: exact``) of TIGER and MQL4GRec on the 500-user Instruments subset: every item scored by
its semantic ID's teacher-forced log-probability, equal to a beam search as wide as the catalogue."""

from __future__ import annotations

import math

import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.errors import ConfigError
from recbole_qrec.generation import constrained_beam_search, exact_score_matrix
from recbole_qrec.model.mql4grec import MQL4GRec
from recbole_qrec.model.tiger import TIGER
from conftest import work_config

TINY = {
    "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 8, "epochs": 1, "train_batch_size": 256, "eval_batch_size": 256, "use_gpu": False,
}
USERS = 6

pytestmark = pytest.mark.usefixtures("one_thread")


def subset_config(model: str, work, **overrides):
    return work_config(model, work, **{**TINY, **overrides})


def split(config) -> tuple:
    """The training split of ``config``'s dataset and its first test users (with their targets)."""
    init_seed(config["seed"], True)
    train, _, test, _ = data_preparation(config, create_dataset(config))
    return train, next(iter(test))[0][:USERS]


@pytest.fixture(scope="module")
def loaders(work):
    """TIGER's data (text codes)."""
    return split(subset_config("TIGER", work))


@pytest.fixture(scope="module")
def mql4grec_loaders(work):
    """MQL4GRec's data (text and image codes)."""
    return split(subset_config("MQL4GRec", work))


def trained(model: torch.nn.Module, train) -> torch.nn.Module:
    """``model`` after a few AdamW steps on one training batch (peaked, untied scores), in eval mode."""
    torch.manual_seed(0)
    batch = next(iter(train))[:64]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(4):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    return model.eval()


def same_model(cls, config, dataset, model: torch.nn.Module) -> torch.nn.Module:
    """A ``cls`` of ``config`` with the weights of ``model``, in eval mode."""
    other = cls(config, dataset)
    other.load_state_dict(model.state_dict())
    return other.eval()


@pytest.fixture(scope="module")
def tiger(work, loaders):
    """A briefly trained TIGER ranking exactly, and the same weights ranking by a beam over the whole catalogue."""
    train, _ = loaders
    dataset = train._dataset
    exact = trained(TIGER(subset_config("TIGER", work, eval_mode="exact"), dataset), train)
    wide = same_model(TIGER, subset_config("TIGER", work, beam_size=dataset.item_num - 1), dataset, exact)
    return exact, wide


def test_tiger_exact_ranking_is_the_beam_as_wide_as_the_catalogue(tiger, loaders):
    exact, wide = tiger
    interaction = loaders[1]
    with torch.no_grad():
        scores, beam = exact.full_sort_predict(interaction), wide.full_sort_predict(interaction)
    assert scores.shape == (USERS, exact.n_items)
    assert bool(torch.isfinite(scores[:, 1:]).all()) and bool((scores[:, 0] == -math.inf).all())
    assert bool(torch.isfinite(beam[:, 1:]).all()), "a beam as wide as the catalogue keeps every item"
    torch.testing.assert_close(scores, beam, atol=1e-4, rtol=1e-5)
    assert torch.equal(scores.topk(20).indices, beam.topk(20).indices)
    assert float(scores[:, 1:].std(1).min()) > 0.1, "the scores are not a near-uniform tie"


def full_and_predicted_scores(model, interaction: Interaction, per_user: int) -> tuple[torch.Tensor, ...]:
    """``full_sort_predict`` of ``interaction``, ``per_user`` sampled items per user and ``predict``'s scores of them."""
    items = torch.randint(1, model.n_items, (USERS, per_user), generator=torch.Generator().manual_seed(0))
    candidates = interaction.repeat_interleave(per_user)
    candidates.update(Interaction({"item_id": items.flatten()}))
    with torch.no_grad():
        return model.full_sort_predict(interaction), items, model.predict(candidates).view(USERS, per_user)


def test_tiger_exact_scores_are_the_teacher_forced_scores_of_predict(tiger, loaders):
    scores, items, forced = full_and_predicted_scores(tiger[0], loaders[1], 5)
    torch.testing.assert_close(scores.gather(1, items), forced, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("decoder_rows", [1, 7, 100_000])  # one item per call, uneven chunks, all items at once
def test_the_chunking_does_not_change_the_scores(tiger, loaders, decoder_rows):
    exact = tiger[0]
    tokens, mask = exact.encoder_inputs(loaders[1][:2])
    items = torch.arange(1, 40)
    with torch.no_grad():
        chunked = exact_score_matrix(exact.t5, tokens, mask, exact.item_tokens(items), items, exact.n_items,
                                     decoder_rows=decoder_rows)
        reference = exact.full_sort_predict(loaders[1][:2])
    assert bool((chunked[:, 40:] == -math.inf).all())
    torch.testing.assert_close(chunked[:, 1:40], reference[:, 1:40], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("fusion", ["official", "floor_sum"])
def test_mql4grec_exact_strict_ranking_fuses_every_items_teacher_forced_scores(work, mql4grec_loaders, fusion):
    train, interaction = mql4grec_loaders
    config = subset_config("MQL4GRec", work, eval_mode="exact", eval_rule="strict", beam_fusion=fusion)
    torch.manual_seed(0)
    model = MQL4GRec(config, train._dataset).eval()
    scores, items, forced = full_and_predicted_scores(model, interaction, 20)
    assert model.ranking_languages == ["text", "image"] and bool((scores[:, 0] == -math.inf).all())
    assert bool(torch.isfinite(scores[:, 1:]).all()), "under the strict rule every item has its own IDs"
    torch.testing.assert_close(scores.gather(1, items), forced, atol=2e-4, rtol=1e-5)


def test_mql4grec_exact_group_ranking_is_the_wide_beams_with_the_group_credit(work, mql4grec_loaders):
    """Text ranking only, group rule: items sharing a text ID tie, so the ID is scored once, on its first item, and
    the target takes it, as with a beam that keeps every ID."""
    train, interaction = mql4grec_loaders
    dataset = train._dataset
    exact = trained(MQL4GRec(subset_config("MQL4GRec", work, eval_mode="exact", tasks=["text_next"]), dataset), train)
    wide = same_model(MQL4GRec, subset_config("MQL4GRec", work, tasks=["text_next"], beam_size=dataset.item_num - 1),
                      dataset, exact)
    groups = exact.groups["text"]
    shared = (groups != torch.arange(len(groups))).nonzero().flatten()[:USERS]
    assert len(shared) == USERS, "the subset's text codes are shared by several items"
    interaction = interaction[: len(shared)]
    interaction.update(Interaction({"item_id": shared}))  # each target shares its text ID with an earlier item
    with torch.no_grad():
        scores, beam = exact.full_sort_predict(interaction), wide.full_sort_predict(interaction)
    torch.testing.assert_close(scores, beam, atol=1e-4, rtol=1e-5)
    finite = torch.isfinite(scores)
    assert finite.sum(1).tolist() == [len(exact.exact_items)] * len(shared) < [dataset.item_num - 1] * len(shared)
    rows = torch.arange(len(shared))
    assert bool(finite[rows, shared].all()) and not bool(finite[rows, groups[shared]].any())


@pytest.mark.parametrize("model", [TIGER, MQL4GRec])
def test_a_bad_eval_mode_is_a_one_line_config_error(work, mql4grec_loaders, model):
    with pytest.raises(ConfigError, match="eval_mode must be one of beam, exact, got 'greedy'") as error:
        model(subset_config(model.__name__, work, eval_mode="greedy"), mql4grec_loaders[0]._dataset)
    assert "\n" not in str(error.value)


def test_exact_mode_needs_no_beam_covering_the_cut_offs(work, loaders):
    dataset = loaders[0]._dataset
    with pytest.raises(ConfigError, match="beam_size"):
        TIGER(subset_config("TIGER", work, beam_size=5), dataset)
    assert TIGER(subset_config("TIGER", work, beam_size=5, eval_mode="exact"), dataset).eval_mode == "exact"


def test_the_default_is_the_beam_search(work, loaders):
    config = subset_config("TIGER", work)
    assert config["eval_mode"] == "beam" and subset_config("MQL4GRec", work)["eval_mode"] == "beam"
    model = TIGER(config, loaders[0]._dataset).eval()
    tokens, mask = model.encoder_inputs(loaders[1])
    with torch.no_grad():
        scores = model.full_sort_predict(loaders[1])
        items, _ = constrained_beam_search(model.t5, tokens, mask, model.prefix_index(), model.vocab, 20)
    assert torch.isfinite(scores).sum(1).tolist() == [20] * USERS
    assert bool(torch.isfinite(scores.gather(1, items)).all())
