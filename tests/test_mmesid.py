"""MMESID on a 500-user subset of Instruments: the per-modality tokenizer (MM-RQ-VAE) by hand and as MMESID's own
tokenize stage, item tokens initialised from its codebooks, training, constrained and exact ranking, settings."""

from __future__ import annotations

import copy
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from recbole.utils import init_seed
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from dataset_prep.features import code_file_features
from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.data.dataset import MMESIDDataset
from recbole_qrec.errors import ConfigError
from recbole_qrec.generation import additive_causal_mask, causal_beam_search, causal_exact_scores, prompt_positions
from recbole_qrec.generation.beam_search import cache_argument_name
from recbole_qrec.model.layers import checked_full_length_inputs
from recbole_qrec.model.mmesid import MMESID
from recbole_qrec.quantization import TokenizerConfig, build_rqvae
from recbole_qrec.tokenize import ensure_semantic_ids, integer_item_ids, tokenize_dataset
from recbole_qrec.trainer import get_trainer
from conftest import (assert_compiled_loss_is_eager_loss, host_nodes_of_cuda_loss, losses_over_steps, run_entry_point,
                      work_config)
from test_architecture import no_file_access_or_training

TINY_LM = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 2}
# The tokenizer's <dataset>.sid, written by the module's `tokenized` fixture (sid_producer: ~).
TINY = {"sid_producer": None, "llm_config": TINY_LM, "MAX_ITEM_LIST_LENGTH": 5, "epochs": 3, "eval_step": 3, "train_batch_size": 128,
        "eval_batch_size": 256, "beam_size": 10, "learning_rate": 0.01, "use_gpu": False, "show_progress": False}
# MM-RQ-VAE as the paper trains it (MMD reconstruction x 3, InfoNCE between the modalities' quantized vectors x 0.01).
MM_RQVAE = {"levels": 2, "codebook_size": 32, "code_dim": 16, "hidden_dims": (64,), "batch_size": 256,
            "quantizers": "per_modality", "collision_strategy": "append_level", "alignment": "contrastive",
            "reconstruction": "mmd", "reconstruction_weight": 3.0, "contrastive_weight": 0.01, "mixed_precision": False}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def features(work, amazon_dir) -> list[np.ndarray]:
    """Text and image proxy features (one-hot of the shipped LLaMA and ViT codes), one row per item id."""
    rows = integer_item_ids(work / "dataset", "Instruments")[-1] + 1
    return [code_file_features(amazon_dir / "Instruments" / f"Instruments.index_{name}.json")[:rows]
            for name in ("lemb", "vitemb")]


@pytest.fixture(scope="module")
def tokenized(work, features):
    """The subset's per-modality semantic IDs (``.sid`` and ``.sid.npz``)."""
    paths = []
    for name, matrix in zip(("text", "image"), features):
        paths.append(work / f"{name}.npy")
        np.save(paths[-1], matrix)
    return tokenize_dataset("Instruments", paths, TokenizerConfig(epochs=3, **MM_RQVAE), work / "dataset", "cpu")


