"""Validate a dataset's atomic files before RecBole reads them, and fingerprint them.

:func:`check_dataset` reads each atomic file (``<name>.inter``, ``<name>.item``, ``<name>.user``) once and
stops at the first problem with one line naming the file and line: a header column without a type, a column
the config loads but the header lacks, a row with missing or extra fields, a last line cut off (no final
newline), a value of a ``float`` / ``float_seq`` column that is not a finite number, an item token that is not
an integer id where feature rows are indexed by it, a second ``.item`` row for an item (``.user`` row for a
user, ``.inter`` row for a user, item and time), a user with too few interactions for the leave-one-out split, and
``.item`` rows that disagree with the items of ``.inter``.
The fingerprint (sha256 of the files' names and bytes, users, items, interactions) identifies the data a result
was computed on; the bundled dataset YAMLs carry the expected counts (``expected_counts``), and a mismatch is an
error unless ``allow_data_mismatch`` is True.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recbole_qrec.data.atomic_files import (
    MIN_USER_INTERACTIONS, atomic_file, check_item_features, data_root, decode_text, ensure_atomic_files, parse_header,
    shown_path,
)
from recbole_qrec.data.features import format_ids
from recbole_qrec.errors import ConfigError, DataMismatchError, MalformedDataError

if TYPE_CHECKING:
    from recbole.config import Config

ATOMIC_SUFFIXES = ("inter", "item", "user")
COUNT_KEYS = ("users", "items", "interactions")
NUMERIC_TYPES = ("float", "float_seq")
FEATURE_FILE_KEYS = ("text_feature_file", "image_feature_file")
FIX_CONVERT = "re-create the file with `python -m dataset_prep.convert` or correct it by hand"


@dataclass
class AtomicTable:
    """What one pass over an atomic file keeps: its columns, row count and how often each value of selected columns
    occurs."""

    path: Path
    columns: list[str]
    rows: int = 0
    values: dict[str, Counter[str]] = field(default_factory=dict)


def float_problem(value: str) -> str | None:
    """Why ``value`` is not a finite number, or None when it is one."""
    try:
        number = float(value)
    except ValueError:
        return "is not a number" if value else "is empty"
    return None if math.isfinite(number) else "is not finite (NaN or infinity)"


def check_value(path: Path, number: int, name: str, kind: str, value: str, seq_separator: str) -> None:
    """A ``float`` value, or every element of a ``float_seq`` value, must be a finite number."""
    for element in value.split(seq_separator) if kind == "float_seq" else [value]:
        problem = float_problem(element)
        if problem:
            raise MalformedDataError(f"{path} line {number}: {name} value {element!r} {problem}, but the header declares "
                                     f"{name}:{kind} — {FIX_CONVERT} (numeric columns hold finite numbers)")


def check_integer_tokens(path: Path, number: int, name: str, value: str) -> None:
    if not value.isdigit():
        raise MalformedDataError(f"{path} line {number}: {name} {value!r} is not an integer id, but feature files are "
                                 "indexed by item id (text_feature_file / image_feature_file) — number the items 0..n-1 "
                                 "as `python -m dataset_prep.convert` does")


def scan_atomic_file(path: Path, config: Config, required: list[str], collect: list[str], integer_tokens: list[str],
                     key: list[str], sha: Any) -> AtomicTable:
    """Validate ``path`` in one pass, feed its name and bytes to ``sha`` and collect the values of ``collect``; no two
    rows may have the same values of the ``key`` columns (when the header has them all)."""
    separator, seq_separator = config["field_separator"], config["seq_separator"]
    data = path.read_bytes()
    sha.update(f"{path.name}\0{len(data)}\0".encode())
    sha.update(data)
    encoding = config["encoding"] or "utf-8"  # RecBole reads with pandas' default, UTF-8, when unset
    text = decode_text(path, data, encoding, " (or set encoding)")
    if not text.strip():
        raise MalformedDataError(f"{path} is empty — it needs a header line (e.g. user_id:token<TAB>item_id:token"
                                 f"<TAB>timestamp:float) and one row per record; {FIX_CONVERT}")
    lines = text.split("\n")
    if lines[-1]:
        raise MalformedDataError(f"{path} line {len(lines)}: the file ends without a newline, so its last row may be "
                                 f"cut off (truncated copy?) — {FIX_CONVERT}, or add the final newline if the row is whole")
    header = parse_header(lines[0], path, separator)
    check_key_types(path, header, config)
    columns = [name for name, _ in header]
    absent = [name for name in required if name not in columns]
    if absent:
        raise MalformedDataError(f"{path} line 1: the header has columns {columns} but the config loads {absent} "
                                 "(load_col, USER_ID_FIELD / ITEM_ID_FIELD / TIME_FIELD, item_content_fields) — add the "
                                 f"column(s) to the file, or change the config; {FIX_CONVERT}")
    width = len(columns)
    numeric = [(index, name, kind) for index, (name, kind) in enumerate(header) if kind in NUMERIC_TYPES]
    integer = [(columns.index(name), name) for name in integer_tokens]
    table = AtomicTable(path, columns, values={name: Counter() for name in collect})
    collected = [(columns.index(name), table.values[name]) for name in collect]
    key_columns = [columns.index(name) for name in key] if all(name in columns for name in key) else []
    keys = RowKeys(path, lines, separator, columns, key_columns)
    try:
        for number, line in enumerate(lines[1:-1], start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\r").split(separator)
            if len(fields) != width:
                raise MalformedDataError(f"{path} line {number}: {len(fields)} fields, but the header has {width} "
                                         f"({', '.join(columns)}) — every row needs one value per column, separated "
                                         f"by {separator!r}; {FIX_CONVERT}")
            for index, name, kind in numeric:
                value = fields[index]
                if kind == "float_seq" or float_problem(value):
                    check_value(path, number, name, kind, value, seq_separator)
            for index, name in integer:
                check_integer_tokens(path, number, name, fields[index])
            for index, values in collected:
                if not fields[index]:
                    raise MalformedDataError(f"{path} line {number}: {columns[index]} is empty — every row needs its "
                                             f"{columns[index]}; {FIX_CONVERT}")
                values[fields[index]] += 1
            if key_columns:
                keys.add(number, fields)
            table.rows += 1
    except MalformedDataError:
        keys.check_unique()  # a repeated row before the bad line is the first problem
        raise
    keys.check_unique()
    return table


def check_key_types(path: Path, header: list[tuple[str, str]], config: Config) -> None:
    """The user and item columns must be ``token`` (RecBole maps them to ids) and the time column ``float`` (the
    leave-one-out split orders each user's interactions by it)."""
    wanted = {config["USER_ID_FIELD"]: "token", config["ITEM_ID_FIELD"]: "token", config["TIME_FIELD"]: "float"}
    for name, kind in header:
        if wanted.get(name, kind) != kind:
            raise MalformedDataError(f"{path} line 1: the header declares {name}:{kind}, but RecBole reads {name} as "
                                     f"{wanted[name]} — write {name}:{wanted[name]} in the header")


class RowKeys:
    """The key (column values) of each row of an atomic file, kept as one 64-bit hash and line number per row so
    that millions of rows fit in a few bytes each; :meth:`check_unique` confirms a repeated hash against the rows'
    text before it reports a repeated row."""

    def __init__(self, path: Path, lines: list[str], separator: str, columns: list[str], indices: list[int]) -> None:
        self.path, self.lines, self.separator, self.indices = path, lines, separator, indices
        self.names = [columns[index] for index in indices]
        self.hashes, self.numbers = array("q"), array("q")

    def add(self, number: int, fields: list[str]) -> None:
        """Record the key of line ``number``, split into ``fields``."""
        self.hashes.append(hash(tuple(fields[index] for index in self.indices)))
        self.numbers.append(number)

    def key(self, number: int) -> tuple[str, ...]:
        fields = self.lines[number - 1].rstrip("\r").split(self.separator)
        return tuple(fields[index] for index in self.indices)

    def check_unique(self) -> None:
        """No two rows added so far may have the same key; the error names the first row that repeats an earlier
        one and that earlier row's line."""
        hashes = np.array(self.hashes, dtype=np.int64)
        ordered = np.sort(hashes)
        repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        if not repeated.size:
            return
        first_lines: dict[tuple[str, ...], int] = {}
        for position in np.flatnonzero(np.isin(hashes, repeated)):  # rows sharing a hash, in file order
            number = self.numbers[position]
            key = self.key(number)
            first = first_lines.setdefault(key, number)
            if first != number:
                shown = ", ".join(f"{name} {value!r}" for name, value in zip(self.names, key))
                raise MalformedDataError(f"{self.path} line {number}: a second row for {shown} (first on line {first})"
                                         f" — keep one row per {', '.join(self.names)}; {FIX_CONVERT}")


def row_key(config: Config, suffix: str) -> list[str]:
    """Columns whose values identify one row of ``<dataset>.<suffix>``: the item of ``.item``, the user of ``.user``,
    and the user, item and time of ``.inter`` unless ``rm_dup_inter`` asks RecBole to drop repeated interactions."""
    if suffix == "inter":
        return [] if config["rm_dup_inter"] else [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["TIME_FIELD"]]
    return [config["ITEM_ID_FIELD"] if suffix == "item" else config["USER_ID_FIELD"]]


def loaded_columns(config: Config, suffix: str) -> list[str] | None:
    """Columns RecBole loads from ``<dataset>.<suffix>`` (``load_col``), [] when it skips the file, None for all."""
    load_col = config["load_col"]
    if load_col is None:
        return None
    return list(load_col.get(suffix) or [])


def required_columns(config: Config, suffix: str, content_fields: list[str]) -> list[str]:
    """Columns ``<dataset>.<suffix>`` must have for this config."""
    loaded = loaded_columns(config, suffix)
    if suffix == "inter":
        keys = [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]]
        return list(dict.fromkeys(keys + (loaded or [])))
    if suffix == "item":
        return list(dict.fromkeys([config["ITEM_ID_FIELD"], *(loaded or []), *content_fields]))
    return list(dict.fromkeys([config["USER_ID_FIELD"], *(loaded or [])]))


