"""Content-proxy features from semantic-code files (``<name>.index_lemb.json`` / ``.index_vitemb.json``).

THIS IS A PROXY. The processed LC-Rec/MQL4GRec datasets ship no raw embeddings, only 4-level codes
(codebook 256) that a public RQ-VAE pipeline derived from LLaMA text embeddings (``index_lemb``,
tokens ``<a_12>``) and CLIP ViT-L/14 image embeddings (``index_vitemb``, tokens ``<A_12>``). The
matrix built here stands in for those embeddings: the concatenated one-hot of the levels
(``levels * codebook_size`` dims, one non-zero per level: ``level_decay ** l`` at level ``l``, 1 by default; below 1
the first level weighs most, as in the residual embeddings), optionally multiplied by a fixed
Gaussian random matrix (seeded, entries ``N(0, 1/project_dim)``, so distances are kept approximately)
to ``project_dim`` dims. It holds only what the codes hold: items with the same codes get the
same row, and nothing of the original embedding below the last level survives.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from dataset_prep.features.encoding import ItemEncoder
from dataset_prep.features.store import DEFAULT_CHUNK_SIZE, FeatureProgress, inputs_digest, write_features
from recbole_qrec.data.features import (DEFAULT_CODEBOOK_SIZE, DEFAULT_LEVEL_DECAY, check_codes, codes_to_features,
                                        one_hot, random_projection)
from recbole_qrec.errors import DatasetNotFoundError, MalformedDataError

CODE_TOKEN = re.compile(r"<([A-Za-z])_(\d+)>")
INDEX_SOURCE = (
    "the processed LC-Rec/MQL4GRec datasets ship <name>.index_lemb.json (codes of LLaMA text embeddings) and "
    "<name>.index_vitemb.json (codes of CLIP image embeddings) next to <name>.inter.json"
)
CODE_BATCH = 4096


def parse_code(token: str, level: int, item: str, path: Path) -> int:
    """The code of ``token`` (``<a_12>`` -> 12), checking that its letter names level ``level``."""
    letter = chr(ord("a") + level)
    match = CODE_TOKEN.fullmatch(token) if isinstance(token, str) else None
    if match is None or match.group(1).lower() != letter:
        raise MalformedDataError(f"{path}: item {item}, level {level}: token {token!r} is not of the form <{letter}_N> "
                                 "— list each item's level tokens in order, e.g. [\"<a_12>\", \"<b_7>\"]")
    return int(match.group(2))


def read_code_index(path: str | os.PathLike) -> dict[int, list[int]]:
    """``{"item_id": ["<a_12>", "<b_7>", ...]}`` as ``{item: [12, 7, ...]}``; every item has the same levels."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"code file {path} not found — {INDEX_SOURCE}")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise MalformedDataError(f"{path} is not valid JSON ({err}) — re-create or re-download it") from err
    if not isinstance(index, dict) or not index or not all(isinstance(tokens, list) for tokens in index.values()):
        raise MalformedDataError(f"{path} is not a non-empty JSON object of item code lists — write it as "
                                 "{\"<item_int>\": [\"<a_12>\", ...]}")
    codes = {}
    for item, tokens in index.items():
        if not item.isdigit() or str(int(item)) != item:
            raise MalformedDataError(f"{path}: item id {item!r} is not a non-negative integer — key items by their integer id")
        codes[int(item)] = [parse_code(token, level, item, path) for level, token in enumerate(tokens)]
    return codes


def code_item_encoder(codes: Mapping[int, Sequence[int]], n_items: int, codebook_size: int = DEFAULT_CODEBOOK_SIZE,
                      project_dim: int | None = None, seed: int = 0, source: str = "codes",
                      level_decay: float = DEFAULT_LEVEL_DECAY) -> ItemEncoder:
    """Encoder of item ids into level-weighted one-hot (optionally projected) rows; items without codes: no
    features."""
    levels = check_codes(codes, n_items, codebook_size, source)
    projection = random_projection(levels * codebook_size, project_dim, seed) if project_dim else None

    def encode(rows: list[Sequence[int]]) -> np.ndarray:
        features = one_hot(np.asarray(rows, dtype=np.int64), codebook_size, level_decay=level_decay)
        return features if projection is None else features @ projection

    dim = levels * codebook_size if projection is None else project_dim
    return ItemEncoder(dim, CODE_BATCH, codes.get, encode)


def code_file_features(index: str | os.PathLike, codebook_size: int = DEFAULT_CODEBOOK_SIZE,
                       level_decay: float = DEFAULT_LEVEL_DECAY) -> np.ndarray:
    """Proxy matrix of a code file, one row per item id ``0..max id`` (absent ids: zero rows)."""
    codes = read_code_index(index)
    return codes_to_features(codes, max(codes) + 1, codebook_size, level_decay=level_decay).features


def extract_code_features(index: str | os.PathLike, n_items: int, out: str | os.PathLike, *,
                          codebook_size: int = DEFAULT_CODEBOOK_SIZE, project_dim: int | None = None, seed: int = 0,
                          level_decay: float = DEFAULT_LEVEL_DECAY, chunk_size: int = DEFAULT_CHUNK_SIZE,
                          overwrite: bool = False,
                          max_chunks: int | None = None, progress: bool = True) -> FeatureProgress:
    """Write the proxy features of the code file ``index`` into ``out``; items it lacks get zero rows."""
    codes = read_code_index(index)
    settings = {"index_sha256": inputs_digest(sorted(codes.items())), "codebook_size": codebook_size,
                "project_dim": project_dim, "seed": seed if project_dim else None, "level_decay": level_decay}
    encoder = code_item_encoder(codes, n_items, codebook_size, project_dim, seed, str(index), level_decay)
    return write_features(out, "codes", settings, n_items, lambda: encoder, chunk_size=chunk_size,
                          overwrite=overwrite, max_chunks=max_chunks, progress_bar=progress)
