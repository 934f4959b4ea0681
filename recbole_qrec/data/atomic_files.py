"""Find a dataset's RecBole atomic files and declare its item content fields before ``create_dataset`` reads them.

Atomic files are written by ``python -m dataset_prep.convert`` (or by hand): ``<data_path>/<name>/<name>.inter``
and, for datasets with content, ``<name>.item`` whose ``token_seq`` columns ending in ``_codes`` hold
semantic codes (``text_codes``, ``image_codes``) and whose ``float_seq`` columns hold feature vectors.
Nothing here converts or writes anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from recbole_qrec.errors import ConfigError, DatasetNotFoundError, MalformedDataError

if TYPE_CHECKING:
    from recbole.config import Config

CODE_FIELD_SUFFIX = "_codes"
COLUMN_TYPES = ("token", "token_seq", "float", "float_seq")
# One training target, one validation target and the test target: with fewer, RecBole's leave-one-out would put a
# user's last (possibly cold) item into training, or never evaluate the user.
MIN_USER_INTERACTIONS = 3


def dataset_folder(config: Config) -> Path:
    """``<data_path>/<dataset>`` (RecBole's ``Config`` already joins the two into ``data_path``)."""
    return Path(config["data_path"])


def data_root(config: Config) -> Path:
    """The ``data_path`` the user gave: the folder holding one sub-folder per dataset."""
    return dataset_folder(config).parent


def shown_path(path: Path) -> str:
    """A folder as users type it, with a trailing slash: ``dataset/``."""
    return path.as_posix().rstrip("/") + "/"


def atomic_file(config: Config, suffix: str) -> Path:
    """``<data_path>/<dataset>/<dataset>.<suffix>``."""
    return dataset_folder(config) / f"{config['dataset']}.{suffix}"


def available_datasets(data_path: str | Path) -> list[str]:
    """Sorted names of the datasets under ``data_path``: sub-folders ``<name>/`` that hold ``<name>.inter``."""
    root = Path(data_path)
    if not root.is_dir():
        return []
    return sorted(folder.name for folder in root.iterdir() if (folder / f"{folder.name}.inter").is_file())


def require_inter_file(data_path: str | Path, dataset: str) -> Path:
    """``<data_path>/<dataset>/<dataset>.inter``; :class:`DatasetNotFoundError` listing the datasets found otherwise."""
    inter_file = Path(data_path) / dataset / f"{dataset}.inter"
    if not inter_file.is_file():
        root = shown_path(Path(data_path))
        found = ", ".join(available_datasets(data_path)) or "none"
        raise DatasetNotFoundError(
            f"dataset '{dataset}' not found under data_path '{root}' (found: {found}) — convert it with "
            f"`python -m dataset_prep.convert --dataset {dataset} --src DIR --out {root}` or pass --data_path"
        )
    return inter_file


def ensure_atomic_files(config: Config) -> Path:
    """Return ``<data_path>/<dataset>/<dataset>.inter``; :class:`DatasetNotFoundError` when it does not exist."""
    return require_inter_file(data_root(config), config["dataset"])


def item_tokens(data_path: str | Path, dataset: str, separator: str = "\t") -> list[str]:
    """The distinct item tokens of ``<dataset>.inter`` and, when present, ``<dataset>.item``."""
    inter_file = require_inter_file(data_path, dataset)
    tokens: set[str] = set()
    for path in (inter_file, inter_file.with_suffix(".item")):
        if path.is_file():
            tokens |= column_values(path, "item_id", separator)
    return sorted(tokens)


def decode_text(path: Path, data: bytes, encoding: str = "utf-8", fix: str = "") -> str:
    """``data``, the bytes (or the first bytes) of ``path``, as text; :class:`MalformedDataError` naming the line of
    the first byte that is not ``encoding`` text or a byte-order mark, which RecBole reads as part of the first column's
    name. ``fix`` follows the way out of a wrong encoding."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise MalformedDataError(f"{path} line {line}: bytes that are not {encoding} text — save the file as "
                                 f"{encoding}{fix}") from err
    if text.startswith("\ufeff"):
        raise MalformedDataError(f"{path} line 1: the file starts with a byte-order mark (BOM), which RecBole reads as "
                                 f"part of the first column's name — save it as {encoding} without BOM")
    return text


def column_values(path: Path, name: str, separator: str) -> set[str]:
    """The distinct values of column ``name`` of an atomic file."""
    columns = [column for column, _ in read_header(path, separator)]
    if name not in columns:
        raise MalformedDataError(f"{path} line 1: the header has columns {columns}, no {name} — add the column")
    index, values = columns.index(name), set()
    for number, line in enumerate(decode_text(path, path.read_bytes()).split("\n")[1:], start=2):
        fields = line.rstrip("\r").split(separator)
        if len(fields) != len(columns) and line.strip():
            raise MalformedDataError(f"{path} line {number}: {len(fields)} fields, but the header has {len(columns)} "
                                     "— every row needs one value per column")
        if line.strip():
            values.add(fields[index])
    return values


def parse_header(line: str, path: Path, separator: str) -> list[tuple[str, str]]:
    """``(name, type)`` of each column of an atomic file's header ``line`` (``item_id:token``)."""
    line = line.rstrip("\r\n")
    columns = [column.split(":", 1) for column in line.split(separator)]
    if not line or any(len(column) != 2 for column in columns):
        raise MalformedDataError(f"{path} line 1: header {line!r} does not name every column as name:type — write it "
                                 f"like item_id:token<TAB>text_codes:token_seq (types: {', '.join(COLUMN_TYPES)})")
    for name, kind in columns:
        if kind not in COLUMN_TYPES:
            raise MalformedDataError(f"{path} line 1: column {name!r} has type {kind!r}, which RecBole does not read — "
                                     f"declare it as one of {', '.join(COLUMN_TYPES)}")
    return [(name, kind) for name, kind in columns]


def read_header(path: Path, separator: str) -> list[tuple[str, str]]:
    """The parsed header line of the atomic file ``path``."""
    with open(path, "rb") as handle:
        return parse_header(decode_text(path, handle.readline()), path, separator)


def detect_item_content_fields(item_file: Path, separator: str) -> list[str]:
    """Content fields of a ``.item`` header: ``token_seq`` columns named ``*_codes`` and ``float_seq`` columns."""
    return [name for name, kind in read_header(item_file, separator)
            if (kind == "token_seq" and name.endswith(CODE_FIELD_SUFFIX)) or kind == "float_seq"]


def resolve_item_content_fields(config: Config) -> list[str]:
    """``item_content_fields`` of the config; when no YAML declares them, read from the ``.item`` header and set."""
    if config["item_content_fields"] is None:
        ensure_atomic_files(config)
        item_file = atomic_file(config, "item")
        detected = detect_item_content_fields(item_file, config["field_separator"]) if item_file.is_file() else []
        config["item_content_fields"] = detected
    return config["item_content_fields"]


def check_item_features(config: Config) -> None:
    """Fail early when a model's ``selected_features`` are not item content fields of the dataset."""
    wanted = config["selected_features"] or []
    available = resolve_item_content_fields(config)
    missing = [field for field in wanted if field not in available]
    if missing:
        raise ConfigError(
            f"{config['model']} reads item features {missing} (selected_features), but dataset "
            f"{config['dataset']} has {available or 'no item content features'} (item_content_fields, from "
            f"properties/dataset/{config['dataset']}.yaml or the {config['dataset']}.item header) — choose a dataset "
            f"with content codes, or set --selected_features to one of {available}"
        )