def reads_feature_rows(config: Config) -> bool:
    """Whether the model indexes ``.npy`` feature rows by item id (needs integer item tokens)."""
    return any(config[key] for key in FEATURE_FILE_KEYS)


def check_item_file(config: Config, inter: AtomicTable, item: AtomicTable, content_fields: list[str]) -> None:
    """With content fields, ``.item`` rows must cover the items of ``.inter``, and rows for items ``.inter`` never
    mentions are only allowed when RecBole loads ``.item`` (cold-start items of the catalogue)."""
    item_field = config["ITEM_ID_FIELD"]
    if not content_fields:
        return
    inter_items, item_items = inter.values[item_field].keys(), item.values[item_field].keys()
    without_row = sorted(inter_items - item_items)
    if without_row:
        raise MalformedDataError(f"{item.path} has no row for {len(without_row):,} item(s) of {inter.path.name} "
                                 f"(e.g. {format_ids(without_row)}), whose content ({', '.join(content_fields)}) the "
                                 f"models read — give every item a row (empty codes for an item without content); "
                                 f"{FIX_CONVERT}")
    loaded = loaded_columns(config, "item")
    unknown = sorted(item_items - inter_items)
    if unknown and loaded is not None and not loaded:
        raise MalformedDataError(f"{item.path} has rows for {len(unknown):,} item(s) that {inter.path.name} never "
                                 f"mentions (e.g. {format_ids(unknown)}) — remove them (a model loading .item as its "
                                 "catalogue, load_col: {item: [item_id]}, keeps them as cold-start items); " + FIX_CONVERT)


