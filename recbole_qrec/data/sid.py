"""Semantic-ID code tables aligned with RecBole's internal item ids.

Codes live in RecBole atomic-file format, one ``token_seq`` column of level tokens per item
(``a_12 b_7 c_201 d_3``: level letter, underscore, code index). They come either from the
tokenizer (``<dataset>.sid``, written by ``python -m recbole_qrec.tokenize``) or from the content
codes that ``dataset_prep.convert`` puts into ``<dataset>.item`` (``text_codes``, ``image_codes``).

:func:`load_code_table` returns a ``LongTensor[n_items, L]`` whose row ``i`` holds the codes of
RecBole's internal item id ``i``; row 0 (RecBole's padding item) holds ``pad_code`` at every level.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from recbole.data.dataset import Dataset

from recbole_qrec.errors import MalformedDataError

SID_SUFFIX = "sid"
SID_FIELD = "sid"


def parse_code_tokens(tokens: str) -> list[int]:
    """``"a_12 b_7"`` -> ``[12, 7]``."""
    return [int(token.rsplit("_", 1)[1]) for token in tokens.split()]


def read_code_column(path: Path, field: str) -> dict[str, list[int]]:
    """``item token -> codes`` from the ``<field>:token_seq`` column of an atomic file."""
    if not path.is_file():
        raise MalformedDataError(
            f"{path} does not exist: create semantic IDs with `python -m recbole_qrec.tokenize`, "
            "or convert the dataset with `python -m dataset_prep.convert`."
        )
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        header = [name.split(":")[0] for name in next(rows)]
        if field not in header or "item_id" not in header:
            raise MalformedDataError(f"{path} has columns {header}; expected item_id and {field}.")
        item_col, code_col = header.index("item_id"), header.index(field)
        try:
            return {row[item_col]: parse_code_tokens(row[code_col]) for row in rows if row[code_col]}
        except (IndexError, ValueError) as err:
            raise MalformedDataError(f"{path}: {field} tokens must look like 'a_12 b_7 c_201 d_3' ({err}).") from err


def load_code_table(dataset: Dataset, path: str | Path, field: str, pad_code: int) -> torch.LongTensor:
    """Codes of every item of ``dataset`` in internal-id order; row 0 is the padding item."""
    codes = read_code_column(Path(path), field)
    tokens = dataset.field2id_token[dataset.iid_field]
    missing = [token for token in tokens[1:] if token not in codes]
    if missing:
        raise MalformedDataError(f"{path}: {len(missing)} items have no {field} (e.g. {missing[:5]}); re-run the tokenizer.")
    levels = {len(codes[token]) for token in tokens[1:]}
    if len(levels) != 1:
        raise MalformedDataError(f"{path}: items have different numbers of code levels {sorted(levels)}.")
    table = torch.full((len(tokens), levels.pop()), pad_code, dtype=torch.long)
    for index, token in enumerate(tokens[1:], start=1):
        table[index] = torch.tensor(codes[token])
    return table


def with_padding_row(values: torch.Tensor) -> torch.Tensor:
    """Prepend a zero row for RecBole's padding item (internal id 0)."""
    return torch.cat([values.new_zeros((1, *values.shape[1:])), values])


def sid_path(dataset: Dataset) -> Path:
    """Where the tokenizer writes the semantic IDs of ``dataset``."""
    return Path(dataset.dataset_path) / f"{dataset.dataset_name}.{SID_SUFFIX}"
