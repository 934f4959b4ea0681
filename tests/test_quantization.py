"""Semantic-ID quantization: RQ-VAE training, collision handling, alignment losses, validation."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dataset_prep.features import code_file_features, read_code_index
from recbole_qrec.quantization import (
    RQVAE,
    TokenizerConfig,
    append_level,
    assert_unique,
    assign_codes,
    build_rqvae,
    fit_tokenizer,
    level_usage,
    rerank_collisions,
    resolve_collisions,
    train_rqvae,
)
from recbole_qrec.quantization.features import prepare_features
from recbole_qrec.quantization.metrics import sequence_code_lift

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SMALL = {"levels": 3, "codebook_size": 16, "code_dim": 8, "hidden_dims": (32,), "batch_size": 256}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The models here are tiny: one thread is as fast, and far faster when other jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clustered(n: int, dim: int, clusters: int, seed: int = 0, spread: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """``(features, labels)``: well-separated Gaussian clusters."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(clusters, size=n)
    centres = rng.normal(size=(clusters, dim)) * spread
    return (centres[labels] + rng.normal(size=(n, dim)) * 0.1).astype(np.float32), labels


# --- configuration ---------------------------------------------------------------------------

def test_yaml_defaults_match_config() -> None:
    values = yaml.safe_load((REPO_ROOT / "properties" / "tokenizer.yaml").read_text(encoding="utf-8"))
    assert set(values) == set(TokenizerConfig().to_dict())
    assert TokenizerConfig.from_dict(values) == TokenizerConfig()


def test_unknown_config_key_names_it_and_lists_valid_keys() -> None:
    with pytest.raises(ValueError, match="codebok_size") as error:
        TokenizerConfig.from_dict({"levels": 2, "codebok_size": 4})
    assert "codebook_size" in str(error.value) and "collision_strategy" in str(error.value)


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("levels", 0, "integer >= 1"),
    ("collision_strategy", "shuffle", "rerank or append_level"),
    ("lr", -1.0, "> 0"),
    ("kmeans_init", "yes", "true or false"),
])
def test_bad_config_value_says_what_is_allowed(key: str, value: object, allowed: str) -> None:
    with pytest.raises(ValueError, match=f"{key}=.*allowed is .*{re.escape(allowed)}"):
        TokenizerConfig.from_dict({key: value})


def test_alignment_needs_two_modalities() -> None:
    with pytest.raises(ValueError, match="exactly 2"):
        RQVAE(16, TokenizerConfig(alignment="mmd", **SMALL))


# --- input validation ------------------------------------------------------------------------

def test_nan_rows_are_counted_and_the_first_is_named() -> None:
    x = np.ones((10, 4), dtype=np.float32)
    x[3, 1], x[7, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"in 2 row\(s\), the first is row 3 — re-create the features"):
        fit_tokenizer(x, TokenizerConfig(epochs=1, **SMALL), device="cpu")


def test_row_count_mismatch_between_modalities() -> None:
    with pytest.raises(ValueError, match=r"different row counts \[10, 9\]"):
        prepare_features([np.ones((10, 4)), np.ones((9, 3))], CPU)


# --- collision handling on hand-built cases --------------------------------------------------

def test_rerank_moves_the_worse_fitting_item_to_the_next_nearest_deepest_code() -> None:
    codebooks = np.array([[[0, 0], [10, 0], [0, 10]], [[0, 0], [1, 0], [0, 1]]], dtype=np.float32)
    latents = np.array([[0.05, 0.0], [0.3, 0.45]], dtype=np.float32)
    codes = np.array([[0, 0], [0, 0]])  # both nearest codes; item 0 fits better and keeps them
    # item 1's level-2 distances: code 0 0.2925 < code 2 0.3925 < code 1 0.6925
    assert rerank_collisions(codes, latents, codebooks).tolist() == [[0, 0], [0, 2]]


