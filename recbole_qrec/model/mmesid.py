"""MME-SID (Wang et al., "Empowering Large Language Model for Sequential Recommendation via Multimodal Embeddings and
Semantic IDs", CIKM 2025, arXiv 2509.02017): a decoder-only language model over multimodal semantic IDs.

Semantic IDs come from the MM-RQ-VAE, one residual quantizer per modality, so an item's code tuple is its ``M``
modalities' ``L`` codes side by side plus the disambiguation level, ``T = M * L + 1`` tokens: MMESID's own tokenize
stage (:mod:`recbole_qrec.mmesid_stage`, ``<dataset>.MMESID.sid``, run by the entry point), or with ``sid_producer:
~`` the tokenizer's ``<dataset>.sid`` (``python -m recbole_qrec.tokenize ... --set quantizers=per_modality
collision_strategy=append_level``, e.g. with a trained SASRec's item embeddings through ``--checkpoint``). The
dataset (:class:`~recbole_qrec.data.dataset.MMESIDDataset`) carries the codes, the codebooks ``[M, L, K, d]`` and
each item's per-modality latent ``[M, d]`` (the ``.sid.npz`` beside the ``.sid``).

* Language model: any Hugging Face causal LM built from ``llm_config`` (``model_type`` plus config fields; random
  weights, nothing is downloaded), or local weights from ``llm_name_or_path``. Item tokens are new vocabulary entries
  after the model's own (:class:`~recbole_qrec.generation.SemanticIdVocab` with the model's vocabulary as special
  ids, then one item-start token): one per code per level per modality. Their input embeddings start as the trained
  codebook vectors (the paper's remedy for forgetting), mapped to the LM width by a fixed semi-orthogonal matrix when
  ``d`` differs (distances kept). ``lora_rank > 0`` trains LoRA adapters (``peft``) plus the embeddings and output
  layer instead of every weight.
* Prompt: per history item, one soft token (its per-modality latents, concatenated and projected by
  ``latent_projection``: the multimodal embedding) followed by its ``T`` code tokens; then the item-start token. The
  model learns to write the next item's ``T`` tokens (teacher-forced cross-entropy).
* Ranking (``eval_mode``): ``beam``, the constrained beam search over the prefix index
  (:func:`~recbole_qrec.generation.causal_beam_search`), items outside the beam ``-inf``; ``exact``, every item's
  code log-likelihood (:func:`~recbole_qrec.generation.causal_exact_scores`).

Left out: the official code's text instruction around the history and its frequency-aware fusion of four item
scoring heads (it ranks by a classifier over items; here the model generates semantic IDs).
"""

from __future__ import annotations

import warnings
from logging import getLogger

import torch
from recbole.config import Config
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender
from torch import Tensor, nn
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from recbole_qrec.data.dataset import MMESIDDataset
from recbole_qrec.data.sid import SID_FIELD
from recbole_qrec.errors import ConfigError, MalformedDataError
from recbole_qrec.generation import (PrefixIndex, SemanticIdVocab, additive_causal_mask, beam_score_matrix,
                                    causal_beam_search, causal_exact_scores, prompt_positions)
from recbole_qrec.model.layers import batch_histories, checked_full_length_inputs, checked_ranking, code_tokens


