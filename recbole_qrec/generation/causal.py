"""Constrained beam search and exact scores of semantic IDs for a decoder-only (causal) language model.

The encoder-decoder versions (:mod:`~recbole_qrec.generation.beam_search`, :mod:`~recbole_qrec.generation.exact_scores`)
run an encoder once and a decoder per level; here the prompt (``inputs_embeds`` ``[B, T, H]``, left-padded, its last
position the one that predicts the first code) fills a key/value cache once, and each level appends one token.
Positions count the prompt's unpadded tokens (``attention_mask.cumsum - 1``), so a row's positions do not depend on
how far it was padded; the model's training must use the same (:func:`prompt_positions`). The model gets its
attention mask as a 4D additive mask (:func:`~recbole_qrec.generation.masks.additive_causal_mask`), which it takes
as given, reading nothing back from the device. Scores are the same sums of per-token log-probabilities (log-softmax
over the whole vocabulary) as the encoder-decoder versions'.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from transformers import DynamicCache, PreTrainedModel

from recbole_qrec.generation.beam_search import (NEG_INF, cache_argument_name, check_arguments,
                                                 padded_top_k)
from recbole_qrec.generation.exact_scores import DECODER_ROWS
from recbole_qrec.generation.masks import additive_causal_mask
from recbole_qrec.generation.prefix_index import PrefixIndex
from recbole_qrec.generation.vocab import SemanticIdVocab


def prompt_positions(attention_mask: Tensor) -> Tensor:
    """Position ids ``[B, T]`` of left-padded rows: 0 at each row's first real token (padding: 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def fill_cache(model: PreTrainedModel, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, DynamicCache]:
    """Run the prompt once: the log-probabilities ``[B, V]`` of its next token and the filled cache."""
    cache = DynamicCache(config=model.config)
    output = model(inputs_embeds=inputs_embeds,
                   attention_mask=additive_causal_mask(attention_mask, inputs_embeds.shape[1], inputs_embeds.dtype),
                   position_ids=prompt_positions(attention_mask), use_cache=True, **{cache_argument_name(model): cache})
    return nn.functional.log_softmax(output.logits[:, -1].float(), dim=-1), cache


def continue_cache(model: PreTrainedModel, tokens: Tensor, attention_mask: Tensor, cache: DynamicCache) -> Tensor:
    """Append ``tokens`` ``[R, t]`` after the cached rows (whose mask is ``attention_mask`` ``[R, T]``); the logits
    ``[R, t, V]`` in float32."""
    mask = torch.cat([attention_mask, attention_mask.new_ones(tokens.shape)], dim=1)
    positions = attention_mask.long().sum(1, keepdim=True) + torch.arange(tokens.shape[1], device=tokens.device)
    return model(input_ids=tokens, attention_mask=additive_causal_mask(mask, tokens.shape[1], model.dtype),
                 position_ids=positions, use_cache=True, **{cache_argument_name(model): cache}).logits.float()


@torch.no_grad()
def causal_beam_search(model: PreTrainedModel, inputs_embeds: Tensor, attention_mask: Tensor, index: PrefixIndex,
                       vocab: SemanticIdVocab, beam_size: int) -> tuple[Tensor, Tensor]:
    """Top ``beam_size`` items per prompt: ``items`` ``LongTensor[B, beam_size]`` and ``scores`` (sequence
    log-probabilities, descending); slots beyond the number of items hold item -1 and score ``-inf``, as in
    :func:`~recbole_qrec.generation.constrained_beam_search`. ``index`` on the inputs' device, model in eval mode."""
    check_arguments(index, vocab, beam_size)
    batch, codebook = len(inputs_embeds), vocab.codebook_size
    log_probs, cache = fill_cache(model, inputs_embeds, attention_mask)
    scores = inputs_embeds.new_zeros(batch, 1, dtype=torch.float)
    prefixes = torch.zeros(batch, 1, dtype=torch.long, device=inputs_embeds.device)
    for level in range(index.depth):
        children = index.children(level, prefixes.flatten())
        level_scores = scores.reshape(-1, 1) + log_probs[:, vocab.level_slice(level)]
        width = scores.shape[1]
        scores, picked = padded_top_k(torch.where(children >= 0, level_scores, NEG_INF).reshape(batch, -1), beam_size)
        prefixes = children.reshape(batch, -1).gather(1, picked).clamp_min(0)
        if level + 1 < index.depth:
            rows = (torch.arange(batch, device=picked.device)[:, None] * width + picked // codebook).flatten()
            cache.reorder_cache(rows)
            attention_mask = attention_mask[rows]
            tokens = (vocab.level_start(level) + picked % codebook).reshape(-1, 1)
            log_probs = continue_cache(model, tokens, attention_mask, cache)[:, -1].log_softmax(-1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
    return torch.where(scores > NEG_INF, index.leaf_items[prefixes], -1), scores


@torch.no_grad()
def causal_exact_scores(model: PreTrainedModel, inputs_embeds: Tensor, attention_mask: Tensor, item_tokens: Tensor,
                        item_ids: Tensor, n_items: int, rows: int = DECODER_ROWS) -> Tensor:
    """``[B, n_items]``: column ``item_ids[i]`` holds the log-probability of ``item_tokens[i]`` (``[N, L]``) after each
    prompt, every other column ``-inf`` (the beam search's score of every item). The prompt is run once; each chunk
    of ``max(1, rows // B)`` items reads a copy of its cache, one call for all prompts."""
    batch = len(inputs_embeds)
    first, cache = fill_cache(model, inputs_embeds, attention_mask)
    chunk = max(1, rows // batch)
    parts = []
    for labels in item_tokens.split(chunk):
        items = len(labels)  # rows: prompt 0 with each item of the chunk, then prompt 1, ...
        score = first.gather(1, labels[:, 0].repeat(batch, 1))  # [B, items]
        if labels.shape[1] > 1:
            copied = copy.deepcopy(cache)
            copied.batch_repeat_interleave(items)
            logits = continue_cache(model, labels[:, :-1].repeat(batch, 1),
                                    attention_mask.repeat_interleave(items, dim=0), copied)
            later = logits.gather(2, labels[:, 1:].repeat(batch, 1).unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
            score = score + later.sum(1).view(batch, items)
        parts.append(score)
    matrix = inputs_embeds.new_full((batch, n_items), float("-inf"), dtype=torch.float)
    matrix[:, item_ids] = torch.cat(parts, dim=1)
    return matrix