def test_rerank_moves_one_level_up_when_the_deepest_level_is_full() -> None:
    codebooks = np.array([[[0, 0], [10, 0]], [[0, 0], [0, 1]]], dtype=np.float32)
    latents = np.array([[0, 0.1], [0, 0.9], [0, 0.2]], dtype=np.float32)
    codes = np.array([[0, 0], [0, 1], [0, 0]])
    # item 2 collides with item 0 (which fits better); (0, 1) is taken, so level 1 moves to its
    # next-nearest code 1 and level 2 is re-picked for the residual (-10, 0.2): code 0.
    assert rerank_collisions(codes, latents, codebooks).tolist() == [[0, 0], [0, 1], [1, 0]]


def test_rerank_fails_loudly_when_the_catalog_exceeds_the_code_space() -> None:
    codebooks = np.array([[[0.0], [1.0]]], dtype=np.float32)
    with pytest.raises(ValueError, match="no free semantic-ID tuple"):
        rerank_collisions(np.zeros((3, 1), dtype=np.int64), np.zeros((3, 1), dtype=np.float32), codebooks)


def test_append_level_numbers_duplicates_in_item_order() -> None:
    codes = np.array([[1, 2], [1, 2], [3, 4], [1, 2], [3, 4], [5, 6]])
    assert append_level(codes)[:, -1].tolist() == [0, 1, 0, 2, 1, 0]
    assert (append_level(codes)[:, :2] == codes).all()


def test_assert_unique_raises_on_a_duplicate_tuple() -> None:
    with pytest.raises(RuntimeError, match="2 items still share"):
        assert_unique(np.array([[1, 2], [1, 2], [1, 3]]))


def test_rerank_handles_a_million_items_in_seconds() -> None:
    rng = np.random.default_rng(0)
    n = 1_000_000
    codes = rng.integers(256, size=(n, 4))
    codes[rng.integers(n, size=15_000)] = codes[rng.integers(n, size=15_000)]  # ~3% colliding
    codes[:300] = codes[0]  # more than K items on one tuple: some must move a level up
    latents = rng.normal(size=(n, 32)).astype(np.float32)
    codebooks = rng.normal(size=(4, 256, 32)).astype(np.float32)
    resolved = resolve_collisions(codes, latents, codebooks, "rerank")
    assert (resolved[:300, :3] != codes[0, :3]).any(1).sum() >= 300 - 256


# --- training --------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["rerank", "append_level"])
def test_zero_collisions_on_instruments_content_proxy(strategy: str, amazon_dir: Path) -> None:
    features = code_file_features(amazon_dir / "Instruments" / "Instruments.index_lemb.json")
    assert features.shape == (6250, 1024)
    result = fit_tokenizer(features, TokenizerConfig(epochs=1, collision_strategy=strategy), device="cpu")
    assert result.report["collision_rate_before"] > 0  # one epoch leaves collisions to resolve
    assert result.report["collision_rate_after"] == 0.0
    assert result.codes.shape == (6250, 4 if strategy == "rerank" else 5)
    assert len({tuple(row) for row in result.codes.tolist()}) == 6250


def test_level_one_uses_most_codes_on_separated_clusters() -> None:
    x, _ = clustered(4096, 64, 64)
    config = TokenizerConfig(epochs=3, codebook_size=64, levels=2, code_dim=16, hidden_dims=(64,),
                             batch_size=1024, collision_strategy="append_level")
    assert fit_tokenizer(x, config, device="cpu").report["utilisation"][0] > 0.5


def test_codes_are_deterministic_for_a_fixed_seed() -> None:
    x, _ = clustered(1024, 32, 16)
    config = TokenizerConfig(epochs=3, **SMALL)
    first, second = (fit_tokenizer(x, config, device="cpu") for _ in range(2))
    assert np.array_equal(first.codes, second.codes)
    assert first.report["reconstruction_loss"] == second.report["reconstruction_loss"]


