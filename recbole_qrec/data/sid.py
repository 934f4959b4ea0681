"""Semantic-ID code tables aligned with RecBole's internal item ids.

Codes live in RecBole atomic-file format, one ``token_seq`` column of level tokens per item
(``a_12 b_7 c_201 d_3``: level letter, underscore, code index). They come from a code file of one producer
(:func:`sid_path`): ``<dataset>.sid``, written by the tokenizer (``python -m recbole_qrec.tokenize``), or
``<dataset>.<Model>.sid``, written by a model's own tokenize stage (QBert4Rec's), so that neither overwrites the
other; config ``sid_producer`` says whose file a model reads as its ``sid`` field (:func:`check_sid_producer`).
Or they are the content codes that ``dataset_prep.convert`` puts into ``<dataset>.item`` (``text_codes``,
``image_codes``).

:func:`load_code_table` returns a ``LongTensor[n_items, L]`` whose row ``i`` holds the codes of
RecBole's internal item id ``i``; row 0 (RecBole's padding item) holds ``pad_code`` at every level.
:class:`~recbole_qrec.data.dataset.SemanticIdDataset` reads the tables a model needs with it (``code_tables``);
:func:`item_code_table` picks a model's table from them, made unique with TIGER's extra level for content codes.
:func:`write_sid_file` writes a producer's codes; its metadata goes beside them (:func:`sid_metadata_path`).
"""

from __future__ import annotations

import csv
import io
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from torch import Tensor

from recbole_qrec.data.atomic_files import decode_text
from recbole_qrec.data.features import format_ids
from recbole_qrec.errors import ConfigError, MalformedDataError, checked_choice
from recbole_qrec.fileio import atomic_open
from recbole_qrec.quantization import append_level

SID_SUFFIX = "sid"
SID_FIELD = "sid"
SID_FILE = "file"  # the value of a ``*sid_source`` key that names the code file of ``sid_producer``
# Models whose own tokenize stage writes <dataset>.<Model>.sid: the values of ``sid_producer`` besides null.
SID_PRODUCERS = ("QBert4Rec", "MMESID")


CODE_TOKEN = re.compile(r"([A-Za-z])_(\d+)")
TOKEN_FORM = "'a_12 b_7 c_201 d_3' (level letter, underscore, code)"
# Codes index a codebook per level; one larger than this and than the catalogue is taken for a typo (a model would size
# its vocabulary by it).
MAX_PLAUSIBLE_CODE = 1023


def source_field(source: str) -> str:
    """The dataset field a semantic-ID source names: ``sid`` for :data:`SID_FILE` (the code file of ``sid_producer``),
    else the content-code field of that name."""
    return SID_FIELD if source == SID_FILE else source


def parse_code_tokens(tokens: str) -> list[int]:
    """``"a_12 b_7"`` -> ``[12, 7]``; ValueError naming the first token of another form or out of level order (the
    i-th token's letter is the i-th of the alphabet, either case)."""
    codes = []
    for level, token in enumerate(tokens.split()):
        match = CODE_TOKEN.fullmatch(token)
        if match is None:
            raise ValueError(f"token {token!r} is not of the form {TOKEN_FORM}")
        letter = string.ascii_lowercase[level] if level < len(string.ascii_lowercase) else None
        if match.group(1).lower() != letter:
            raise ValueError(f"token {token!r} stands at level {level + 1}, whose letter is {letter!r}: the levels "
                             "go a, b, c, ... in order")
        codes.append(int(match.group(2)))
    return codes


def read_code_column(path: Path, field: str) -> dict[str, list[int]]:
    """``item token -> codes`` from the ``<field>:token_seq`` column of an atomic file (items with empty codes left out)."""
    if not path.is_file():
        raise MalformedDataError(
            f"{path} does not exist — create semantic IDs with `python -m recbole_qrec.tokenize`, "
            "or convert the dataset with `python -m dataset_prep.convert`"
        )
    rows = csv.reader(io.StringIO(decode_text(path, path.read_bytes()), newline=""), delimiter="\t")
    header = [name.split(":")[0] for name in next(rows, [])]
    if field not in header or "item_id" not in header:
        raise MalformedDataError(f"{path} line 1: columns {header} lack item_id or {field} — re-create the file "
                                 f"with a header like item_id:token<TAB>{field}:token_seq")
    item_col, code_col = header.index("item_id"), header.index(field)
    codes: dict[str, list[int]] = {}
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise MalformedDataError(f"{path} line {number}: {len(row)} fields, the header has {len(header)} — "
                                     "re-create the file (one tab-separated value per column)")
        item = row[item_col]
        if item in codes:
            raise MalformedDataError(f"{path} line {number}: a second row for item {item!r} — keep one row per item")
        try:
            if row[code_col]:
                codes[item] = parse_code_tokens(row[code_col])
        except ValueError as err:
            raise MalformedDataError(f"{path} line {number}: {field} {err} — re-create the file with "
                                     "`python -m recbole_qrec.tokenize` or `python -m dataset_prep.convert`") from err
    return codes


