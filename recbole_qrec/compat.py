"""Compatibility shims that let RecBole 1.2.1 run on today's numpy and torch without editing RecBole.

Nothing here runs on ``import recbole_qrec``; the shims run where RecBole is first used:

* :func:`prepare_recbole`, called before a RecBole ``Config`` is built: RecBole's
  ``Config.compatibility_settings`` re-creates the numpy aliases removed in 1.20 (``np.float =
  np.float_`` ...) but reads ``np.float_``, ``np.complex_`` and ``np.unicode_``, which numpy 2 removed
  as well. Restoring those three names (to the types they always aliased) is enough for RecBole's
  config, data and evaluator code to run. It also replaces BERT4Rec's ``reconstruct_test_data``
  (:func:`bert4rec_test_sequences`, same result): its loop over the users reads each user's length back from the GPU,
  one synchronisation per user, which made a full-ranking validation of Games take over 6 minutes on one H200 GPU.
  Likewise BERT4Rec's ``multi_hot_embed`` (:func:`bert4rec_multi_hot`) and the feature layers'
  ``embed_token_seq_fields`` (:func:`pooled_token_seq_embeddings`), same values: each copies a tensor made on the host
  (a row index, the mean's 1e-8) to the device at every call, a copy that waits for the GPU, so every training step of
  BERT4Rec and of FDSA (which pools the content codes) did. And it silences the FutureWarning of pandas 2 on the
  in-place ``fillna`` of RecBole's ``_fill_nan`` (one screenful of stderr per feature file, also in front of a data
  error's one line); the fill still works under the ``pandas<3`` that ``setup.py`` pins. Likewise torch's
  FutureWarning on the ``torch.cuda.amp.GradScaler(...)`` that RecBole's trainer builds at every training run (it
  still works). And RecBole's dataset module gets :class:`CEngineCsvPandas` for pandas: its ``_load_feat`` asks pandas
  for the Python parser, which multi-character separators need, but a one-character separator (the default tab) parses
  to the same frame with the C parser, several times faster.
* :func:`undo_sine_anomaly_detection`, around a model lookup: RecBole's
  ``recbole/model/sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)``
  at import time, and RecBole's ``get_model`` imports it with every sequential model. Anomaly
  detection would then stay on for the whole process: every autograd op records a traceback
  (training steps several times slower) and any NaN in a backward pass raises.

The other known breakages are handled where they belong:

* checkpoints that load under ``torch.load(weights_only=True)``: :mod:`recbole_qrec.trainer`;
* pandas 3 breaks RecBole's atomic-file loading: ``setup.py`` pins ``pandas<3``;
* ``recbole.quick_start`` imports ray (needs numpy<2 and setuptools<81): this package never
  imports it and drives RecBole through ``Config``/``create_dataset``/``data_preparation``.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch

NUMPY_REMOVED_ALIASES: dict[str, type] = {
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
}
SINE_MODULE = "recbole.model.sequential_recommender.sine"
CHAINED_FILLNA_WARNING = "A value is trying to be set on a copy of a DataFrame or Series through chained assignment"
GRAD_SCALER_WARNING = r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated"


def prepare_recbole() -> None:
    """Restore the numpy 1.x aliases RecBole 1.2.1's ``Config`` reads, where numpy no longer has them, put
    :func:`bert4rec_test_sequences` and :func:`bert4rec_multi_hot` in place of BERT4Rec's ``reconstruct_test_data`` and
    ``multi_hot_embed``, :func:`pooled_token_seq_embeddings` in place of the feature layers' ``embed_token_seq_fields``,
    :class:`CEngineCsvPandas` in place of its dataset module's pandas, and silence pandas' warning on RecBole's in-place
    ``fillna`` and torch's on the ``torch.cuda.amp.GradScaler`` its trainer builds."""
    for name, target in NUMPY_REMOVED_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, target)
    with undo_sine_anomaly_detection():  # the package's __init__ imports sine.py
        from recbole.model.sequential_recommender.bert4rec import BERT4Rec

    BERT4Rec.reconstruct_test_data = bert4rec_test_sequences
    BERT4Rec.multi_hot_embed = bert4rec_multi_hot
    from recbole.model.layers import ContextSeqEmbAbstractLayer

    ContextSeqEmbAbstractLayer.embed_token_seq_fields = pooled_token_seq_embeddings
    from recbole.data.dataset import dataset

    dataset.pd = CEngineCsvPandas()
    warnings.filterwarnings("ignore", CHAINED_FILLNA_WARNING, FutureWarning, r"recbole\.data\.dataset")
    warnings.filterwarnings("ignore", GRAD_SCALER_WARNING, FutureWarning, r"recbole\.trainer\.trainer")


