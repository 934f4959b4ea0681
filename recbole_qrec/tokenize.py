"""Tokenize stages: item features -> semantic IDs in ``<dataset>.sid`` (a model's own stage:
``<dataset>.<Model>.sid``), the files models read their codes from (config ``sid_producer`` picks one).

Plain, contrastive or MMD tokenizer (RQ-VAE on feature files, settings in ``properties/tokenizer.yaml``)::

    python -m recbole_qrec.tokenize --dataset Instruments --features text.npy [image.npy]
        [--config properties/tokenizer.yaml] [--data_path dataset/] [--device cuda] [--set KEY=VALUE ...]

Feature rows follow the dataset's item ids (row ``i`` = item token ``i``, as ``dataset_prep``
writes them): a feature file has exactly one row per id ``0..`` the largest item id of ``<dataset>.inter``
and ``<dataset>.item``. Every item of those two files gets a semantic ID (items listed only in ``.item``,
without interactions, too). Writes, atomically, ``<data_path>/<dataset>/<dataset>.sid`` (RecBole atomic-file
format, ``item_id:token sid:token_seq``, one token per level: ``a_12 b_7 c_201 d_3``) and
``<dataset>.sid.json``, the report (reconstruction loss, collision rate before/after, per-level
utilisation and perplexity, timings, the tokenizer config). With ``--set quantizers=per_modality`` (MME-SID's
MM-RQ-VAE: one quantizer per feature file) an item's codes are its modalities' codes side by side, and
``<dataset>.sid.npz`` holds the codebooks and each item's per-modality latents, which MMESID starts from.

Content for a dataset without item content (Arts): the item-embedding table of a trained ID model (SASRec,
GRU4Rec, BERT4Rec, FDSA: ``item_embedding.weight`` of a recbole-qrec checkpoint of a run on the dataset) becomes
a feature file, ``<dataset>.<Model>.npy`` beside the atomic files (progress record kind ``id-embedding``;
reused while it records the same checkpoint), which is tokenized like any other::

    python -m recbole_qrec.tokenize --dataset Arts --checkpoint saved/SASRec-<date>.pth --item_field text_codes

``--item_field FIELD`` (a ``*_codes`` name) writes the codes as the content-code field ``FIELD`` of
``<dataset>.item`` instead of ``<dataset>.sid`` (other columns kept), so TIGER, MQL4GRec, QBert4Rec and FDSA
read them exactly like the converted text codes of Instruments and Games; ``<dataset>.content.json`` records the
field's source (``id-embedding:SASRec``), feature files and tokenizer report. A ``.sid.json`` report lists its
features' sources as ``content_sources``. With per-modality quantizers (``--set quantizers=per_modality``), one
field per feature file splits the codes by modality, e.g. MACRec's two languages from its cross-modally aligned
tokenizer::

    python -m recbole_qrec.tokenize --dataset Instruments --features text.npy image.npy \
        --set quantizers=per_modality alignment=contrastive --item_field text_codes image_codes

Each field then holds its modality's ``levels`` codes (shared tuples left to the model's own rule, as in the
converted content codes).

A model's own stage (QBert4Rec's stages 1-2, :mod:`recbole_qrec.qbert4rec_stage`), configured like a run
(the model's and dataset's YAML defaults, ``--config_files``, ``--key=value``; sources from
``pretrain_datasets``)::

    python -m recbole_qrec.tokenize --model QBert4Rec --dataset Instruments [--config_files a.yaml] [--key=value ...]

It writes ``<dataset>.QBert4Rec.sid`` and its metadata, so the plain tokenizer's ``<dataset>.sid`` in the same
folder (TIGER's, MMESID's) stays as it is. The entry point runs it itself when its output is missing or stale
(:func:`ensure_semantic_ids`).
Models read the codes through their dataset (:class:`recbole_qrec.data.dataset.SemanticIdDataset`).
"""

from __future__ import annotations

import argparse
import hashlib
from contextlib import contextmanager
from logging import getLogger
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import yaml
from recbole.config import Config
from recbole.utils import argument_list

from recbole_qrec import mmesid_stage, qbert4rec_stage
from recbole_qrec.config import build_config, read_config_file
from recbole_qrec.data import check_dataset, create_dataset
from recbole_qrec.data.atomic_files import CODE_FIELD_SUFFIX, data_root, item_tokens, read_header
from recbole_qrec.data.cross_domain import pretrain_dataset_names, source_settings
from recbole_qrec.data.features import (EncodedRows, FeaturePaths, feature_source, load_features, read_progress,
                                        record_content_sources, save_features)
