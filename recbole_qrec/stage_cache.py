"""What a model's tokenize stage shares: its inputs (every domain's items and features), the key its codes are
cached under and the check that reruns it only when a domain's code file is missing or stale.

A stage writes ``<domain>.<Model>.sid`` for each domain it covers and beside it ``<domain>.<Model>.sid.json``,
whose ``key`` hashes the stage's settings, the data fingerprint (every domain's item tokens and feature values)
and the code version (a hash of the source files the codes depend on). It also keeps a copy of every domain's files
under the target's ``stage_cache/<Model>/<key>/``: the domains' files hold one key at a time, and runs of several
targets (whose stages write each other's domains) or settings would otherwise rerun each other's stages.
:func:`ensure` reruns the stage only when a domain's file is missing or its recorded key differs and the cache has
no copy for that key; a copy is restored instead. Deleting ``stage_cache/`` is safe (stages rerun as needed).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path
from typing import Any

from recbole.config import Config
from recbole.data.dataset import SequentialDataset

import recbole_qrec.quantization
from recbole_qrec.data.item_features import ItemFeatures, load_item_features, load_source_features
from recbole_qrec.data.sid import sid_embeddings_path, sid_metadata_path, sid_path
from recbole_qrec.fileio import atomic_path, check_output_folder

# The tokenizer's figures a stage's metadata carries (recbole_qrec.quantization's report).
TOKENIZER_FIGURES = ("n_items", "levels", "reconstruction_loss", "collision_rate_before", "collision_rate_after",
                     "utilisation", "perplexity")


@dataclass
class StageInputs:
    """Every domain's items and features, by domain name, target first; ``producer`` names the code files."""

    producer: str
    item_tokens: dict[str, list[str]]
    features: dict[str, ItemFeatures]
    folders: dict[str, Path]

    def sid_file(self, domain: str) -> Path:
        """The stage's code file of ``domain``: ``<domain>.<producer>.sid``."""
        return sid_path(self.folders[domain], domain, self.producer)

    def output_files(self, domain: str) -> tuple[Path, Path, Path]:
        """``domain``'s code file, its embeddings (written by some stages only) and its metadata, the metadata last:
        a stage is complete once every domain's metadata is written."""
        sid_file = self.sid_file(domain)
        return sid_file, sid_embeddings_path(sid_file), sid_metadata_path(sid_file)

    def cache_folder(self, key: str) -> Path:
        """Where the copy of the stage's output under ``key`` is kept: ``<target folder>/stage_cache/<producer>/<key>``."""
        return self.folders[next(iter(self.item_tokens))] / "stage_cache" / self.producer / key


def stage_inputs(producer: str, config: Config, source_configs: Sequence[Config] = ()) -> StageInputs:
    """Build each domain's RecBole dataset (for its item tokens in internal-id order) and read its features,
    aligned with the target's."""
    tokens, features, folders = {}, {}, {}
    for domain_config in [config, *source_configs]:
        name = domain_config["dataset"]
        dataset = SequentialDataset(domain_config)
        if features:
            features[name] = load_source_features(domain_config, dataset, features[config["dataset"]])
            if not features[name].present.any():
                getLogger().warning(f"pretraining source {name} has no {features[name].modalities} features: the "
                                    "semantic IDs of its items come from their learnable ID vectors alone")
        else:
            features[name] = load_item_features(domain_config, dataset)
        tokens[name] = list(dataset.field2id_token[dataset.iid_field][1:])
        folders[name] = Path(domain_config["data_path"])
    return StageInputs(producer, tokens, features, folders)


def sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def code_version(files: Iterable[Path]) -> str:
    """Hash of the source ``files`` the codes depend on and of the quantization package, which every stage runs."""
    quantizer = sorted(Path(recbole_qrec.quantization.__file__).parent.glob("*.py"))
    return hashlib.sha256(b"".join(path.read_bytes() for path in [*files, *quantizer])).hexdigest()[:16]


def data_fingerprint(inputs: StageInputs) -> str:
    """Hash of every domain's item tokens and feature values."""
    return sha256({name: [tokens, inputs.features[name].digest()] for name, tokens in inputs.item_tokens.items()})


