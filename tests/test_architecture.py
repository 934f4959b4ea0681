"""The architecture: one-way imports, models built from config, dataset and tensors only, and the tokenize
stage's output reused until its inputs change, beside the tokenizer's, which it leaves alone."""

from __future__ import annotations

import ast
import builtins
import io
import json
import logging
import os
import pathlib
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from dataset_prep.features import code_file_features
from recbole_qrec.config import build_config
from recbole_qrec.data import create_dataset
from recbole_qrec.data.sid import load_code_table, read_code_column, sid_metadata_path, sid_path
from recbole_qrec.data.sid_quality import code_table_quality
from recbole_qrec.tokenize import DEFAULT_CONFIG, ensure_semantic_ids, load_tokenizer_config, parse_overrides
from recbole_qrec.tokenize import tokenize_dataset
from recbole_qrec.tokenize import main as tokenize_main
from recbole_qrec.utils import get_model, qrec_model_names

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recbole_qrec", "dataset_prep", "bench")
# The layers of recbole_qrec, lowest first: a module imports only modules of lower layers (and of its own
# top-level module or package). The package itself (recbole_qrec/__init__.py) imports none of them.
LAYERS = (
    ("errors",),
    ("evaluator",),
    ("fileio", "resources", "compat", "console", "distributed", "devices"),
    ("quantization", "generation"),
    ("data",),
    ("model",),
    ("trainer",),
    ("utils",),
    ("config",),
    ("stage_cache",),
    ("qbert4rec_stage", "mmesid_stage"),
    ("tokenize",),
    ("results", "table"),
    ("child_runs",),
    ("compare", "sweep"),
    ("quick_start",),
    ("cli",),
    ("__main__",),
)
LAYER = {unit: index for index, units in enumerate(LAYERS) for unit in units}
# What dataset_prep may use of recbole_qrec: its errors, atomic file output, feature matrices and device choice.
DATASET_PREP_MAY_IMPORT = ("recbole_qrec.errors", "recbole_qrec.fileio", "recbole_qrec.data.features",
                           "recbole_qrec.devices")
TINY = {
    "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
    "injection_dim": 32, "injection_epochs": 2, "injection_batch_size": 512,
    "sid_levels": 3, "sid_codebook_size": 32, "sid_code_dim": 16, "sid_epochs": 3,
    "hidden_size": 32, "inner_size": 64, "n_layers": 1, "n_heads": 2,
}
MODEL_KEYS = {
    "TIGER": ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads"),
    "MQL4GRec": ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads"),
    "MACRec": ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads"),
    "QBert4Rec": ("injection_dim", "injection_epochs", "injection_batch_size", "sid_levels", "sid_codebook_size",
                  "sid_code_dim", "sid_epochs", "hidden_size", "inner_size", "n_layers", "n_heads"),
}

# A model that extends another by subclassing it (MACRec: MQL4GRec plus cross-modal alignment) imports that one only.
EXTENDS = {"recbole_qrec.model.macrec": "recbole_qrec.model.mql4grec"}

pytestmark = pytest.mark.usefixtures("one_thread")


# (a) Imports

