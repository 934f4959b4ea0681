"""Semantic-ID tokenizer for a RecBole dataset: item features -> RQ-VAE -> collision-free codes.

``python -m recbole_qrec.tokenize --dataset Instruments --features text.npy [image.npy]
[--config properties/tokenizer.yaml] [--data_path dataset/] [--device cuda]``

Feature rows follow the dataset's item ids (row ``i`` = item token ``i``, as ``dataset_prep``
writes them); every row gets a semantic ID, so catalogue items without interactions get one too. Writes, atomically, ``<data_path>/<dataset>/<dataset>.sid`` (RecBole atomic-file
format, ``item_id:token sid:token_seq``, one token per level: ``a_12 b_7 c_201 d_3``) and
``<dataset>.sid.json``, the report (reconstruction loss, collision rate before/after, per-level
utilisation and perplexity, timings, the tokenizer config). Models read the codes with
:func:`recbole_qrec.data.sid.load_code_table`.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from dataset_prep.convert import convert
from dataset_prep.features import load_features
from recbole_qrec.config import PROPERTIES_DIR
from recbole_qrec.data.sid import SID_FIELD, SID_SUFFIX
from recbole_qrec.errors import ConfigError, MalformedDataError, QRecError
from recbole_qrec.fileio import atomic_open, write_json_atomic
from recbole_qrec.quantization import TokenizerConfig, TokenizerResult, fit_tokenizer

DEFAULT_CONFIG = PROPERTIES_DIR / "tokenizer.yaml"


def level_tokens(codes: np.ndarray) -> list[str]:
    """``[[12, 7], ...]`` -> ``["a_12 b_7", ...]`` (level letters a, b, c, ...)."""
    letters = string.ascii_lowercase[: codes.shape[1]]
    return [" ".join(f"{letter}_{code}" for letter, code in zip(letters, row)) for row in codes]


def max_item_id(inter_file: Path) -> int:
    """Largest item token of an atomic ``.inter`` file whose item tokens are integer ids."""
    with open(inter_file, encoding="utf-8") as handle:
        next(handle)
        try:
            return max(int(line.split("\t", 2)[1]) for line in handle)
        except ValueError as err:
            raise MalformedDataError(f"{inter_file}: item tokens must be integer ids to align feature rows with items ({err}).") from err


def write_sid_file(codes: np.ndarray, path: Path) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(f"item_id:token\t{SID_FIELD}:token_seq\n")
        handle.writelines(f"{item}\t{tokens}\n" for item, tokens in enumerate(level_tokens(codes)))


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["epochs=5", "hidden_dims=[64]"]`` -> ``{"epochs": 5, "hidden_dims": [64]}`` (values parsed as YAML)."""
    malformed = [item for item in items if "=" not in item]
    if malformed:
        raise ConfigError(f"--set takes KEY=VALUE pairs, got {malformed}.")
    return {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}


def load_tokenizer_config(path: Path, overrides: dict[str, Any]) -> TokenizerConfig:
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return TokenizerConfig.from_dict({**values, **overrides})


def tokenize_dataset(
    dataset: str,
    feature_files: Sequence[str | Path],
    config: TokenizerConfig,
    data_path: str | Path = "dataset",
    device: str | None = None,
) -> TokenizerResult:
    """Fit the tokenizer on the dataset's item features and write ``<dataset>.sid`` and its report."""
    folder = Path(data_path) / dataset
    inter_file = folder / f"{dataset}.inter"
    if not inter_file.is_file():
        convert(dataset, out=data_path)
    needed = max_item_id(inter_file) + 1
    features = [load_features(path) for path in feature_files]
    for path, matrix in zip(feature_files, features):
        if len(matrix) < needed:
            raise MalformedDataError(
                f"{path} has {len(matrix)} rows but {dataset} has item id {needed - 1}: row i must hold item i's features."
            )
    result = fit_tokenizer(features, config, device)
    write_sid_file(result.codes, folder / f"{dataset}.{SID_SUFFIX}")
    report = {**result.report, "dataset": dataset, "features": [str(p) for p in feature_files], "config": config.to_dict()}
    write_json_atomic(folder / f"{dataset}.{SID_SUFFIX}.json", report)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--features", nargs="+", required=True, help="one .npy per modality, rows = item ids")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="tokenizer YAML")
    parser.add_argument("--data_path", default="dataset", help="RecBole data_path")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override tokenizer settings")
    args = parser.parse_args(argv)
    try:
        config = load_tokenizer_config(args.config, parse_overrides(args.set))
        result = tokenize_dataset(args.dataset, args.features, config, args.data_path, args.device)
    except QRecError as err:
        sys.exit(f"error: {err}")
    report = result.report
    print(
        f"{args.dataset}: {report['n_items']} items, {report['levels']} levels, reconstruction "
        f"{report['reconstruction_loss']:.4f}, collisions {report['collision_rate_before']:.2%} -> "
        f"{report['collision_rate_after']:.2%}, utilisation {[round(u, 3) for u in report['utilisation']]}"
    )


if __name__ == "__main__":
    main()