def test_training_decreases_reconstruction_loss() -> None:
    x, _ = clustered(2048, 32, 16)
    history = fit_tokenizer(x, TokenizerConfig(epochs=20, **SMALL), device="cpu").report["reconstruction_loss_per_epoch"]
    assert history[-1] < 0.5 * history[0]


def test_dead_code_reseeding_recovers_identical_codebooks() -> None:
    x, _ = clustered(2048, 32, 32)
    features = prepare_features(x, CPU)

    def utilisation(threshold: int) -> float:
        config = TokenizerConfig(epochs=4, kmeans_init=False, dead_code_threshold=threshold, **SMALL)
        model = build_rqvae([32], config, CPU)
        with torch.no_grad():
            model.quantizer.codebooks.zero_()  # every code identical: argmin always picks code 0
        train_rqvae(model, features, config)
        return level_usage(assign_codes(model, features, config)[0], config.codebook_size)[0][0]

    assert utilisation(2) > utilisation(0) + 0.4


# --- multi-modal alignment -------------------------------------------------------------------

def two_modalities() -> list[np.ndarray]:
    text, labels = clustered(1024, 48, 16, seed=1)
    image = (np.random.default_rng(2).normal(size=(16, 24)) * 5)[labels].astype(np.float32)
    return [text, image + np.random.default_rng(3).normal(size=image.shape).astype(np.float32)]


@pytest.mark.parametrize(("alignment", "terms"), [("contrastive", ["contrastive", "recon_align"]), ("mmd", ["mmd"])])
def test_alignment_changes_codes_and_its_losses_are_finite_and_positive(alignment: str, terms: list[str]) -> None:
    features = two_modalities()
    config = TokenizerConfig(epochs=3, alignment=alignment, align_sample=256, fusion="concat", **SMALL)
    aligned = fit_tokenizer(features, config, device="cpu")
    plain = fit_tokenizer(features, TokenizerConfig(epochs=3, fusion="concat", **SMALL), device="cpu")
    assert not np.array_equal(aligned.codes, plain.codes)
    losses = aligned.model(*(torch.from_numpy(f[:256]) for f in features)).losses
    for term in terms:
        assert torch.isfinite(losses[term]) and losses[term] > 0
    assert losses["total"] > losses["reconstruction"]


# --- sequence lift ------------------------------------------------------------------------------

def test_sequence_lift_counts_shared_prefixes_of_consecutive_items() -> None:
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    sequences = [np.array([0, 1, 2, 3]), np.array([2, 3, 3, 0, 1])]
    # depth 1, pairs of different items: (0,1) (2,3) (2,3) (0,1) share their first code, (1,2) (3,0) do not: 4/6.
    # Each item is 1/4 of the occurrences: two different items drawn share the first code 1 time in 3.
    assert sequence_code_lift(sequences, codes, 1) == pytest.approx(2.0)
    assert np.isnan(sequence_code_lift(sequences, codes, 2))  # no two items share both codes: no chance to beat
    assert np.isnan(sequence_code_lift([np.array([1]), np.array([2, 2])], codes, 1))


def test_sequence_lift_sees_the_order_content_codes_keep(amazon_dir: Path) -> None:
    """Instruments' LLaMA text codes: consecutive items share their first two codes several times more often than
    chance; the same codes given to random items do not."""
    index = read_code_index(amazon_dir / "Instruments" / "Instruments.index_lemb.json")
    codes = np.array([index[item] for item in range(len(index))])
    histories = json.loads((amazon_dir / "Instruments" / "Instruments.inter.json").read_text())
    sequences = [np.array(items) for items in histories.values()]
    assert sequence_code_lift(sequences, codes, 2) > 3
    shuffled = codes[np.random.default_rng(0).permutation(len(codes))]
    assert 0.8 < sequence_code_lift(sequences, shuffled, 2) < 1.2
