"""Exact ranking of every item by its semantic ID's sequence log-probability (``eval_mode: exact``).

The beam search (:mod:`recbole_qrec.generation.beam_search`) scores only the items it keeps and leaves the others at
``-inf``. Here every listed item gets the score the beam search would give it if nothing were pruned: the sum of the
per-token log-probabilities (log-softmax over the whole vocabulary) of its ``L`` code tokens, teacher-forced. The
encoder runs once per user; the decoder then reads the code tokens of a chunk of items for all users of the batch at
once, reusing the encoder output (no prefix sharing: each item's ``L`` decoder positions are computed on their own).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from recbole_qrec.errors import checked_choice
from recbole_qrec.generation.masks import additive_padding_mask

EVAL_MODES = ("beam", "exact")
DECODER_ROWS = 4096  # users x items per decoder call: bounds the memory of the repeated encoder output and the logits


def checked_eval_mode(value: object) -> str:
    """``eval_mode`` if it is one of :data:`EVAL_MODES`, else a :class:`ConfigError` saying what to set."""
    return checked_choice("eval_mode", value, EVAL_MODES, "beam: the constrained beam search (items outside it "
                          "score -inf), exact: every item's sequence log-probability")


@torch.no_grad()
def exact_score_matrix(model: PreTrainedModel, encoder_input_ids: Tensor, attention_mask: Tensor | None,
                       item_tokens: Tensor, item_ids: Tensor, n_items: int, decoder_rows: int = DECODER_ROWS) -> Tensor:
    """``[B, n_items]``: column ``item_ids[i]`` holds the sequence log-probability of the code tokens
    ``item_tokens[i]`` (``[N, L]``) given each user's encoder input ``[B, T]``; every other column is ``-inf``.

    Equals :func:`~recbole_qrec.model.layers.teacher_forced_log_prob` of each (user, item) pair and, for the items it
    keeps, the score of :func:`~recbole_qrec.generation.constrained_beam_search`. Items are scored in chunks of
    ``max(1, decoder_rows // B)``, one decoder call per chunk for all ``B`` users.
    """
    batch, attention_mask = len(encoder_input_ids), additive_padding_mask(attention_mask)
    hidden = model.get_encoder()(input_ids=encoder_input_ids, attention_mask=attention_mask).last_hidden_state
    decoder_inputs = model.prepare_decoder_input_ids_from_labels(labels=item_tokens)
    chunk = max(1, decoder_rows // batch)
    parts = []
    for labels, inputs in zip(item_tokens.split(chunk), decoder_inputs.split(chunk)):
        items = len(labels)  # rows: user 0 with each item of the chunk, then user 1, ...
        mask = None if attention_mask is None else attention_mask.repeat_interleave(items, dim=0)
        logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden.repeat_interleave(items, dim=0)),
                       attention_mask=mask, decoder_input_ids=inputs.repeat(batch, 1)).logits.float()
        token_scores = logits.gather(2, labels.repeat(batch, 1).unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
        parts.append(token_scores.sum(1).view(batch, items))
    matrix = hidden.new_full((batch, n_items), float("-inf"), dtype=torch.float)
    matrix[:, item_ids] = torch.cat(parts, dim=1)
    return matrix