def subset_config(work, **overrides):
    return work_config("MMESID", work, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def prepared(work, tokenized):
    """Config, training and validation loaders of MMESID on the subset."""
    config = subset_config(work)
    init_seed(config["seed"], True)
    train, valid, _, _ = data_preparation(config, create_dataset(config))
    return config, train, valid


def trainer_of(model: MMESID, config):
    return get_trainer(config["MODEL_TYPE"], config["model"])(config, model)


# MM-RQ-VAE (tokenizer options)

def test_mm_rqvae_alignment_and_mmd_reconstruction_losses_decrease(features):
    # Text, image and a stand-in for a trained SASRec's item embeddings (tokenize --checkpoint's third modality).
    stand_in = torch.randn(128, 32, generator=torch.Generator().manual_seed(0))
    batch = [torch.from_numpy(matrix[1:129]).float() for matrix in features] + [stand_in]
    model = build_rqvae([matrix.shape[1] for matrix in batch], TokenizerConfig(**MM_RQVAE), torch.device("cpu"))
    model.quantizer.kmeans_init(model.encode(*batch)[0].detach(), iters=10)
    terms = []
    losses_over_steps(model, lambda: terms.append(model(*batch).losses) or terms[-1]["total"], steps=60)
    for name in ("contrastive", "reconstruction"):
        assert terms[-1][name].item() < 0.7 * terms[0][name].item(), name  # measured: contrastive 0.63, MMD 0.08
    model.config = TokenizerConfig(**{**MM_RQVAE, "alignment": "mmd"})
    assert set(model(*batch).losses) == {"reconstruction", "codebook", "commitment", "mmd", "total"}


def test_per_modality_codes_sit_side_by_side_with_their_codebooks(tokenized, work):
    codes, model = tokenized.codes, tokenized.model
    assert codes.shape[1] == 2 * 2 + 1 and len(np.unique(codes, axis=0)) == len(codes)
    saved = np.load(work / "dataset" / "Instruments" / "Instruments.sid.npz")
    assert saved["codebooks"].shape == (2, 2, 32, 16) and saved["latents"].shape == (len(codes), 2, 16)
    for modality, part in enumerate(model.quantizer.parts):  # each modality: its own quantizer on its own latent
        latents = torch.from_numpy(saved["latents"][:, modality])
        assert np.array_equal(part.assign(latents)[0].numpy(), codes[:, 2 * modality:2 * modality + 2])
    with pytest.raises(ConfigError, match="collision_strategy=append_level"):
        TokenizerConfig(quantizers="per_modality")


# Model

def test_item_token_embeddings_start_as_the_codebook_vectors(prepared, work):
    dataset = prepared[1]._dataset
    codebooks = dataset.sid_codebooks.flatten(0, 1)  # [M * L, K, d], d = 16
    for width in (16, 32):  # the LM as wide as the codes (copied) and wider (projected)
        model = MMESID(subset_config(work, llm_config={**TINY_LM, "hidden_size": width}), dataset)
        embedding, projection = model.lm.get_input_embeddings().weight, model.codebook_projection
        assert projection.shape == (width, 16)
        assert torch.allclose(projection.T @ projection, torch.eye(16), atol=1e-5)  # distances are kept
        for level, vectors in enumerate(codebooks):
            start = model.vocab.level_start(level)
            assert torch.allclose(embedding[start:start + len(vectors)], vectors @ projection.T, atol=1e-6)
        if width == 16:
            assert torch.equal(embedding[model.vocab.level_start(0):][:32], codebooks[0])


def test_the_model_builds_from_config_and_dataset_without_files_or_training(prepared):
    config, train, _ = prepared
    MMESID(config, train._dataset)  # transformers imports its llama modules (source files) on first use
    with no_file_access_or_training():
        model = MMESID(config, train._dataset)
    assert "randomly initialised" in model.llm_source and model.n_items == train._dataset.item_num


def test_compile_model_traces_the_loss_as_one_graph(prepared):
    """``compile_model`` traces MMESID's loss (the LLaMA-style model over item tokens) as one graph, as CUDA graphs
    need, and gives the eager loss."""
    config, train, _ = prepared
    model = MMESID(config, train._dataset).eval()
    assert_compiled_loss_is_eager_loss(model, next(iter(train)), fullgraph=True)
    full_length = copy.deepcopy(config)
    full_length["full_length_inputs"] = True  # the CUDA default: one shape per batch size
    model = MMESID(full_length, train._dataset).eval()
    assert host_nodes_of_cuda_loss(model, next(iter(train))) == []  # (test_tiger.py: the cudagraphs backend)


def test_training_beats_the_untrained_model_on_validation_ndcg(prepared):
    config, train, valid = prepared
    init_seed(config["seed"], True)
    model = MMESID(config, train._dataset)
    untrained = trainer_of(model, config).evaluate(valid, load_best_model=False)["ndcg@10"]
    trained = trainer_of(model, config).fit(train, valid, saved=False, show_progress=False)[1]["ndcg@10"]
    assert trained >= 3 * max(untrained, 10 / (model.n_items - 1)), (trained, untrained)


def test_decoding_only_returns_existing_items_with_their_exact_scores(prepared, work):
    config, train, valid = prepared
    model = MMESID(subset_config(work, beam_size=30), train._dataset).eval()
    interaction = next(iter(valid))[0][:16]
    prompt, mask = model.prompt(interaction)
    items, scores = causal_beam_search(model.lm, prompt, mask, model.index, model.vocab, 30)
    assert bool((items >= 1).all() and (items < model.n_items).all())
    assert all(len(set(row)) == 30 for row in items.tolist())
    candidates = torch.arange(1, model.n_items)
    exact = causal_exact_scores(model.lm, prompt, mask, model.item_tokens(candidates), candidates, model.n_items,
                                rows=2048)
    assert torch.allclose(exact.gather(1, items), scores, atol=1e-4)
    wide_items, wide_scores = causal_beam_search(model.lm, prompt[:4], mask[:4], model.index, model.vocab,
                                                 model.n_items - 1)  # a beam as wide as the catalogue: exact ranking
    assert torch.allclose(wide_scores, exact[:4].sort(1, descending=True).values[:, :-1], atol=1e-4)
    assert torch.allclose(exact[:4].gather(1, wide_items), wide_scores, atol=1e-4)
    model.eval_mode = "exact"
    assert torch.allclose(model.full_sort_predict(interaction)[:, 1:], exact[:, 1:], atol=1e-4)
    interaction.update(type(interaction)({"item_id": items[:, 0]}))
    assert torch.allclose(model.predict(interaction), scores[:, 0], atol=1e-4)  # teacher forcing: the same score


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_the_additive_causal_mask_gives_the_lm_the_logits_of_its_padding_mask(implementation):
    """The LM with the 4D additive causal mask (which transformers takes as given, reading nothing back from the
    device) gives bit for bit the logits of the same LM given the 2D padding mask at every token of left-padded
    prompts and of the tokens appended after their cache (3, then 1), in float32 and under bfloat16 autocast. At
    padding, which no token sees, rows differ: sdpa gives a row that sees nothing zeros, the additive mask (as eager
    attention's own) spreads it evenly."""
    torch.manual_seed(0)
    settings = {**TINY_LM, "num_key_value_heads": 1}  # grouped-query attention, as Llama 3's
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(vocab_size=40, **settings),
                                          attn_implementation=implementation).eval()
    mask = (torch.arange(9) >= 9 - torch.tensor([9, 1, 4, 7, 2, 5])[:, None]).long()  # left-padded prompts
    prompt, tokens = torch.randn(6, 9, 32), torch.randint(0, 40, (6, 4))

    def logits(attention_mask) -> list[torch.Tensor]:
        """The prompt's logits at its tokens, then those of ``tokens`` appended 3 and 1 at a time."""
        cache = {cache_argument_name(lm): DynamicCache(config=lm.config)}
        found = [lm(inputs_embeds=prompt, attention_mask=attention_mask(mask, 9), position_ids=prompt_positions(mask),
                    use_cache=True, **cache).logits[mask.bool()]]
        for start, end in ((0, 3), (3, 4)):
            whole = torch.cat([mask, mask.new_ones(6, end)], 1)
            found.append(lm(input_ids=tokens[:, start:end], attention_mask=attention_mask(whole, end - start),
                            position_ids=prompt_positions(whole)[:, -(end - start):], use_cache=True, **cache).logits)
        return found

    for dtype in (None, torch.bfloat16):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            given_2d = logits(lambda padding, queries: padding)
            given_4d = logits(lambda padding, queries: additive_causal_mask(padding, queries, torch.float32))
        assert all(map(torch.equal, given_4d, given_2d)), (implementation, dtype)