def module_names() -> dict[str, Path]:
    """Every Python module of the project's packages, by dotted name."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules ``name`` imports anywhere in its source (deferred and type-checking imports included):
    ``from package import module`` counts as the module, ``from module import name`` as the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*prefix, *([node.module] if node.module else [])])
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return found


@pytest.fixture(scope="module")
def imports() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def top_level(module: str) -> str:
    return module.split(".")[0]


def unit(module: str) -> str:
    """The layer unit of a recbole_qrec module: its top-level module or sub-package ("" for the package)."""
    return module.split(".")[1] if "." in module else ""


def test_no_import_cycle_between_top_level_packages(imports):
    edges = {(top_level(source), top_level(target)) for source, targets in imports.items() for target in targets
             if top_level(target) in PACKAGES and top_level(target) != top_level(source)}
    assert ("recbole_qrec", "dataset_prep") not in edges and ("recbole_qrec", "bench") not in edges
    assert ("dataset_prep", "bench") not in edges
    dataset_prep_uses = {target for source, targets in imports.items() if top_level(source) == "dataset_prep"
                         for target in targets if top_level(target) == "recbole_qrec"}
    assert dataset_prep_uses <= set(DATASET_PREP_MAY_IMPORT), dataset_prep_uses - set(DATASET_PREP_MAY_IMPORT)


def test_recbole_qrec_imports_only_lower_layers(imports):
    units = {unit(name) for name in imports if top_level(name) == "recbole_qrec"} - {""}
    assert units <= set(LAYER), f"modules missing from the layer table: {sorted(units - set(LAYER))}"
    upward = [f"{source} -> {target}" for source, targets in imports.items() if top_level(source) == "recbole_qrec"
              for target in targets if top_level(target) == "recbole_qrec" and unit(target) != unit(source)
              and (unit(source) == "" or unit(target) == "" or LAYER[unit(target)] >= LAYER[unit(source)])]
    assert not upward, upward


def test_no_model_file_imports_another(imports):
    model_files = {f"recbole_qrec.model.{name.lower()}" for name in qrec_model_names()}
    assert len(model_files) == 5
    importers = [f"{source} -> {target}" for source, targets in imports.items()
                 for target in targets & model_files if source != target and EXTENDS.get(source) != target]
    assert not importers, importers


def test_bench_scripts_import_only_installed_packages_and_leave_sys_path_alone(imports):
    bench_scripts = {path.stem for path in (REPO_ROOT / "bench").glob("*.py")} - {"common"}
    for name, path in module_names().items():
        if top_level(name) != "bench":
            continue
        local = {target for target in imports[name] if top_level(target) == "bench"}
        assert not local, f"{name} imports {local}: shared helpers live in bench/common.py (import common)"
        siblings = {node.module for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in bench_scripts}
        assert not siblings, f"{name} imports the bench scripts {siblings}: shared helpers live in bench/common.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            assert not (isinstance(node, ast.Attribute) and node.attr == "path"
                        and isinstance(node.value, ast.Name) and node.value.id == "sys"), f"{name} edits sys.path"


# (b) Models take config, dataset and tensors only

class ConstructorSideEffect(AssertionError):
    """A model constructor opened a file, loaded a checkpoint or ran a backward pass."""


@contextmanager
def no_file_access_or_training() -> Iterator[None]:
    """Refuse every file open and load/save, and every backward pass, inside the block."""
    def refuse(*args, **kwargs):
        raise ConstructorSideEffect(f"a model constructor touched a file or trained ({args[:1]})")

    targets = [(builtins, "open"), (io, "open"), (os, "open"), (pathlib.Path, "open"), (torch, "load"),
               (torch, "save"), (np, "load"), (torch.Tensor, "backward"), (torch.autograd, "backward")]
    with ExitStack() as stack:
        for owner, name in targets:
            stack.enter_context(mock.patch.object(owner, name, refuse))
        yield


def subset_config(model: str, data_path: Path, **overrides):
    settings = {key: TINY[key] for key in MODEL_KEYS[model]}
    settings.update({"MAX_ITEM_LIST_LENGTH": 8, "use_gpu": False, **overrides})
    return build_config(model, "Instruments", config_dict={"data_path": str(data_path),
                                                           "checkpoint_dir": str(data_path.parent / "saved"),
                                                           **settings})


def test_the_guard_refuses_file_reads(work):
    with no_file_access_or_training(), pytest.raises(ConstructorSideEffect):
        read_code_column(work / "dataset" / "Instruments" / "Instruments.item", "text_codes")


@pytest.mark.parametrize("model", ["TIGER", "MQL4GRec", "MACRec", "QBert4Rec"])
def test_models_build_from_config_and_dataset_without_files_or_training(work, model):
    config = subset_config(model, work / "dataset")
    ensure_semantic_ids(config)  # QBert4Rec's tokenize stage; nothing for the others
    dataset = create_dataset(config)
    model_class = get_model(model)
    with no_file_access_or_training():
        built = model_class(config, dataset)
    assert built.n_items == dataset.item_num and sum(p.numel() for p in built.parameters()) > 0


# (c) The tokenize stage: reused across runs, rebuilt when its inputs change, kept apart from the tokenizer's codes

@pytest.fixture
def stage_data(work, tmp_path, amazon_dir) -> Path:
    """A copy of the subset's atomic files, and ``text.npy``: its text-code proxy features, one row per item id."""
    shutil.copytree(work / "dataset" / "Instruments", tmp_path / "dataset" / "Instruments",
                    ignore=shutil.ignore_patterns("*.sid*"))
    tokens = read_code_column(tmp_path / "dataset" / "Instruments" / "Instruments.item", "text_codes")
    features = code_file_features(amazon_dir / "Instruments" / "Instruments.index_lemb.json")
    np.save(tmp_path / "text.npy", features[: max(map(int, tokens)) + 1])
    return tmp_path