def check_sequence_lengths(config: Config, inter: AtomicTable) -> None:
    """Under the time-ordered leave-one-out split (and no ``user_inter_num_interval`` filter) every user needs a
    training, a validation and a test interaction: RecBole would train on a shorter user's and never evaluate it."""
    if config["eval_args"]["split"] != {"LS": "valid_and_test"} or config["user_inter_num_interval"] != "[0,inf)":
        return
    short = sorted(user for user, count in inter.values[config["USER_ID_FIELD"]].items() if count < MIN_USER_INTERACTIONS)
    if short:
        raise MalformedDataError(f"{inter.path}: {len(short):,} user(s) have fewer than {MIN_USER_INTERACTIONS} "
                                 f"interactions (e.g. {format_ids(short)}), too few for the leave-one-out split's "
                                 "training, validation and test interaction, so RecBole would never evaluate them — "
                                 "remove those users (e.g. keep a 5-core), or pass "
                                 f"--user_inter_num_interval='[{MIN_USER_INTERACTIONS},inf)' to let RecBole drop them")


def check_expected_counts(config: Config, counts: dict[str, int]) -> bool:
    """Whether ``counts`` equal the dataset's ``expected_counts`` (True without any); a mismatch raises
    :class:`DataMismatchError` unless ``allow_data_mismatch``, which logs a warning instead."""
    expected = config["expected_counts"]
    if expected is None:
        return True
    if not isinstance(expected, dict) or sorted(expected) != sorted(COUNT_KEYS):
        raise ConfigError(f"expected_counts must map {', '.join(COUNT_KEYS)} to numbers, got {expected!r} — "
                          "e.g. expected_counts: {users: 17112, items: 6250, interactions: 136226}")
    if all(counts[key] == expected[key] for key in COUNT_KEYS):
        return True
    name = config["dataset"]
    found = ", ".join(f"{counts[key]:,} {key}" for key in COUNT_KEYS)
    wanted = ", ".join(f"{expected[key]:,} {key}" for key in COUNT_KEYS)
    what = (f"dataset {name} in {shown_path(data_root(config) / name)} has {found}, but its expected_counts "
            f"(properties/dataset/{name}.yaml) are {wanted}")
    if config["allow_data_mismatch"] is not True:
        raise DataMismatchError(
            f"{what} — re-convert the full dataset with `python -m dataset_prep.convert --dataset {name} --src DIR "
            f"--out {shown_path(data_root(config))}`, or pass --allow_data_mismatch=True to run on these files anyway "
            "(the result records expected_counts_match: false)"
        )
    getLogger().warning(f"{what}; running anyway (allow_data_mismatch=True): the result records expected_counts_match: false")
    return False