def test_full_length_inputs_give_the_same_loss_and_scores(prepared, work):
    """Prompts of MAX_ITEM_LIST_LENGTH history items or of the batch's longest (the default on a CPU): more left
    padding, masked, and the same positions."""
    config, train, valid = prepared
    model = MMESID(config, train._dataset).eval()
    padded = MMESID(subset_config(work, full_length_inputs=True), train._dataset).eval()
    padded.load_state_dict(model.state_dict())
    assert checked_full_length_inputs(None, "cuda") and not checked_full_length_inputs(None, "cpu")
    batch = next(iter(valid))[0]
    batch = batch[batch["item_length"].argsort()[:16]]  # the shortest histories
    assert padded.prompt(batch)[0].shape[1] > model.prompt(batch)[0].shape[1], "the longest history must be shorter"
    with torch.no_grad():
        torch.testing.assert_close(padded.calculate_loss(batch), model.calculate_loss(batch), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(padded.full_sort_predict(batch), model.full_sort_predict(batch),
                                   rtol=1e-4, atol=1e-5)


def test_lora_trains_adapters_embeddings_and_output_layer_only(prepared, work):
    config, train, _ = prepared
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = MMESID(subset_config(work, lora_rank=4), train._dataset)
    assert not [warning for warning in caught if issubclass(warning.category, FutureWarning)]
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert any("lora_" in name for name in trainable) and any("embed_tokens" in name for name in trainable)
    assert not any(name.endswith("q_proj.base_layer.weight") for name in trainable)
    interaction = next(iter(train))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = losses_over_steps(model, lambda: model.calculate_loss(interaction), steps=5, learning_rate=1e-2)
    assert losses[-1] < losses[0]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed <= trainable and any("lora_B" in name for name in changed)


def test_local_pretrained_weights_keep_their_vocabulary_before_the_item_tokens(prepared, work, tmp_path):
    torch.manual_seed(0)
    pretrained = AutoModelForCausalLM.from_config(AutoConfig.for_model(vocab_size=50, **TINY_LM))
    pretrained.save_pretrained(tmp_path / "lm")
    model = MMESID(subset_config(work, llm_name_or_path=str(tmp_path / "lm")), prepared[1]._dataset)
    embedding = model.lm.get_input_embeddings().weight
    assert model.start_id == 50 and model.vocab.level_start(0) == 51 and "pretrained" in model.llm_source
    assert torch.equal(embedding[:50], pretrained.get_input_embeddings().weight)
    codebook = prepared[1]._dataset.sid_codebooks[0, 0]  # modality 0, level 0: [32, 16], the LM 32 wide
    assert torch.allclose(embedding[51:51 + 32], codebook @ model.codebook_projection.T, atol=1e-6)


def test_bad_settings_are_config_errors(prepared, work):
    dataset = prepared[1]._dataset
    with pytest.raises(ConfigError, match="model_type is 'nope'"):
        MMESID(subset_config(work, llm_config={**TINY_LM, "model_type": "nope"}), dataset)
    with pytest.raises(ConfigError, match="lora_rank must be an int >= 0, got -1"):
        MMESID(subset_config(work, lora_rank=-1), dataset)
    with pytest.raises(ConfigError, match="beam_size"):
        MMESID(subset_config(work, beam_size=5), dataset)
    with pytest.raises(ConfigError, match="full_length_inputs must be"):
        MMESID(subset_config(work, full_length_inputs="yes"), dataset)


# The tokenize stage (sid_producer: MMESID, the default)

STAGE = {"sid_levels": 2, "sid_codebook_size": 32, "sid_code_dim": 16, "sid_hidden_dims": [64], "sid_epochs": 3,
         "sid_batch_size": 256}


def test_the_stage_writes_its_own_codes_reuses_them_and_reruns_on_new_settings(tokenized, work):
    folder = work / "dataset" / "Instruments"
    by_hand = (folder / "Instruments.sid").read_bytes()
    stage = {**STAGE, "sid_producer": "MMESID"}
    config = subset_config(work, **stage)
    assert ensure_semantic_ids(config) and not ensure_semantic_ids(config)  # written, then up to date
    metadata = json.loads((folder / "Instruments.MMESID.sid.json").read_text())
    assert metadata["modalities"] == ["text", "image"] and metadata["collision_rate_after"] == 0
    dataset = MMESIDDataset(config)
    codes = dataset.code_tables["sid"][1:]
    assert codes.shape[1] == 2 * 2 + 1 and len(torch.unique(codes, dim=0)) == len(codes)
    assert dataset.sid_codebooks.shape == (2, 2, 32, 16)
    assert (folder / "Instruments.sid").read_bytes() == by_hand  # the tokenizer's file is left alone
    embeddings = (folder / "Instruments.MMESID.sid.npz").read_bytes()
    assert ensure_semantic_ids(subset_config(work, **{**stage, "sid_levels": 3}))  # stale: new settings
    assert not ensure_semantic_ids(config)  # the first settings again: restored from the stage cache
    assert (folder / "Instruments.MMESID.sid.npz").read_bytes() == embeddings


def test_the_entry_point_runs_the_stage_then_trains_and_evaluates(work, tmp_path):
    shutil.copytree(work / "dataset", tmp_path / "dataset", ignore=shutil.ignore_patterns("*.sid*"))
    settings = {**{key: value for key, value in TINY.items() if key != "sid_producer"}, **STAGE, "epochs": 1,
                "eval_step": 1, "data_path": tmp_path / "dataset", "allow_data_mismatch": True}
    log, record = run_entry_point("MMESID", settings, tmp_path)
    assert "Instruments.MMESID.sid are missing" in log and "MMESID stage: MM-RQ-VAE over ['text', 'image']" in log
    assert (tmp_path / "dataset" / "Instruments" / "Instruments.MMESID.sid.npz").is_file()
    assert record["model"] == "MMESID" and record["tokenizer"]["sid"]["collision_rate_after"] == 0
    assert record["tokenizer"]["sid"]["source"] == "text:llama+image:vit"