class MMESID(SequentialRecommender):
    """A causal LM reading multimodal semantic IDs and latents of the history; writes the next item's semantic ID."""

    @staticmethod
    def check_settings(config: Config) -> None:
        """The ranking, MM-RQ-VAE widths, LoRA and language-model settings
        (:func:`recbole_qrec.config.check_model_settings`)."""
        checked_ranking(config)
        dims = config["sid_hidden_dims"]
        if not isinstance(dims, list) or not all(type(dim) is int and dim >= 1 for dim in dims):
            raise ConfigError(f"sid_hidden_dims must be a list of integers >= 1 (the MM-RQ-VAE's encoder widths, [] for "
                              f"none), got {dims!r} — e.g. --sid_hidden_dims=[512,256,128] (the default)")
        rank = config["lora_rank"]
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ConfigError(f"lora_rank must be an int >= 0, got {rank!r} — 0 fine-tunes every weight, e.g. "
                              "--lora_rank=8 trains LoRA adapters")
        if not config["llm_name_or_path"]:
            llm_config(config)

    def __init__(self, config: Config, dataset: MMESIDDataset) -> None:
        super().__init__(config, dataset)
        self.eval_mode, self.beam_size = checked_ranking(config, dataset)
        self.full_length_inputs = checked_full_length_inputs(config["full_length_inputs"], config["device"])
        codes, codebooks = dataset.code_tables[SID_FIELD], dataset.sid_codebooks
        modalities, levels, codebook_size, code_dim = codebooks.shape
        if codes.shape[1] != modalities * levels + 1:
            raise MalformedDataError(f"the .sid has {codes.shape[1]} levels but its .sid.npz {modalities} modalities x "
                                     f"{levels} levels (+1) — re-run the per-modality tokenizer to write both again")
        self.register_buffer("item_codes", codes)
        self.register_buffer("item_latents", dataset.sid_latents.flatten(1))  # [n_items, M * d]
        self.lm, base_vocab, self.llm_source = language_model(config)
        self.vocab = SemanticIdVocab(levels=codes.shape[1], codebook_size=max(codebook_size, int(codes.max()) + 1),
                                     n_special=base_vocab + 1)
        self.start_id = base_vocab  # the item-start token: its position predicts the first code
        self.index = PrefixIndex(codes[1:], self.vocab.codebook_size, item_ids=torch.arange(1, len(codes)))
        self.lm.resize_token_embeddings(self.vocab.size, mean_resizing=False)
        width = self.lm.get_input_embeddings().weight.shape[1]
        self.register_buffer("codebook_projection", semi_orthogonal(width, code_dim, config["seed"]), persistent=False)
        self.initialise_item_tokens(codebooks)
        self.latent_projection = nn.Linear(modalities * code_dim, width)
        self.lm = with_lora(self.lm, config)
        parameters = sum(parameter.numel() for parameter in self.parameters())
        getLogger().info(f"MMESID: {self.llm_source}; {parameters:,} parameters; {codes.shape[1]} tokens per item "
                         f"({modalities} modalities x {levels} levels + 1)")

    @torch.no_grad()
    def initialise_item_tokens(self, codebooks: Tensor) -> None:
        """Input embedding of the token of modality ``m``'s level ``l`` code ``k``: ``codebooks[m, l, k]`` mapped to
        the LM width by :attr:`codebook_projection` (the identity when the widths agree)."""
        vectors = codebooks.flatten(0, 1).float() @ self.codebook_projection.T  # [M * L, K, width]
        embedding = self.lm.get_input_embeddings().weight
        for level, level_vectors in enumerate(vectors):
            start = self.vocab.level_start(level)
            embedding[start:start + len(level_vectors)] = level_vectors.to(embedding.dtype)

    def item_tokens(self, items: Tensor) -> Tensor:
        """Item ids ``[...]`` -> code token ids ``[..., T]`` (padding items -> padding tokens)."""
        return code_tokens(self.item_codes, items, self.vocab)

    def prompt(self, interaction: Interaction) -> tuple[Tensor, Tensor]:
        """Left-padded prompt embeddings ``[B, S' * (T + 1) + 1, H]`` and mask: per history item its projected
        latents and its ``T`` code tokens, then the item-start token; ``S'`` the longest history of the batch, or
        ``MAX_ITEM_LIST_LENGTH`` with ``full_length_inputs``."""
        history = batch_histories(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], self.full_length_inputs)
        embed = self.lm.get_input_embeddings()
        items = torch.cat([self.latent_projection(self.item_latents[history]).unsqueeze(2),
                           embed(self.item_tokens(history))], dim=2)  # [B, S', T + 1, H]
        mask = (history > 0).unsqueeze(-1).expand(-1, -1, items.shape[2]).flatten(1).long()
        items = items.flatten(1, 2)
        # Histories are left-aligned: move each row's padding to the front, then the item-start token.
        width = mask.shape[1]
        order = (torch.arange(width, device=mask.device) - (width - mask.sum(1, keepdim=True))) % width
        items, mask = items.gather(1, order.unsqueeze(-1).expand_as(items)), mask.gather(1, order)
        start = embed(torch.full((len(items), 1), self.start_id, device=items.device))
        return torch.cat([items, start], 1), torch.cat([mask, mask.new_ones(len(mask), 1)], 1)

    def token_log_probs(self, interaction: Interaction, labels: Tensor) -> Tensor:
        """Teacher-forced log-probabilities ``[B, T]`` of each row's label tokens ``[B, T]`` after its prompt."""
        prompt, mask = self.prompt(interaction)
        inputs = torch.cat([prompt, self.lm.get_input_embeddings()(labels[:, :-1])], 1)
        mask = torch.cat([mask, mask.new_ones(len(mask), labels.shape[1] - 1)], 1)
        logits = self.lm(inputs_embeds=inputs, attention_mask=additive_causal_mask(mask, inputs.shape[1], inputs.dtype),
                         position_ids=prompt_positions(mask), use_cache=False).logits  # one pass: no cache to fill
        return logits[:, -labels.shape[1]:].float().log_softmax(-1).gather(2, labels.unsqueeze(-1)).squeeze(-1)

    def calculate_loss(self, interaction: Interaction) -> Tensor:
        """Mean cross-entropy of the next item's ``T`` code tokens."""
        return -self.token_log_probs(interaction, self.item_tokens(interaction[self.POS_ITEM_ID])).mean()

    def predict(self, interaction: Interaction) -> Tensor:
        """Log-probability of each row's candidate (``ITEM_ID``): the score the beam search would give it."""
        return self.token_log_probs(interaction, self.item_tokens(interaction[self.ITEM_ID])).sum(1)

    def full_sort_predict(self, interaction: Interaction) -> Tensor:
        """``[B, n_items]``: the beam items' log-probabilities, ``-inf`` elsewhere; ``eval_mode: exact``: every
        item's (``-inf`` for the padding item 0)."""
        prompt, mask = self.prompt(interaction)
        if self.eval_mode == "exact":
            items = torch.arange(1, self.n_items, device=prompt.device)
            return causal_exact_scores(self.lm, prompt, mask, self.item_tokens(items), items, self.n_items)
        items, scores = causal_beam_search(self.lm, prompt, mask, self.index.to(prompt.device), self.vocab,
                                           self.beam_size)
        return beam_score_matrix(items, scores, self.n_items)