def stage_output(folder: Path) -> tuple[Path, Path]:
    sid_file = sid_path(folder / "dataset" / "Instruments", "Instruments", "QBert4Rec")
    return sid_file, sid_metadata_path(sid_file)


def test_stage_output_is_reused_until_a_setting_changes(stage_data, caplog):
    caplog.set_level(logging.INFO)
    config = subset_config("QBert4Rec", stage_data / "dataset")
    sid_file, metadata = stage_output(stage_data)
    assert ensure_semantic_ids(config) and "are missing" in caplog.text
    written = (sid_file.stat().st_mtime_ns, metadata.stat().st_mtime_ns)
    key = json.loads(metadata.read_text())["key"]

    caplog.clear()
    assert not ensure_semantic_ids(subset_config("QBert4Rec", stage_data / "dataset"))
    assert "are up to date" in caplog.text and "running" not in caplog.text
    assert (sid_file.stat().st_mtime_ns, metadata.stat().st_mtime_ns) == written

    caplog.clear()  # another seed with the stage's seed fixed: stage 3 alone changes, the codes are shared
    assert not ensure_semantic_ids(subset_config("QBert4Rec", stage_data / "dataset", seed=config["seed"] + 1,
                                                 sid_seed=config["seed"]))
    assert "are up to date" in caplog.text and (sid_file.stat().st_mtime_ns, metadata.stat().st_mtime_ns) == written
    caplog.clear()  # another seed without sid_seed: the run's seed seeds the stage
    assert ensure_semantic_ids(subset_config("QBert4Rec", stage_data / "dataset", seed=config["seed"] + 1))
    assert "are stale" in caplog.text and json.loads(metadata.read_text())["settings"]["seed"] == config["seed"] + 1

    caplog.clear()
    assert ensure_semantic_ids(subset_config("QBert4Rec", stage_data / "dataset", sid_epochs=4))
    assert "are stale" in caplog.text
    assert json.loads(metadata.read_text())["key"] != key and json.loads(metadata.read_text())["settings"]["sid_epochs"] == 4


def test_a_stage_seen_before_is_restored_from_its_cache_not_rerun(stage_data, caplog):
    """The domains' files hold one stage key at a time; runs of other settings (or targets) in between must not make
    a configuration that already ran its stage run it again."""
    caplog.set_level(logging.INFO)
    config = subset_config("QBert4Rec", stage_data / "dataset")
    sid_file, metadata = stage_output(stage_data)
    assert ensure_semantic_ids(config)
    first = (sid_file.read_bytes(), json.loads(metadata.read_text()))
    other = subset_config("QBert4Rec", stage_data / "dataset", seed=config["seed"] + 1)
    assert ensure_semantic_ids(other) and sid_file.read_bytes() != first[0]

    caplog.clear()
    assert not ensure_semantic_ids(subset_config("QBert4Rec", stage_data / "dataset"))
    assert "are stale" in caplog.text and "restored from" in caplog.text and "running" not in caplog.text
    assert (sid_file.read_bytes(), json.loads(metadata.read_text())) == first

    cache = sid_file.parent / "stage_cache" / "QBert4Rec" / first[1]["key"]
    (cache / metadata.name).unlink()  # an incomplete cache entry is not used
    caplog.clear()
    assert not ensure_semantic_ids(other) and ensure_semantic_ids(config)  # other's entry restored, config's rerun
    assert "restored from" in caplog.text and "running the tokenize stage" in caplog.text
    assert json.loads(metadata.read_text())["key"] == first[1]["key"] and (cache / metadata.name).is_file()


def test_a_run_records_the_stage_report_of_the_codes_it_read(stage_data):
    """Runs on one data_path take turns at the stage, so another run's stage may rewrite the code files after this
    run read them: its record keeps the key, collisions and content of the codes it trained on."""
    config = subset_config("QBert4Rec", stage_data / "dataset")
    ensure_semantic_ids(config)
    dataset = create_dataset(config)
    read = dict(dataset.sid_report)
    ensure_semantic_ids(subset_config("QBert4Rec", stage_data / "dataset", seed=config["seed"] + 1))  # another run's
    _, metadata = stage_output(stage_data)
    assert json.loads(metadata.read_text())["key"] != read["key"]
    figures = code_table_quality(config, dataset)["sid"]
    assert figures["tokenizer_hash"] == read["key"] and figures["collision_rate_before"] == read["collision_rate_before"]