def check_dataset(config: Config) -> dict[str, Any]:
    """Validate the dataset's atomic files, set ``item_content_fields`` when no YAML declares them, and return the
    fingerprint ``{sha256, users, items, interactions, files, expected_counts_match}`` (also ``config["data_fingerprint"]``).
    """
    check_item_features(config)
    ensure_atomic_files(config)
    content_fields = list(config["item_content_fields"])
    user_field, item_field = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    integer_items = [item_field] if reads_feature_rows(config) else []
    collect = {"inter": [user_field, item_field], "item": [item_field], "user": [user_field]}
    sha = hashlib.sha256()
    tables: dict[str, AtomicTable] = {}
    for suffix in ATOMIC_SUFFIXES:
        path = atomic_file(config, suffix)
        if path.is_file():
            integer = integer_items if suffix in ("inter", "item") else []
            tables[suffix] = scan_atomic_file(path, config, required_columns(config, suffix, content_fields),
                                              collect[suffix], integer, row_key(config, suffix), sha)
        elif suffix == "item" and content_fields:
            raise MalformedDataError(f"{path} not found, but item_content_fields are {content_fields} — convert the "
                                     "dataset with its code files (`python -m dataset_prep.convert`) or set "
                                     "item_content_fields: []")
    inter = tables["inter"]
    if not inter.rows:
        raise MalformedDataError(f"{inter.path} has a header but no interactions — {FIX_CONVERT}")
    counts = {"users": len(inter.values[user_field]), "items": len(inter.values[item_field]), "interactions": inter.rows}
    counts_match = check_expected_counts(config, counts)  # first: a cut-off copy is best told by its counts
    if "item" in tables:
        check_item_file(config, inter, tables["item"], content_fields)
    check_sequence_lengths(config, inter)
    fingerprint = {
        "sha256": sha.hexdigest(),
        **counts,
        "files": [table.path.name for table in tables.values()],
        "expected_counts_match": counts_match,
    }
    config["data_fingerprint"] = fingerprint
    return fingerprint
