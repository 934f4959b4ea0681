"""Constrained beam search over semantic IDs: prefix index, vocabulary, and equality with ``generate``."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from recbole_qrec.errors import MalformedDataError
from recbole_qrec.generation import (
    PrefixIndex,
    SemanticIdVocab,
    TokenTrie,
    additive_padding_mask,
    constrained_beam_search,
    generate_with_trie,
)

HAND_TABLE = [(0, 1, 2), (0, 1, 3), (0, 2, 0), (3, 0, 0), (3, 0, 1)]

pytestmark = pytest.mark.usefixtures("one_thread")


def random_table(n_items: int, levels: int, codebook: int, seed: int) -> torch.Tensor:
    """``n_items`` distinct random code tuples (small codebooks make prefixes collide a lot)."""
    keys = torch.randperm(codebook**levels, generator=torch.Generator().manual_seed(seed))[:n_items]
    return torch.stack([keys // codebook ** (levels - 1 - level) % codebook for level in range(levels)], dim=1)


def tiny_t5(vocab: SemanticIdVocab, seed: int) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab.size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
                      decoder_start_token_id=vocab.decoder_start_id)
    return T5ForConditionalGeneration(config).eval()


def histories(codes: torch.Tensor, vocab: SemanticIdVocab, users: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token histories of 1..6 random items plus EOS, and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 7, (users,), generator=generator)
    items = torch.randint(0, len(codes), (users, 6), generator=generator)
    tokens = torch.cat([vocab.encode(codes[items]).flatten(1), torch.full((users, 1), vocab.eos_id)], dim=1)
    keep = torch.arange(tokens.shape[1]) < (lengths * vocab.levels)[:, None]
    tokens = torch.where(keep, tokens, vocab.pad_id)
    tokens[torch.arange(users), lengths * vocab.levels] = vocab.eos_id
    return tokens, (tokens != vocab.pad_id).long()


def search_case(n_items: int, levels: int, codebook: int, seed: int, users: int = 4):
    vocab = SemanticIdVocab(levels, codebook)
    codes = random_table(n_items, levels, codebook, seed)
    return vocab, codes, tiny_t5(vocab, seed), *histories(codes, vocab, users, seed)


@pytest.mark.parametrize("beam_size", [5, 20])
@pytest.mark.parametrize("dense_limit", [0, 1 << 22], ids=["csr", "dense"])
@pytest.mark.parametrize(("n_items", "levels", "codebook", "seed"), [(300, 3, 8, 0), (200, 4, 4, 1), (120, 2, 16, 2)])
def test_matches_generate_with_trie(beam_size, dense_limit, n_items, levels, codebook, seed):
    vocab, codes, model, tokens, mask = search_case(n_items, levels, codebook, seed)
    index = PrefixIndex(codes, codebook, dense_limit=dense_limit)
    items, scores = constrained_beam_search(model, tokens, mask, index, vocab, beam_size)
    expected_items, expected_scores = generate_with_trie(model, tokens, mask, TokenTrie(codes, vocab), beam_size)
    assert torch.equal(items, expected_items)
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_results_are_valid_items_whose_tokens_decode_to_their_codes(seed):
    vocab, codes, model, tokens, mask = search_case(150 + 50 * seed, 3, 6, seed, users=3)
    items, scores, generated = constrained_beam_search(model, tokens, mask, PrefixIndex(codes, 6), vocab, 12,
                                                       return_tokens=True)
    assert ((items >= 0) & (items < len(codes))).all()
    assert torch.equal(vocab.decode(generated), codes[items])
    assert all(len(set(row)) == len(row) for row in items.tolist())
    assert (scores.diff(dim=1) <= 0).all()


def test_beam_larger_than_catalogue_returns_every_item_then_empty_slots():
    vocab, codes, model, tokens, mask = search_case(6, 3, 4, seed=3)
    items, scores = constrained_beam_search(model, tokens, mask, PrefixIndex(codes, 4), vocab, 10)
    assert all(sorted(row[:6]) == list(range(6)) for row in items.tolist())
    assert (items[:, 6:] == -1).all() and scores[:, 6:].isneginf().all() and scores[:, :6].isfinite().all()
    expected_items, expected_scores = generate_with_trie(model, tokens, mask, TokenTrie(codes, vocab), 10)
    assert torch.equal(items[:, :6], expected_items[:, :6])  # generate pads with ~-1e9 duplicates after them
    torch.testing.assert_close(scores[:, :6], expected_scores[:, :6], rtol=0, atol=1e-4)


def allowed_children(index: PrefixIndex) -> dict[tuple[int, ...], set[int]]:
    """Walk ``index`` from the root: code prefix -> allowed next codes; leaves map to ``{item}``."""
    frontier, allowed = {(): 0}, {}
    for level in range(index.depth):
        deeper = {}
        for prefix, prefix_id in frontier.items():
            row = index.children(level, torch.tensor([prefix_id]))[0]
            allowed[prefix] = set(row.ge(0).nonzero().flatten().tolist())
            deeper.update({(*prefix, code): int(row[code]) for code in allowed[prefix]})
        frontier = deeper
    allowed.update({prefix: {int(index.leaf_items[leaf])} for prefix, leaf in frontier.items()})
    return allowed


@pytest.mark.parametrize("dense_limit", [0, 1 << 22], ids=["csr", "dense"])
def test_prefix_index_children_of_hand_built_table(dense_limit):
    index = PrefixIndex(torch.tensor(HAND_TABLE), 4, item_ids=torch.arange(1, 6), dense_limit=dense_limit)
    assert allowed_children(index) == {
        (): {0, 3},
        (0,): {1, 2}, (3,): {0},
        (0, 1): {2, 3}, (0, 2): {0}, (3, 0): {0, 1},
        (0, 1, 2): {1}, (0, 1, 3): {2}, (0, 2, 0): {3}, (3, 0, 0): {4}, (3, 0, 1): {5},
    }


def test_prefix_index_rejects_shared_code_tuples():
    with pytest.raises(MalformedDataError, match=r"not collision-free: 2 items .*item 1 \(0, 1, 3\), item 5 \(0, 1, 3\)"):
        PrefixIndex(torch.tensor([*HAND_TABLE, (0, 1, 3)]), 4)


def test_prefix_index_rejects_codes_out_of_range():
    with pytest.raises(MalformedDataError, match=r"codes range over 0\.\.3 — they must lie in 0\.\.2"):
        PrefixIndex(torch.tensor(HAND_TABLE), 3)


def test_vocab_round_trip_and_level_check():
    vocab = SemanticIdVocab(levels=3, codebook_size=4)
    codes = torch.tensor(HAND_TABLE)
    assert vocab.size == 14 and vocab.encode(codes)[0].tolist() == [2, 7, 12]
    assert torch.equal(vocab.decode(vocab.encode(codes)), codes)
    with pytest.raises(ValueError, match="token 7 at level 0 is not a code token"):
        vocab.decode(torch.tensor([7, 7, 12]))


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_the_additive_padding_mask_gives_t5_the_logits_of_its_padding_mask(implementation):
    """T5 with the 4D additive mask (which transformers takes as given, reading nothing back from the device) gives
    bit for bit the logits of the same T5 given the 2D padding mask, in float32 and under bfloat16 autocast."""
    table = random_table(40, 3, 8, seed=3)
    vocab = SemanticIdVocab(codebook_size=8, levels=3)
    model = tiny_t5(vocab, seed=3)
    model.config._attn_implementation = implementation
    tokens, mask = histories(table, vocab, users=12, seed=3)
    assert (mask == 0).any() and (mask == 1).any()  # some rows padded, some tokens kept
    labels = vocab.encode(table[:12])
    for dtype in (None, torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            given_2d = model(input_ids=tokens, attention_mask=mask, labels=labels).logits
            given_4d = model(input_ids=tokens, attention_mask=additive_padding_mask(mask), labels=labels).logits
        assert torch.equal(given_4d, given_2d), (implementation, dtype)
    assert additive_padding_mask(None) is None