def test_stage_output_is_rebuilt_when_a_feature_value_changes(stage_data, caplog):
    caplog.set_level(logging.INFO)
    features = stage_data / "text.npy"
    config = subset_config("QBert4Rec", stage_data / "dataset", modalities=["text"], text_feature_file=str(features))
    _, metadata = stage_output(stage_data)
    assert ensure_semantic_ids(config)
    recorded = json.loads(metadata.read_text())
    assert not ensure_semantic_ids(config)

    matrix = np.load(features)
    matrix[1, 0] += 1.0  # one value of item 1's features
    np.save(features, matrix)
    caplog.clear()
    assert ensure_semantic_ids(config) and "are stale" in caplog.text
    rebuilt = json.loads(metadata.read_text())
    assert rebuilt["data_fingerprint"] != recorded["data_fingerprint"] and rebuilt["settings"] == recorded["settings"]
    assert rebuilt["code_version"] == recorded["code_version"] and rebuilt["collision_rate_after"] == 0.0
    assert sum(rebuilt["domains"]["Instruments"]["depth_histogram"]) == rebuilt["items"]["Instruments"]


def test_the_command_line_stage_writes_what_the_entry_point_reuses(stage_data, capsys, caplog):
    caplog.set_level(logging.INFO)
    settings = [f"--{key}={TINY[key]}" for key in MODEL_KEYS["QBert4Rec"]]
    tokenize_main(["--model", "QBert4Rec", "--dataset", "Instruments", f"--data_path={stage_data / 'dataset'}",
                   "--use_gpu=False", "--allow_data_mismatch=True", *settings])
    assert "-> 0.00%" in capsys.readouterr().out  # no collisions left
    sid_file, metadata = stage_output(stage_data)
    assert sid_file.is_file() and json.loads(metadata.read_text())["stage"] == "QBert4Rec"
    assert not ensure_semantic_ids(subset_config("QBert4Rec", stage_data / "dataset"))
    assert "are up to date" in caplog.text


def test_the_stage_and_the_tokenizer_keep_their_codes_apart(stage_data):
    folder = stage_data / "dataset" / "Instruments"
    settings = parse_overrides(["levels=2", "codebook_size=16", "code_dim=8", "hidden_dims=[32]", "epochs=1",
                                "quantizers=per_modality", "collision_strategy=append_level"])
    tokenize_dataset("Instruments", [stage_data / "text.npy"], load_tokenizer_config(DEFAULT_CONFIG, settings),
                     stage_data / "dataset", "cpu")  # MMESID's <dataset>.sid, .sid.npz and .sid.json
    tokenizer_files = [folder / name for name in ("Instruments.sid", "Instruments.sid.json", "Instruments.sid.npz")]
    written = [path.read_bytes() for path in tokenizer_files]

    qbert4rec = subset_config("QBert4Rec", stage_data / "dataset")
    assert ensure_semantic_ids(qbert4rec)
    assert [path.read_bytes() for path in tokenizer_files] == written
    stage_file, _ = stage_output(stage_data)
    qbert4rec_dataset = create_dataset(qbert4rec)
    assert torch.equal(qbert4rec_dataset.code_tables["sid"], load_code_table(qbert4rec_dataset, stage_file, "sid", 0))
    assert qbert4rec_dataset.code_tables["sid"].shape[1] == TINY["sid_levels"]
    assert qbert4rec_dataset.sid_report["stage"] == "QBert4Rec"

    tiger_dataset = create_dataset(subset_config("TIGER", stage_data / "dataset", sid_source="file"))
    assert torch.equal(tiger_dataset.code_tables["sid"], load_code_table(tiger_dataset, tokenizer_files[0], "sid", 0))
    assert tiger_dataset.code_tables["sid"].shape[1] == 3  # 2 levels per modality of one, plus the appended level
    # sid_producer: ~ (QBert4Rec on the tokenizer's codes): its stage does not run, though its settings changed
    assert not ensure_semantic_ids(subset_config("QBert4Rec", stage_data / "dataset", sid_producer=None, sid_epochs=4))