def load_code_table(dataset: Dataset, path: str | Path, field: str, pad_code: int) -> torch.LongTensor:
    """Codes of every item of ``dataset`` in internal-id order; row 0 is the padding item.

    The file must hold exactly the dataset's items: a missing item or a row for an item the dataset does not
    have (codes of another dataset or version) is a :class:`MalformedDataError`.
    """
    codes = read_code_column(Path(path), field)
    tokens = dataset.field2id_token[dataset.iid_field]
    missing = [token for token in tokens[1:] if token not in codes]
    if missing:
        raise MalformedDataError(f"{path}: {len(missing)} items have no {field} (e.g. {format_ids(missing)}) — re-create the file "
                                 f"for dataset {dataset.dataset_name} (`python -m recbole_qrec.tokenize`)")
    extra = sorted(set(codes) - set(tokens[1:]))
    if extra:
        raise MalformedDataError(f"{path}: {len(extra)} row(s) for items that dataset {dataset.dataset_name} does not have "
                                 f"(e.g. {format_ids(extra)}) — the codes belong to other data: re-create the file for this dataset "
                                 "(`python -m recbole_qrec.tokenize`)")
    levels = {len(codes[token]) for token in tokens[1:]}
    if len(levels) != 1:
        raise MalformedDataError(f"{path}: items have different numbers of code levels {sorted(levels)} — every item "
                                 "needs the same number of levels")
    largest = max(codes.items(), key=lambda item: max(item[1]))
    if max(largest[1]) > max(MAX_PLAUSIBLE_CODE, len(tokens) - 1):
        raise MalformedDataError(f"{path}: item {largest[0]!r} has code {max(largest[1])} in its {field}, more than the "
                                 f"{len(tokens) - 1} items and than {MAX_PLAUSIBLE_CODE + 1} codes per level — a typo? "
                                 "Correct it, or re-create the file (`python -m recbole_qrec.tokenize`)")
    table = torch.full((len(tokens), levels.pop()), pad_code, dtype=torch.long)
    for index, token in enumerate(tokens[1:], start=1):
        table[index] = torch.tensor(codes[token])
    return table


def with_padding_row(values: torch.Tensor) -> torch.Tensor:
    """Prepend a zero row for RecBole's padding item (internal id 0)."""
    return torch.cat([values.new_zeros((1, *values.shape[1:])), values])


def sid_path(folder: str | Path, dataset: str, producer: str | None = None) -> Path:
    """Where ``producer`` writes the semantic IDs of ``dataset`` (``folder`` is the dataset's own folder, RecBole's
    ``data_path``): ``<folder>/<dataset>.sid`` for the tokenizer (``None``), ``<folder>/<dataset>.<producer>.sid``
    for a model's own stage."""
    name = dataset if producer is None else f"{dataset}.{producer}"
    return Path(folder) / f"{name}.{SID_SUFFIX}"


def check_sid_producer(config: Config) -> None:
    """``sid_producer`` is null (the tokenizer's codes) or one of :data:`SID_PRODUCERS`."""
    checked_choice("sid_producer", config["sid_producer"], (None, *SID_PRODUCERS),
                   "~: <dataset>.sid of `python -m recbole_qrec.tokenize`, a model: <dataset>.<Model>.sid of its "
                   f"tokenize stage; e.g. --sid_producer={SID_PRODUCERS[0]}")


def sid_metadata_path(sid_file: Path) -> Path:
    """The metadata JSON beside a ``.sid`` file (``Instruments.sid`` -> ``Instruments.sid.json``)."""
    return sid_file.with_name(f"{sid_file.name}.json")


def sid_embeddings_path(sid_file: Path) -> Path:
    """The quantized embeddings beside a ``.sid`` file (``Instruments.sid`` -> ``Instruments.sid.npz``), written by a
    per-modality tokenizer (``quantizers: per_modality``)."""
    return sid_file.with_name(f"{sid_file.name}.npz")


