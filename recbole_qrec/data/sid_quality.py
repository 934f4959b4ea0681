"""Quality of the semantic-ID code tables a run reads, for its result record (``record["tokenizer"]``).

:func:`code_table_quality` gives, per code table of a :class:`~recbole_qrec.data.dataset.SemanticIdDataset`
(``sid`` for the code file of ``sid_producer``, else the content-code field, e.g. ``text_codes``):

* ``collision_rate_before``: share of items whose full code tuple is shared with another item before any
  de-duplication: for codes a tokenizer wrote (a ``.sid`` file, or a content field of ``python -m
  recbole_qrec.tokenize --item_field``) the figure its report records (its codes before its collision handling;
  QBert4Rec's stage: over every domain it tokenized together), else that of the codes as read (content codes:
  their first ``code_levels`` levels when TIGER keeps fewer);
* ``collision_rate_after``: the same share in the table the model uses (:func:`~recbole_qrec.data.sid.item_code_table`):
  0 with TIGER's extra level, while MQL4GRec with ``eval_rule: group`` keeps shared codes (after = before);
* ``extra_level_share``: share of items whose extra level is not 0, those it tells apart from an item with the same
  codes (0 for a table without an extra level);
* ``codebook_size``, and per code level ``utilisation`` and ``perplexity``
  (:func:`~recbole_qrec.quantization.metrics.level_usage`) of the codes as read; the codebook size is the
  tokenizer's setting when a report records it, else the largest of 256 (the converted content codes') and the
  largest code + 1;
* ``source``: the content behind the codes (``text:llama``, ``id-embedding:SASRec``, ...); ``tokenizer_hash``: the
  key of a model's stage (QBert4Rec, MMESID), or a hash of the tokenizer settings its report records (None for
  codes made elsewhere);
* ``main``: True for the table of the model's first code source (TIGER's ``sid_source``, MQL4GRec's text
  language when it has one, QBert4Rec's ``sid``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from recbole.config import Config

from recbole_qrec.data.dataset import SemanticIdDataset
from recbole_qrec.data.features import DEFAULT_CODEBOOK_SIZE, UNKNOWN_SOURCE, content_sources, read_content_metadata
from recbole_qrec.data.item_features import MISSING_SOURCE, report_source
from recbole_qrec.data.sid import SID_FIELD, item_code_table, source_field
from recbole_qrec.quantization.metrics import collision_rate, level_usage


def tokenizer_hash(report: dict[str, Any]) -> str | None:
    """The stage ``key`` of a model stage's ``.sid.json`` (QBert4Rec, MMESID), else a 12-digit hash of a tokenizer
    report's ``config``."""
    if "key" in report:
        return report["key"]
    if "config" in report:
        return hashlib.sha256(json.dumps(report["config"], sort_keys=True).encode()).hexdigest()[:12]
    return None


def codebook_size(report: dict[str, Any], codes: np.ndarray) -> int:
    """The codebook size a tokenizer report records, else ``max(256, largest code + 1)``."""
    recorded = (report.get("config") or {}).get("codebook_size")  # a tokenizer's report
    recorded = recorded or (report.get("settings") or {}).get("sid_codebook_size")  # QBert4Rec's stage's
    return int(recorded or max(DEFAULT_CODEBOOK_SIZE, int(codes.max()) + 1))


def table_quality(raw: np.ndarray, used: np.ndarray, report: dict[str, Any], source: str, main: bool) -> dict[str, Any]:
    """The figures of one table: ``raw`` ``[n, L]`` codes as read, ``used`` ``[n, L']`` the model's codes (no padding
    row), ``report`` the tokenizer's report behind them (``{}`` for none)."""
    size = codebook_size(report, raw)
    utilisation, perplexity = level_usage(raw, size)
    extra = used.shape[1] > raw.shape[1]
    return {
        "collision_rate_before": float(report.get("collision_rate_before", collision_rate(raw))),
        "collision_rate_after": collision_rate(used),
        "extra_level_share": float((used[:, -1] > 0).mean()) if extra else 0.0,
        "codebook_size": size,
        "utilisation": utilisation,
        "perplexity": perplexity,
        "source": source,
        "tokenizer_hash": tokenizer_hash(report),
        "main": main,
    }


def code_table_quality(config: Config, dataset: SemanticIdDataset) -> dict[str, dict[str, Any]]:
    """``field -> figures`` (see the module docstring) of every code table the run's model reads from ``dataset``."""
    folder, name = Path(dataset.dataset_path), dataset.dataset_name
    content = read_content_metadata(folder, name)
    recorded_sources = content_sources(folder, name)
    # The keys naming the model's code sources (None for QBert4Rec's, which always reads field sid) with their fields,
    # those the dataset has: MQL4GRec leaves out a default language the dataset lacks.
    keys = [key for key in dataset.sid_source_keys if config[key] is not None] if dataset.sid_source_keys else [None]
    fields = [(key, SID_FIELD if key is None else source_field(config[key])) for key in keys]
    quality: dict[str, dict[str, Any]] = {}
    for index, (key, field) in enumerate([(key, field) for key, field in fields if field in dataset.code_tables]):
        if field == SID_FIELD:  # the report read with the codes (another run's stage may have rewritten it since)
            report = dataset.sid_report
            source = report_source(report) if report else MISSING_SOURCE
        else:
            report = content.get(field, {}).get("tokenizer") or {}
            source = recorded_sources.get(field, UNKNOWN_SOURCE)
        raw = dataset.code_tables[field][1:, : config["code_levels"]]  # TIGER's code_levels (None: every level)
        used = raw if key is None else item_code_table(  # MQL4GRec's eval_rule group keeps items' shared codes
            config, dataset.code_tables, key, levels=config["code_levels"], disambiguate=config["eval_rule"] != "group"
        )[1:]
        quality[field] = table_quality(raw.numpy(), used.numpy(), report, source, main=index == 0)
    return quality
