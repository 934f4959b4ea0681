"""Q-Bert4Rec (Huang & Gai, arXiv 2512.02474): BERT4Rec over quantized multimodal semantic IDs.

Three stages:

1. dynamic cross-modal semantic injection: text/image features are fused into learnable item ID
   vectors (:mod:`~recbole_qrec.model.qbert4rec_modules.injection`);
2. semantic quantization: an RQ-VAE turns the fused embeddings into unique ``L``-level codes
   (:func:`recbole_qrec.quantization.fit_tokenizer`, collisions re-ranked);
3. a bidirectional transformer over the code tokens, trained by multi-mask pretraining and then
   fine-tuned to predict the codes of the next item.

Stages 1-2 are a tokenize stage (:mod:`recbole_qrec.qbert4rec_stage`, run by ``python -m
recbole_qrec.tokenize --model QBert4Rec`` or by the entry point when its output is missing or stale) that
writes ``<dataset>.QBert4Rec.sid``; the dataset (:class:`~recbole_qrec.data.dataset.QBert4RecDataset`) reads it and
the model takes the code table from the dataset as a buffer, so a saved state dict carries it. Stage 3 is
trained by :class:`~recbole_qrec.trainer.PretrainFineTuneTrainer`: ``pretrain_epochs`` epochs of
:meth:`QBert4Rec.pretrain_loss`, then RecBole's usual fit with :meth:`QBert4Rec.calculate_loss`;
``pretrain_epochs: 0`` means no pretraining.

Cross-domain: with ``pretrain_datasets: [Arts, Games]`` the tokenize stage runs once over the union of the
target's and the sources' items (one tokenizer, codes unique across domains) and writes each domain's
``.QBert4Rec.sid``; the target's dataset carries the sources' code tables, and pretraining runs on the sources'
training splits, each batch scored with its own domain's table (``source_codes``: non-persistent buffers,
moved with the model but not saved, since fine-tuning and evaluation need only the target's
``item_codes``). All domains share the code-token vocabulary and the transformer; item ids stay per domain.

Input layout: the ``S`` history items become ``S * L`` tokens (item by item, level by level)
and one more slot of ``L`` tokens follows, holding [MASK] right after the last real item (RecBole
left-aligns histories, so the slot is position ``item_length``). Token ids: 0 padding, 1 [MASK],
``2 + level * K + code`` for a code. Each token's embedding is its token + item position + level
embedding, plus, with ``item_id_input`` (the default under item scoring), the item's ID embedding from the item
table of the output (tied). Scoring (``scoring``): ``item`` (the paper's item-level output,
:class:`~recbole_qrec.model.qbert4rec_modules.item_output.ItemOutput`): the slot's state against an item
embedding table over the whole catalogue (learned ID embedding + pooled code-token embeddings), trained by
cross-entropy over all items; ``levels`` (factorised, no per-item parameters): ``sum_l log p_l(code_l(item))``
under the per-level code distributions at the slot, trained by per-level cross-entropy. Pretraining always
predicts masked code tokens through the per-level heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.config import Config
from recbole.data.interaction import Interaction
from torch import Tensor, nn

from recbole_qrec.data.dataset import SemanticIdDataset
from recbole_qrec.data.sid import SID_FIELD
from recbole_qrec.errors import ConfigError, MalformedDataError, checked_choice
from recbole_qrec.model.abstract_recommender import PretrainableRecommender
from recbole_qrec.model.qbert4rec_modules.fused_encoder import FusedTransformerEncoder
from recbole_qrec.model.qbert4rec_modules.injection_settings import check_injection_settings
from recbole_qrec.model.qbert4rec_modules.item_output import ItemOutput
from recbole_qrec.model.qbert4rec_modules.level_heads import LevelHeads
from recbole_qrec.model.qbert4rec_modules.masking import MultiMask, checked_strategies

PAD_TOKEN = 0
MASK_TOKEN = 1
FIRST_CODE_TOKEN = 2
SCORINGS = ("item", "levels")
IGNORED_TARGET = -100  # cross-entropy target of a token that is not predicted


class QBert4Rec(PretrainableRecommender):
    """Semantic-ID BERT4Rec with multimodal item codes; scores all items from the [MASK] slot after the history."""

    @staticmethod
    def check_settings(config: Config) -> None:
        """The loss, scoring and masking settings (:func:`recbole_qrec.config.check_model_settings`)."""
        if config["loss_type"] != "CE":
            raise ConfigError(f"QBert4Rec needs loss_type CE (per-level cross-entropy), not {config['loss_type']} "
                              "— set loss_type: CE")
        checked_choice("scoring", config["scoring"], SCORINGS)
        checked_choice("item_id_input", config["item_id_input"], (True, False, None),
                       "~: True with scoring item, False with levels")
        if config["item_id_input"] and config["scoring"] != "item":
            raise ConfigError("item_id_input needs the item embedding table of scoring: item — set scoring: item or "
                              "item_id_input: False")
        checked_strategies(config["mask_strategy"], config["mask_prob"], config["mask_regions"])
        check_injection_settings(config)

    def __init__(self, config: Config, dataset: SemanticIdDataset) -> None:
        super().__init__(config, dataset)
        codebook_size = config["sid_codebook_size"]
        codes = checked_codes(dataset.code_tables[SID_FIELD], codebook_size)
        self.register_buffer("item_codes", codes)
        self.source_codes = nn.ModuleDict({name: CodeTable(checked_codes(tables[SID_FIELD], codebook_size))
                                           for name, tables in dataset.source_code_tables().items()})
        self.levels = codes.shape[1]
        self.register_buffer("level_offsets", FIRST_CODE_TOKEN + torch.arange(self.levels) * codebook_size,
                             persistent=False)
        self.masker = MultiMask(config["mask_strategy"], config["mask_prob"], self.levels, config["mask_regions"])

        hidden = config["hidden_size"]
        self.initializer_range = config["initializer_range"]
        vocabulary = FIRST_CODE_TOKEN + self.levels * codebook_size
        self.token_embedding = nn.Embedding(vocabulary, hidden, padding_idx=PAD_TOKEN)
        self.position_embedding = nn.Embedding(self.max_seq_length + 1, hidden)
        self.level_embedding = nn.Embedding(self.levels, hidden)
        self.input_norm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.encoder = FusedTransformerEncoder(
            n_layers=config["n_layers"],
            n_heads=config["n_heads"],
            hidden_size=hidden,
            inner_size=config["inner_size"],
            hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"],
            hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"],
        )
        self.heads = LevelHeads(self.levels, codebook_size, hidden, self.initializer_range)
        self.item_output = ItemOutput(self.n_items, hidden) if config["scoring"] == "item" else None
        self.item_id_input = self.item_output is not None and config["item_id_input"] is not False
        # Items per stage-1 injection depth 0..injection_layers, from the tokenize stage's report (None without one).
        target_figures = dataset.sid_report.get("domains", {}).get(config["dataset"], {})
        self.injection_depth_histogram = target_figures.get("depth_histogram")
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT4Rec's initialisation: normal linear/embedding weights, zero biases, unit LayerNorm."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def domain_codes(self, domain: str | None) -> Tensor:
        """The code table of pretraining source ``domain``, or the target's ``item_codes`` for ``None``."""
        return self.item_codes if domain is None else self.source_codes[domain].codes

    def item_tokens(self, items: Tensor, codes: Tensor) -> Tensor:
        """Item ids ``[B, S]`` -> code token ids ``[B, S, L]`` under ``codes`` (padding items -> padding tokens)."""
        tokens = codes[items] + self.level_offsets
        return tokens.masked_fill((items == 0).unsqueeze(-1), PAD_TOKEN)

    def forward(self, tokens: Tensor, items: Tensor | None = None) -> Tensor:
        """Token ids ``[B, S, L]`` -> hidden states ``[B, S, L, H]`` (bidirectional, padding hidden). ``items``
        ``[B, S]``: with ``item_id_input``, the target-domain item of each slot, whose ID embedding is added to its
        ``L`` tokens (0: none, for padding, [MASK] slots and items of other domains)."""
        batch, slots, levels = tokens.shape
        flat = tokens.flatten(1)
        positions = torch.arange(slots, device=tokens.device).repeat_interleave(levels)
        level_ids = torch.arange(levels, device=tokens.device).repeat(slots)
        embedded = self.token_embedding(flat) + self.position_embedding(positions) + self.level_embedding(level_ids)
        if self.item_id_input and items is not None:
            ids = self.item_output.id_embedding(items).masked_fill((items == 0).unsqueeze(-1), 0)
            embedded = embedded + ids.repeat_interleave(levels, dim=1)
        embedded = self.dropout(self.input_norm(embedded))
        attention_mask = self.get_attention_mask(flat, bidirectional=True)
        hidden = self.encoder(embedded, attention_mask, output_all_encoded_layers=False)[-1]
        return hidden.view(batch, slots, levels, -1)

    def slot_states(self, interaction: Interaction) -> Tensor:
        """Hidden states ``[B, L, H]`` of the [MASK] slot after each history."""
        lengths = interaction[self.ITEM_SEQ_LEN]
        items = F.pad(interaction[self.ITEM_SEQ], (0, 1))  # the slot after the last item is padding: no ID
        tokens = self.item_tokens(items, self.item_codes)
        rows = torch.arange(len(tokens), device=tokens.device)
        tokens[rows, lengths] = tokens.new_full((), MASK_TOKEN)  # a Python number would be a host tensor in a graph
        return self.forward(tokens, items)[rows, lengths]

    def code_embeddings(self) -> Tensor:
        """Every item's mean code-token embedding ``[n_items, H]`` (the padding item's is zero), pooled by one
        ``embedding_bag``: no ``[n_items, L, H]`` intermediate (4 GB at a million items)."""
        items = torch.arange(self.n_items, device=self.item_codes.device)
        tokens = self.item_tokens(items, self.item_codes)
        return F.embedding_bag(tokens, self.token_embedding.weight, mode="mean", padding_idx=PAD_TOKEN)

    def pretrain_loss(self, interaction: Interaction, domain: str | None = None) -> Tensor:
        """Multi-mask pretraining: mean cross-entropy over the masked tokens of history + target item.

        ``domain``: the pretraining source the interaction comes from (its item ids index that source's
        code table), ``None`` for the target.
        """
        lengths, targets = interaction[self.ITEM_SEQ_LEN].unsqueeze(1), interaction[self.POS_ITEM_ID].unsqueeze(1)
        items = F.pad(interaction[self.ITEM_SEQ], (0, 1)).scatter(1, lengths, targets)
        tokens = self.item_tokens(items, self.domain_codes(domain))
        masked = self.masker(tokens.flatten(1) != PAD_TOKEN).view_as(tokens)
        # an item with a masked token shows no ID (it would give the hidden codes away); sources' items have none
        visible = items.masked_fill(masked.any(-1), 0) if self.item_id_input and domain is None else None
        logits = self.heads(self.forward(tokens.masked_fill(masked, MASK_TOKEN), visible))
        # Unmasked tokens are ignored rather than indexed away: a boolean index would wait for the device every step.
        targets = (tokens - self.level_offsets).masked_fill(~masked, IGNORED_TARGET)
        loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORED_TARGET, reduction="sum")
        return loss / masked.sum().clamp(min=1)

    def calculate_loss(self, interaction: Interaction) -> Tensor:
        """Fine-tuning on the next item: cross-entropy over all items (``item``), or per-level cross-entropy of its
        codes summed over levels (``levels``)."""
        slot, targets = self.slot_states(interaction), interaction[self.POS_ITEM_ID]
        if self.item_output is None:
            codes = self.item_codes[targets].unsqueeze(2)  # [B, L, 1]
            return -code_log_likelihood(self.heads(slot).log_softmax(-1), codes).mean()
        return F.cross_entropy(self.item_output(slot, self.code_embeddings()), targets)

    def predict(self, interaction: Interaction) -> Tensor:
        return self.full_sort_predict(interaction).gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

    def full_sort_predict(self, interaction: Interaction) -> Tensor:
        slot = self.slot_states(interaction)
        if self.item_output is None:
            codes = self.item_codes.T.unsqueeze(0).expand(len(slot), -1, -1)  # [B, L, n_items]
            return code_log_likelihood(self.heads(slot).log_softmax(-1), codes)
        return self.item_output(slot, self.code_embeddings())


def checked_codes(codes: Tensor, codebook_size: int) -> Tensor:
    """``codes`` ``[n_items, L]`` if every code fits the ``sid_codebook_size`` token blocks."""
    if int(codes.max()) >= codebook_size:
        raise MalformedDataError(f"semantic IDs have codes up to {int(codes.max())} but sid_codebook_size is "
                                 f"{codebook_size} — set sid_codebook_size to the tokenizer's or re-run the tokenize stage")
    return codes


class CodeTable(nn.Module):
    """A pretraining source's code table ``[n_items, L]`` as a non-persistent buffer (moved with the model, not saved)."""

    def __init__(self, codes: Tensor) -> None:
        super().__init__()
        self.register_buffer("codes", codes, persistent=False)


def code_log_likelihood(log_probs: Tensor, codes: Tensor) -> Tensor:
    """``sum_l log_probs[b, l, codes[b, l, n]]``: ``[B, L, K]`` and ``[B, L, N]`` -> ``[B, N]``."""
    return log_probs.gather(2, codes).sum(1)
