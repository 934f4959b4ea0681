"""Tokenize stages: item features -> semantic IDs in ``<dataset>.sid``, the file models read their codes from.

Plain, contrastive or MMD tokenizer (RQ-VAE on feature files, settings in ``properties/tokenizer.yaml``)::

    python -m recbole_qrec.tokenize --dataset Instruments --features text.npy [image.npy]
        [--config properties/tokenizer.yaml] [--data_path dataset/] [--device cuda] [--set KEY=VALUE ...]

Feature rows follow the dataset's item ids (row ``i`` = item token ``i``, as ``dataset_prep``
writes them): a feature file has exactly one row per id ``0..`` the largest item id of ``<dataset>.inter``
and ``<dataset>.item``. Every item of those two files gets a semantic ID (items listed only in ``.item``,
without interactions, too). Writes, atomically, ``<data_path>/<dataset>/<dataset>.sid`` (RecBole atomic-file
format, ``item_id:token sid:token_seq``, one token per level: ``a_12 b_7 c_201 d_3``) and
``<dataset>.sid.json``, the report (reconstruction loss, collision rate before/after, per-level
utilisation and perplexity, timings, the tokenizer config).

A model's own stage (QBert4Rec's stages 1-2, :mod:`recbole_qrec.qbert4rec_stage`), configured like a run
(the model's and dataset's YAML defaults, ``--config_files``, ``--key=value``; sources from
``pretrain_datasets``)::

    python -m recbole_qrec.tokenize --model QBert4Rec --dataset Instruments [--config_files a.yaml] [--key=value ...]

The entry point runs it itself when its output is missing or stale (:func:`ensure_semantic_ids`).
Models read the codes through their dataset (:class:`recbole_qrec.data.dataset.SemanticIdDataset`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import yaml

from recbole.config import Config

from recbole_qrec import qbert4rec_stage
from recbole_qrec.config import build_config
from recbole_qrec.data import check_dataset
from recbole_qrec.data.atomic_files import item_tokens
from recbole_qrec.data.cross_domain import pretrain_dataset_names, source_settings
from recbole_qrec.data.features import load_features
from recbole_qrec.data.sid import sid_metadata_path, sid_path, write_sid_file
from recbole_qrec.errors import DEBUG_EPILOG, ConfigError, MalformedDataError, user_errors
from recbole_qrec.fileio import write_json_atomic
from recbole_qrec.resources import PROPERTIES_DIR
from recbole_qrec.quantization import TokenizerConfig, TokenizerResult, fit_tokenizer

DEFAULT_CONFIG = PROPERTIES_DIR / "tokenizer.yaml"
# Models with a tokenize stage of their own, each a module with ``tokenize(config, source_configs) -> metadata``
# (run it) and ``ensure_semantic_ids(config, source_configs) -> bool`` (run it if its output is missing or stale).
MODEL_STAGES = {qbert4rec_stage.STAGE: qbert4rec_stage}


def integer_item_ids(data_path: str | Path, dataset: str) -> list[int]:
    """The dataset's item ids (tokens of ``.inter`` and ``.item``), which must be integers to index feature rows."""
    tokens = item_tokens(data_path, dataset)
    named = [token for token in tokens if not token.isdigit()]
    if named:
        raise MalformedDataError(f"{dataset}'s item tokens {named[:5]} are not integer ids, but feature row i holds item "
                                 "i — number the items 0..n-1 as `python -m dataset_prep.convert` does")
    return sorted(map(int, tokens))


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["epochs=5", "hidden_dims=[64]"]`` -> ``{"epochs": 5, "hidden_dims": [64]}`` (values parsed as YAML)."""
    malformed = [item for item in items if "=" not in item]
    if malformed:
        raise ConfigError(f"--set takes KEY=VALUE pairs, got {malformed} — e.g. --set epochs=50")
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
    items = integer_item_ids(data_path, dataset)
    features = [load_features(path, n_items=items[-1] + 1)[items] for path in feature_files]
    result = fit_tokenizer(features, config, device)
    sid_file = sid_path(Path(data_path) / dataset, dataset)
    write_sid_file(sid_file, [str(item) for item in items], result.codes)
    report = {**result.report, "dataset": dataset, "features": [str(p) for p in feature_files], "config": config.to_dict()}
    write_json_atomic(sid_metadata_path(sid_file), report)
    return result


def ensure_semantic_ids(config: Config, source_configs: Sequence[Config] = ()) -> bool:
    """Run the model's tokenize stage when its output is missing or stale; True if it ran (False for a model
    without a stage of its own)."""
    if config["model"] not in MODEL_STAGES:
        return False
    return MODEL_STAGES[config["model"]].ensure_semantic_ids(config, source_configs)


def run_model_stage(model: str, dataset: str, config_files: Sequence[str], overrides: Sequence[str]) -> dict[str, Any]:
    """Build and check the run's config and data and the sources' (as the entry point does), run the model's stage;
    its metadata."""
    if model not in MODEL_STAGES:
        raise ConfigError(f"{model} has no tokenize stage of its own — give --features for the plain tokenizer, or "
                          f"one of --model {', '.join(MODEL_STAGES)}")
    config = build_config(model, dataset, config_files, cmd_args=overrides)
    sources = [build_config(model, name, config_dict=source_settings(config)) for name in pretrain_dataset_names(config)]
    for domain_config in [config, *sources]:
        check_dataset(domain_config)
    return MODEL_STAGES[model].tokenize(config, sources)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_qrec.tokenize", allow_abbrev=False, epilog=DEBUG_EPILOG,
        description="Semantic IDs for a dataset's items: the plain RQ-VAE tokenizer over feature files (--features), "
        "or a model's own tokenize stage (--model QBert4Rec). Writes <data_path>/<dataset>/<dataset>.sid and its "
        ".sid.json report.")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", help=f"run this model's own stage ({', '.join(MODEL_STAGES)}) instead")
    parser.add_argument("--config_files", nargs="+", default=[], help="with --model: YAML files, as for a run")
    parser.add_argument("--features", nargs="+", help="one .npy per modality, rows = item ids")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="tokenizer YAML")
    parser.add_argument("--data_path", help="RecBole data_path (default: dataset/)")
    parser.add_argument("--device", default=None, help="plain tokenizer: cuda / cpu (default: cuda when available)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override tokenizer settings")
    args, overrides = parser.parse_known_args(argv)
    with user_errors():
        if args.model:
            data_path = [f"--data_path={args.data_path}"] if args.data_path else []
            report = run_model_stage(args.model, args.dataset, args.config_files, [*data_path, *overrides])
        elif overrides:
            raise ConfigError(f"unknown options {overrides} — --key=value settings go with --model (a model's stage); "
                              "the plain tokenizer takes --set KEY=VALUE")
        elif not args.features:
            raise ConfigError("no --features given — give one .npy per modality for the plain tokenizer, or --model "
                              f"({', '.join(MODEL_STAGES)}) for a model's own stage")
        else:
            config = load_tokenizer_config(args.config, parse_overrides(args.set))
            report = tokenize_dataset(args.dataset, args.features, config, args.data_path or "dataset", args.device).report
    print(
        f"{args.dataset}: {report['n_items']} items, {report['levels']} levels, reconstruction "
        f"{report['reconstruction_loss']:.4f}, collisions {report['collision_rate_before']:.2%} -> "
        f"{report['collision_rate_after']:.2%}, utilisation {[round(u, 3) for u in report['utilisation']]}"
    )


if __name__ == "__main__":
    main()
