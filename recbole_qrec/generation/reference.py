"""Reference decoding: ``model.generate`` constrained by a Python trie over the code table.

Slow (a Python call per beam and step) but independent of :mod:`prefix_index`; tests and
``bench/beam_search.py`` check :func:`constrained_beam_search` against it. The settings that make
both agree: ``max_new_tokens=L`` (the trie never allows EOS, so every beam ends after ``L`` code
tokens, all at the same step, which makes ``early_stopping`` irrelevant) and ``length_penalty=0.0``
(``sequences_scores`` = sum of the log-softmax probabilities of the ``L`` tokens).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from recbole_qrec.generation.vocab import SemanticIdVocab


class TokenTrie:
    """Allowed next tokens after each decoder prefix (``[decoder_start, code tokens...]``) of ``codes``."""

    def __init__(self, codes: torch.Tensor, vocab: SemanticIdVocab) -> None:
        self.vocab = vocab
        rows = [tuple(row) for row in vocab.encode(codes).tolist()]
        self.items = {row: item for item, row in enumerate(rows)}
        children: dict[tuple[int, ...], set[int]] = {}
        for row in rows:
            for length in range(len(row)):
                children.setdefault(row[:length], set()).add(row[length])
        self.children = {prefix: sorted(tokens) for prefix, tokens in children.items()}

    def allowed_tokens(self, batch_id: int, decoder_ids: torch.Tensor) -> list[int]:
        """``prefix_allowed_tokens_fn`` for ``generate``; only beams already scored ``-inf`` leave the trie (they get pad)."""
        return self.children.get(tuple(decoder_ids[1:].tolist()), [self.vocab.pad_id])

    def item(self, tokens: list[int]) -> int:
        """Item index of a full token sequence, -1 if it is no item."""
        return self.items.get(tuple(tokens), -1)


@torch.no_grad()
def generate_with_trie(model: PreTrainedModel, encoder_input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       trie: TokenTrie, beam_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(items [batch, beam_size], scores [batch, beam_size])`` from ``model.generate`` with ``trie``."""
    levels = trie.vocab.levels
    output = model.generate(
        input_ids=encoder_input_ids, attention_mask=attention_mask, do_sample=False, num_beams=beam_size,
        num_return_sequences=beam_size, max_new_tokens=levels, length_penalty=0.0,
        prefix_allowed_tokens_fn=trie.allowed_tokens, output_scores=True, return_dict_in_generate=True,
    )
    sequences = output.sequences[:, 1:].reshape(len(encoder_input_ids), beam_size, levels).tolist()
    items = torch.tensor([[trie.item(tokens) for tokens in beams] for beams in sequences])
    return items, output.sequences_scores.reshape(len(encoder_input_ids), beam_size).cpu()