def bert4rec_test_sequences(self: Any, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
    """RecBole's ``BERT4Rec.reconstruct_test_data`` as one scatter: the [MASK] token written after each history
    (at column ``item_seq_len`` of the sequences padded by one column), then the first column dropped."""
    padded = torch.cat((item_seq, item_seq.new_zeros(item_seq.size(0), 1)), dim=-1)
    return padded.scatter(1, item_seq_len.long().unsqueeze(1), self.mask_token)[:, 1:]


def bert4rec_multi_hot(self: Any, masked_index: torch.Tensor, max_length: int) -> torch.Tensor:
    """RecBole's ``BERT4Rec.multi_hot_embed``: ``[batch * masked, max_length]`` with a 1 at each masked position, its
    row index made on the device of ``masked_index`` (RecBole's is made on the host and copied over), and its ones
    too (a Python 1 would put a host tensor into a compiled step, which the cudagraphs backend then runs without
    CUDA graphs)."""
    positions = masked_index.view(-1)
    multi_hot = torch.zeros(positions.size(0), max_length, device=positions.device)
    multi_hot[torch.arange(positions.size(0), device=positions.device), positions] = torch.ones_like(
        positions, dtype=multi_hot.dtype)
    return multi_hot


def pooled_token_seq_embeddings(self: Any, token_seq_fields: list[torch.Tensor], kind: str) -> torch.Tensor | None:
    """RecBole's ``ContextSeqEmbAbstractLayer.embed_token_seq_fields`` (the same values): each token-sequence field's
    tokens embedded and pooled (``pooling_mode`` mean, max or sum; token 0 is padding) into
    ``[batch, length, fields, dim]``, the mean's 1e-8 a Python number instead of a tensor copied to the device."""
    pooled = []
    for table, field in zip(self.token_seq_embedding_table[kind], token_seq_fields):
        mask = (field != 0).float().unsqueeze(-1)  # [batch, length, tokens, 1]
        embedded = table(field)  # [batch, length, tokens, dim]
        if self.pooling_mode == "max":
            pooled.append(torch.max(embedded - (1 - mask) * 1e9, dim=-2, keepdim=True).values)
        elif self.pooling_mode == "sum":
            pooled.append(torch.sum(embedded * mask, dim=-2, keepdim=True))
        else:
            pooled.append((torch.sum(embedded * mask, dim=-2) / (mask.sum(dim=-2) + 1e-8)).unsqueeze(-2))
    return torch.cat(pooled, dim=-2) if pooled else None


class CEngineCsvPandas:
    """pandas, but ``read_csv`` asked for the Python parser with a one-character delimiter uses the C parser, which
    gives the same frame (both convert decimals with pandas' own parser; ``round_trip`` would differ)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(pd, name)

    @staticmethod
    def read_csv(*args: Any, **kwargs: Any) -> pd.DataFrame:
        delimiter = kwargs.get("delimiter", kwargs.get("sep", ","))
        if kwargs.get("engine") == "python" and isinstance(delimiter, str) and len(delimiter) == 1:
            kwargs = {**kwargs, "engine": "c"}
        return pd.read_csv(*args, **kwargs)


@contextmanager
def undo_sine_anomaly_detection() -> Iterator[None]:
    """Switch torch's anomaly detection off again if RecBole's ``sine.py`` is first imported inside the block."""
    imported_before = SINE_MODULE in sys.modules
    try:
        yield
    finally:
        if not imported_before and SINE_MODULE in sys.modules:
            torch.autograd.set_detect_anomaly(False)