def stage_seed(config: Config) -> int:
    """The seed of the tokenize stage: ``sid_seed``, or the run's ``seed`` when it is ~ (runs of several seeds with
    one ``sid_seed`` share one stage run and its codes)."""
    return config["seed"] if config["sid_seed"] is None else config["sid_seed"]


def stage_identity(config: Config, inputs: StageInputs, keys: Sequence[str], files: Iterable[Path]) -> dict[str, Any]:
    """What the codes depend on (the settings ``keys``, the stage's seed, the data, the source ``files`` and the
    quantizer's), and its ``key``."""
    settings = {**{name: config[name] for name in keys}, "seed": stage_seed(config)}
    identity = {"stage": inputs.producer, "settings": settings,
                "domains": list(inputs.item_tokens), "data_fingerprint": data_fingerprint(inputs),
                "code_version": code_version(files)}
    return {"key": sha256(identity)[:16], **identity}


def recorded_key(metadata: Path) -> str | None:
    """The stage key a ``.sid.json`` records (None for a file that is not a stage's metadata)."""
    try:
        return json.loads(metadata.read_text(encoding="utf-8")).get("key")
    except (ValueError, AttributeError):
        return None


def stage_status(inputs: StageInputs, key: str, folder: Path | None = None) -> str:
    """``missing``, ``stale`` or ``up to date``: the state of every domain's ``.sid`` and metadata, in the domains'
    folders or, given ``folder``, in it (a cache entry)."""
    files = [(sid_file, metadata) for sid_file, _, metadata in map(inputs.output_files, inputs.item_tokens)]
    if folder is not None:
        files = [(folder / sid_file.name, folder / metadata.name) for sid_file, metadata in files]
    if not all(sid_file.is_file() and metadata.is_file() for sid_file, metadata in files):
        return "missing"
    return "up to date" if all(recorded_key(metadata) == key for _, metadata in files) else "stale"


def copy_output(inputs: StageInputs, key: str, to_cache: bool) -> None:
    """Copy every domain's output files into the cache folder of ``key`` (``to_cache``) or back from it, each file
    atomically and the metadata files last, so an interrupted copy leaves the stage missing or stale, never up to
    date with another key's codes."""
    folder = inputs.cache_folder(key)
    files = sorted((path for domain in inputs.item_tokens for path in inputs.output_files(domain)),
                   key=lambda path: path.name.endswith(".json"))
    for path in files:
        source, destination = (path, folder / path.name) if to_cache else (folder / path.name, path)
        if source.is_file():
            with atomic_path(destination) as tmp:
                shutil.copyfile(source, tmp)


def ensure(config: Config, inputs: StageInputs, identity: dict[str, Any],
           run: Callable[[Config, StageInputs, dict[str, Any]], Any]) -> bool:
    """``run`` the stage when a domain's ``.sid`` is missing or stale and the cache has no copy of its key (one log
    line says which); True if it ran."""
    key = identity["key"]
    status = stage_status(inputs, key)
    target_file = inputs.sid_file(config["dataset"])
    if status == "up to date":
        getLogger().info(f"{inputs.producer} semantic IDs {target_file} are up to date (stage key {key}): reused")
        return False
    if stage_status(inputs, key, inputs.cache_folder(key)) == "up to date":
        copy_output(inputs, key, to_cache=False)
        getLogger().info(f"{inputs.producer} semantic IDs {target_file} are {status} (stage key {key}): restored from "
                         f"{inputs.cache_folder(key)}")
        return False
    getLogger().info(f"{inputs.producer} semantic IDs {target_file} are {status} (stage key {key}): running the "
                     "tokenize stage")
    run_and_keep(config, inputs, identity, run)
    return True


def run_and_keep(config: Config, inputs: StageInputs, identity: dict[str, Any],
                 run: Callable[[Config, StageInputs, dict[str, Any]], Any]) -> Any:
    """``run`` the stage, then keep a copy of its output in the cache; what ``run`` returned."""
    check_output_folder(inputs.cache_folder(identity["key"]), f"cannot keep the {inputs.producer} stage's codes",
                        "remove or rename it")
    result = run(config, inputs, identity)
    copy_output(inputs, identity["key"], to_cache=True)
    return result