from recbole_qrec.data.item_features import item_rows
from recbole_qrec.data.sid import (level_tokens, sid_embeddings_path, sid_metadata_path, sid_path,
                                   write_per_modality_embeddings, write_sid_file)
from recbole_qrec.errors import DEBUG_EPILOG, ConfigError, MalformedDataError, repeated, single_line, user_errors
from recbole_qrec.fileio import atomic_open, exclusive_lock, write_json_atomic
from recbole_qrec.resources import PROPERTIES_DIR
from recbole_qrec.quantization import TokenizerConfig, TokenizerResult, fit_tokenizer
from recbole_qrec.trainer.checkpoint import check_written_for, read_checkpoint

DEFAULT_CONFIG = PROPERTIES_DIR / "tokenizer.yaml"
ITEM_EMBEDDING = "item_embedding.weight"  # RecBole's ID models: row = internal item id, row 0 padding
ID_EMBEDDING_KIND = "id-embedding"
# Models with a tokenize stage of their own, each a module with ``tokenize(config, source_configs) -> metadata``
# (run it) and ``ensure_semantic_ids(config, source_configs) -> bool`` (run it if its output is missing or stale).
MODEL_STAGES = {stage.STAGE: stage for stage in (qbert4rec_stage, mmesid_stage)}


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
    parsed = {}
    for key, value in (item.split("=", 1) for item in items):
        try:
            parsed[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or single_line(err)
            raise ConfigError(f"--set {key}={value}: the value is not valid YAML ({problem}) — correct it, e.g. "
                              "--set hidden_dims=[64,32]") from None
    return parsed


def load_tokenizer_config(path: Path, overrides: dict[str, Any]) -> TokenizerConfig:
    """The settings of the tokenizer YAML ``path`` (a missing, empty or malformed file is a ConfigError) with
    ``overrides`` on top."""
    values = read_config_file(path, option="--config")
    return TokenizerConfig.from_dict({**values, **overrides})


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (identifies a checkpoint in its exported features' progress record)."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def checkpoint_features_path(data_path: str | Path, dataset: str, model: str) -> Path:
    """Where :func:`export_checkpoint_features` writes: ``<data_path>/<dataset>/<dataset>.<model>.npy``."""
    return Path(data_path) / dataset / f"{dataset}.{model}.npy"


def export_checkpoint_features(checkpoint: str | Path, dataset: str, data_path: str | Path = "dataset") -> Path:
    """The item-embedding table of a trained ID model's checkpoint as a feature file (row ``i`` = item token ``i``),
    written unless the file already records this checkpoint; its path.

    The dataset is rebuilt as the run built it (its dataset settings from the checkpoint) to map RecBole's internal
    ids to item tokens; the checkpoint must have been written for these very files (its data fingerprint).
    """
    saved = read_checkpoint(checkpoint, "checkpoint")
    model = saved["config"]["model"]
    out = checkpoint_features_path(data_path, dataset, model)
    settings = {"model": model, "dataset": dataset, "checkpoint": str(Path(checkpoint).resolve()),
                "checkpoint_sha256": file_sha256(checkpoint), "embedding": ITEM_EMBEDDING}
    progress_file = FeaturePaths.of(out).progress
    if progress_file.exists():
        previous = read_progress(progress_file)
        if previous.complete and not previous.differences(ID_EMBEDDING_KIND, settings, previous.n_items):
            return out
    table = saved["state_dict"].get(ITEM_EMBEDDING)
    if table is None or table.ndim != 2:
        raise ConfigError(f"checkpoint '{checkpoint}' ({model}) has no {ITEM_EMBEDDING} table — give the checkpoint of "
                          "an ID model with item embeddings (SASRec, GRU4Rec, BERT4Rec, FDSA)")
    dataset_settings = {key: saved["config"][key] for key in argument_list.dataset_arguments
                        if saved["config"].get(key) is not None}
    config = build_config(model, dataset, config_dict={
        **dataset_settings, "data_path": str(data_path), "allow_data_mismatch": saved["config"].get("allow_data_mismatch"),
        "cold_start_share": saved["config"].get("cold_start_share")})  # the cold-start protocol renumbers the items
    check_dataset(config)
    check_written_for(saved, f"checkpoint '{checkpoint}'", config)
    ids = np.array(item_rows(create_dataset(config)), dtype=np.int64)  # item token of internal ids 1, 2, ...
    if len(table) <= len(ids):
        raise MalformedDataError(f"checkpoint '{checkpoint}': {ITEM_EMBEDDING} has {len(table)} rows for {len(ids)} "
                                 f"items of {dataset} and the padding row — give a checkpoint trained on these files")
    rows = EncodedRows(np.zeros((int(ids.max()) + 1, table.shape[1]), np.float32), np.zeros(int(ids.max()) + 1, bool))
    rows.features[ids] = table[1:len(ids) + 1].float().numpy()
    rows.present[ids] = True
    save_features(out, ID_EMBEDDING_KIND, settings, rows)
    return out


def write_item_codes(item_file: Path, field: str, items: Sequence[str], codes: Sequence[Sequence[int]]) -> None:
    """Set the ``token_seq`` column ``field`` of the atomic file ``item_file`` (created if missing) to ``codes``, one
    row per item of ``items``; its other columns are kept, empty for items it did not list."""
    columns, rows = ["item_id:token"], {}
    if item_file.is_file():
        columns = [f"{name}:{kind}" for name, kind in read_header(item_file, "\t")]
        with open(item_file, encoding="utf-8") as handle:
            next(handle)
            rows = {values[0]: values for values in (line.rstrip("\r\n").split("\t") for line in handle)}
    if columns[0] != "item_id:token":
        raise MalformedDataError(f"{item_file} line 1: the first column is {columns[0]}, not item_id:token — "
                                 "re-create the file with `python -m dataset_prep.convert`")
    kept = [index for index, column in enumerate(columns) if column.split(":")[0] != field]
    with atomic_open(item_file, "w", encoding="utf-8") as handle:
        handle.write("\t".join([*(columns[index] for index in kept), f"{field}:token_seq"]) + "\n")
        for item, tokens in zip(items, level_tokens(codes)):
            values = rows.get(item, [item] + [""] * (len(columns) - 1))
            handle.write("\t".join([*(values[index] for index in kept), tokens]) + "\n")


def check_item_fields(fields: Sequence[str], config: TokenizerConfig, modalities: int) -> None:
    """Content-code field names must end in ``_codes`` (how datasets without a YAML declare their content); more than
    one needs per-modality quantizers and one field per modality."""
    twice = repeated(fields)
    if twice:
        raise ConfigError(f"item_field names {', '.join(twice)} more than once — give each content-code field "
                          "once, one per feature file")
    for field in fields:
        if not field.endswith(CODE_FIELD_SUFFIX):
            raise ConfigError(f"item_field {field!r} does not end in {CODE_FIELD_SUFFIX} — name the content-code field "
                              "like text_codes (what TIGER, MQL4GRec, QBert4Rec and FDSA read)")
    if len(fields) > 1 and (config.quantizers != "per_modality" or len(fields) != modalities):
        raise ConfigError(f"{len(fields)} item fields {list(fields)} for {modalities} feature file(s) with "
                          f"quantizers={config.quantizers} — give one field, or --set quantizers=per_modality and one "
                          "field per feature file (in their order)")


def field_codes(codes: np.ndarray, fields: Sequence[str], levels: int) -> dict[str, np.ndarray]:
    """The codes each content-code field gets: all of them for one field, else each modality's ``levels`` columns."""
    if len(fields) == 1:
        return {fields[0]: codes}
    return {field: codes[:, index * levels:(index + 1) * levels] for index, field in enumerate(fields)}


def tokenize_dataset(
    dataset: str,
    feature_files: Sequence[str | Path],
    config: TokenizerConfig,
    data_path: str | Path = "dataset",
    device: str | None = None,
    item_fields: Sequence[str] = (),
) -> TokenizerResult:
    """Fit the tokenizer on the dataset's item features and write ``<dataset>.sid`` and its report, or, with
    ``item_fields``, those content-code fields of ``<dataset>.item`` (one, or one per modality) and their
    ``<dataset>.content.json`` entries."""
    check_item_fields(item_fields, config, len(feature_files))
    twice = repeated([Path(path).resolve() for path in feature_files])
    if twice:
        raise ConfigError(f"--features names {', '.join(twice)} more than once — give each modality's feature file once")
    items = integer_item_ids(data_path, dataset)
    features = [load_features(path, n_items=items[-1] + 1)[items] for path in feature_files]
    result = fit_tokenizer(features, config, device)
    folder = Path(data_path) / dataset
    report = {**result.report, "dataset": dataset, "features": [str(p) for p in feature_files],
              "content_sources": [feature_source(path) for path in feature_files], "config": config.to_dict()}
    if not item_fields:
        sid_file = sid_path(folder, dataset)
        write_sid_file(sid_file, [str(item) for item in items], result.codes)
        embeddings = sid_embeddings_path(sid_file)
        if config.quantizers == "per_modality":
            write_per_modality_embeddings(embeddings, [str(item) for item in items], result.codebooks(), result.latents,
                                          len(features))
        else:
            embeddings.unlink(missing_ok=True)  # they belonged to the codes just replaced
        write_json_atomic(sid_metadata_path(sid_file), report)
    else:
        for field, codes in field_codes(result.codes, item_fields, config.levels).items():
            write_item_codes(folder / f"{dataset}.item", field, [str(item) for item in items], codes)
        record_content_sources(folder, dataset, {field: {"source": "+".join(report["content_sources"]),
                                                         "tokenizer": report} for field in item_fields})
    return result


def reads_own_stage(config: Config) -> bool:
    """Whether the model has a tokenize stage of its own and reads its codes (``sid_producer`` is the model)."""
    return config["model"] in MODEL_STAGES and config["sid_producer"] == config["model"]


def ensure_semantic_ids(config: Config, source_configs: Sequence[Config] = ()) -> bool:
    """Run the model's tokenize stage when its output is missing or stale; True if it ran (False for a model
    without a stage of its own, or one that reads another producer's codes: ``sid_producer``)."""
    if not reads_own_stage(config):
        return False
    return MODEL_STAGES[config["model"]].ensure_semantic_ids(config, source_configs)


@contextmanager
def semantic_ids_lock(config: Config) -> Iterator[None]:
    """Hold ``<data_path>/.<Model>.sid.lock`` for the block when the model reads its own stage's codes. A stage
    writes the code file of every domain it covers (the target's and its pretraining sources'), so runs on one
    data_path that check, run and read the stage inside this lock one at a time never read codes that another
    run's stage, for another target, is rewriting; a run after one with the same stage key finds them up to date."""
    if not reads_own_stage(config):
        yield
        return
    lock = data_root(config) / f".{config['model']}.sid.lock"
    with exclusive_lock(lock, on_wait=lambda: getLogger().info(
            f"another run on {data_root(config)} is checking, running or reading the {config['model']} tokenize stage: "
            f"waiting for it ({lock})")):
        yield


def model_stage_configs(model: str, dataset: str, config_files: Sequence[str],
                        overrides: Sequence[str]) -> tuple[Config, list[Config]]:
    """The run's config and its pretraining sources' (as the entry point builds them), their data checked."""
    if model not in MODEL_STAGES:
        raise ConfigError(f"{model} has no tokenize stage of its own — give --features for the plain tokenizer, or "
                          f"one of --model {', '.join(MODEL_STAGES)}")
    config = build_config(model, dataset, config_files, cmd_args=overrides)
    sources = [build_config(model, name, config_dict=source_settings(config)) for name in pretrain_dataset_names(config)]
    for domain_config in [config, *sources]:
        check_dataset(domain_config)
    return config, sources


def run_model_stage(model: str, dataset: str, config_files: Sequence[str], overrides: Sequence[str]) -> dict[str, Any]:
    """Build and check the run's config and data and the sources' (as the entry point does), run the model's stage;
    its metadata."""
    config, sources = model_stage_configs(model, dataset, config_files, overrides)
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
    parser.add_argument("--features", nargs="+", default=[], help="one .npy per modality, rows = item ids")
    parser.add_argument("--checkpoint", help="also tokenize the item embeddings of this recbole-qrec checkpoint of an "
                        "ID model (SASRec, ...) trained on the dataset, exported to <dataset>/<dataset>.<Model>.npy")
    parser.add_argument("--item_field", nargs="+", default=[], help="write the codes as this content-code field of "
                        "<dataset>.item (e.g. text_codes) instead of <dataset>.sid, or with quantizers=per_modality one "
                        "field per feature file; <dataset>.content.json records their source")
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
        elif not (args.features or args.checkpoint):
            raise ConfigError("no --features given — give one .npy per modality (or an ID model's --checkpoint) for the "
                              f"plain tokenizer, or --model ({', '.join(MODEL_STAGES)}) for a model's own stage")
        else:
            config = load_tokenizer_config(args.config, parse_overrides(args.set))
            data_path = args.data_path or "dataset"
            check_item_fields(args.item_field, config, len(args.features) + bool(args.checkpoint))
            exported = [export_checkpoint_features(args.checkpoint, args.dataset, data_path)] if args.checkpoint else []
            report = tokenize_dataset(args.dataset, [*args.features, *exported], config, data_path, args.device,
                                      args.item_field).report
    print(
        f"{args.dataset}: {report['n_items']} items, {report['levels']} levels, reconstruction "
        f"{report['reconstruction_loss']:.4f}, collisions {report['collision_rate_before']:.2%} -> "
        f"{report['collision_rate_after']:.2%}, utilisation {[round(u, 3) for u in report['utilisation']]}"
    )


if __name__ == "__main__":
    main()