def language_model(config: Config) -> tuple[PreTrainedModel, int, str]:
    """The causal LM of ``llm_name_or_path`` (local weights) or, without it, randomly initialised from ``llm_config``;
    its own vocabulary size (2, padding and end, for a model from a config) and how it was made."""
    if config["llm_name_or_path"]:
        model = AutoModelForCausalLM.from_pretrained(config["llm_name_or_path"], local_files_only=True)
        return model, model.get_input_embeddings().weight.shape[0], f"pretrained weights {config['llm_name_or_path']}"
    settings = llm_config(config)
    try:
        model = AutoModelForCausalLM.from_config(settings)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"llm_config does not make a {settings.model_type} causal LM ({err}) — fix its fields") from None
    return model, 2, f"{settings.model_type} randomly initialised from llm_config"


def llm_config(config: Config) -> PretrainedConfig:
    """The transformers config of ``llm_config`` (its model_type and fields) with the model's two-token vocabulary."""
    fields = dict(config["llm_config"] or {})
    model_type = fields.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise ConfigError(f"llm_config's model_type is {model_type!r}, not a transformers model type — set it to a "
                          "causal LM's, e.g. llm_config: {model_type: llama, hidden_size: 64, ...} (or qwen2)")
    try:
        return AutoConfig.for_model(model_type, **fields, vocab_size=2, pad_token_id=0, eos_token_id=1,
                                    bos_token_id=None)
    except (TypeError, ValueError, StrictDataclassError) as err:
        message = " ".join(str(err).split())
        raise ConfigError(f"llm_config does not make a {model_type} causal LM ({message}) — fix its fields") from None


def with_lora(model: PreTrainedModel, config: Config) -> nn.Module:
    """``model`` with LoRA adapters of rank ``lora_rank`` (``peft``; the embeddings and output layer stay fully
    trainable: they hold the new item tokens), or ``model`` itself for rank 0."""
    rank = config["lora_rank"]
    if rank == 0:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ModuleNotFoundError:
        raise ConfigError("lora_rank > 0 needs the package 'peft' — pip install 'recbole-qrec[llm]', or "
                          "--lora_rank=0") from None
    trained = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    names = [name.rsplit(".", 1)[-1] for name, module in model.named_modules() if id(module) in trained]
    lora = LoraConfig(r=rank, lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"],
                      target_modules=config["lora_target_modules"], modules_to_save=names)
    with warnings.catch_warnings():  # peft reads a property transformers 5 deprecates: a FutureWarning in every run
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, lora)


def semi_orthogonal(rows: int, columns: int, seed: int) -> Tensor:
    """A fixed ``[rows, columns]`` matrix with orthonormal columns (or rows, when fewer), drawn with ``seed``; the
    identity for a square one."""
    if rows == columns:
        return torch.eye(rows)
    generator = torch.Generator().manual_seed(seed)
    return nn.init.orthogonal_(torch.empty(rows, columns), generator=generator)