def write_sid_embeddings(path: Path, item_tokens: Sequence[str], codebooks: np.ndarray, latents: np.ndarray) -> None:
    """Write, atomically, ``items`` (the item tokens), ``codebooks`` ``[M, L, K, d]`` (modality ``m``'s level ``l``)
    and ``latents`` ``[n, M, d]`` (each item's encoder latent per modality, rows in ``item_tokens`` order)."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, items=np.array(item_tokens), codebooks=codebooks.astype(np.float32),
                 latents=latents.astype(np.float32))


def write_per_modality_embeddings(path: Path, item_tokens: Sequence[str], codebooks: np.ndarray, latents: np.ndarray,
                                  modalities: int) -> None:
    """:func:`write_sid_embeddings` for a per-modality tokenizer's ``codebooks`` ``[M * L, K, d]`` (modality-major)
    and ``latents`` ``[n, M * d]``."""
    levels = len(codebooks) // modalities
    write_sid_embeddings(path, item_tokens, codebooks.reshape(modalities, levels, *codebooks.shape[1:]),
                         latents.reshape(len(item_tokens), modalities, -1))


def load_sid_embeddings(dataset: Dataset, path: Path) -> tuple[Tensor, Tensor]:
    """``(codebooks [M, L, K, d], latents [n_items, M, d])`` of :func:`write_sid_embeddings`'s file, the latents in
    ``dataset``'s internal item order (row 0, the padding item, zeros)."""
    if not path.is_file():
        raise MalformedDataError(f"{path} does not exist — write it with the per-modality tokenizer: `python -m "
                                 "recbole_qrec.tokenize --features ... --set quantizers=per_modality "
                                 "collision_strategy=append_level`")
    with np.load(path) as saved:
        rows = {str(item): row for row, item in enumerate(saved["items"])}
        tokens = dataset.field2id_token[dataset.iid_field][1:]
        missing = [token for token in tokens if token not in rows]
        if missing:
            raise MalformedDataError(f"{path}: {len(missing)} items have no embeddings (e.g. {format_ids(missing)}) — "
                                     f"re-create it with the .sid for dataset {dataset.dataset_name}")
        latents = torch.from_numpy(saved["latents"][[rows[token] for token in tokens]])
        return torch.from_numpy(saved["codebooks"]), with_padding_row(latents)


def level_tokens(codes: Sequence[Sequence[int]]) -> list[str]:
    """``[[12, 7], ...]`` -> ``["a_12 b_7", ...]`` (level letters a, b, c, ...)."""
    return [" ".join(f"{letter}_{code}" for letter, code in zip(string.ascii_lowercase, row)) for row in codes]


def write_sid_file(path: Path, item_tokens: Sequence[str], codes: Sequence[Sequence[int]]) -> None:
    """Write ``item_id:token sid:token_seq`` rows, one per item token, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(f"item_id:token\t{SID_FIELD}:token_seq\n")
        handle.writelines(f"{item}\t{tokens}\n" for item, tokens in zip(item_tokens, level_tokens(codes)))


def content_code_table(codes: Tensor) -> Tensor:
    """Content codes ``[n_items, L]`` with TIGER's extra level: unique ``[n_items, L + 1]``, row 0 all zeros."""
    return with_padding_row(torch.from_numpy(append_level(codes[1:].numpy())))


def item_code_table(config: Config, code_tables: Mapping[str, Tensor], key: str = "sid_source",
                    levels: int | None = None, disambiguate: bool = True) -> Tensor:
    """Unique codes ``[n_items, L]`` (row 0, the padding item, all zeros) of the semantic-ID source that config
    ``key`` names, from a dataset's ``code_tables``: the codes of ``sid_producer``'s file for ``file``, else a content
    field's codes with TIGER's extra level.

    For a content field, ``levels`` keeps its first ``levels`` levels (a coarser residual code) before the extra
    level is added, and ``disambiguate=False`` returns the content codes as they are (items may share a tuple).
    """
    source = config[key]
    field = source_field(source)
    if field not in code_tables:
        raise ConfigError(
            f"{key} is {source!r}, which dataset {config['dataset']} does not provide (its item_content_fields: "
            f"{config['item_content_fields'] or []}) — {key} must be '{SID_FILE}' (<dataset>.sid from `python -m "
            "recbole_qrec.tokenize`) or one of its content-code fields"
            + (f", or --{key}=None to leave that language out" if key.endswith("_sid_source") else "")
        )
    if field == SID_FIELD:
        return code_tables[field]
    codes = code_tables[field][:, :levels]
    return content_code_table(codes) if disambiguate else codes
