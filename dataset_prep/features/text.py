"""Text features: ``transformers`` AutoTokenizer + AutoModel, pooled last hidden state.

Any AutoModel works: encoder models (BERT, sentence encoders), decoder-only models (LLaMA, as in
the papers; use mean pooling: a missing pad token is set to EOS/UNK) and encoder-decoder models
(their encoder is used). On CUDA the weights are loaded in ``dtype`` (a 7B model fits one GPU) and
run under autocast; on CPU everything is fp32. Sequences are right-padded and padding never
changes a vector (mean pooling averages real tokens only).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import SafetensorError

from dataset_prep.features.encoding import (
    DTYPES, EncodedRows, ItemEncoder, autocast, compute_dtype, encode_all, to_numpy,
)
from dataset_prep.features.items import item_texts, read_item_json
from dataset_prep.features.store import DEFAULT_CHUNK_SIZE, FeatureProgress, inputs_digest, write_features
from recbole_qrec.devices import resolve_device
from recbole_qrec.errors import ConfigError, required_module

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
POOLINGS = ("mean", "cls", "pooler")


@dataclass(frozen=True)
class TextOptions:
    """Text encoder choice; ``model`` is a Hugging Face name or a local directory."""

    model: str = DEFAULT_TEXT_MODEL
    pooling: str = "mean"
    max_length: int = 256
    batch_size: int = 64
    dtype: str = "fp16"
    device: str | None = None


def model_id(model: str) -> str:
    """A local model directory as an absolute path (so reruns from elsewhere match), else the name."""
    return str(Path(model).resolve()) if Path(model).is_dir() else model


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the hidden states of real (mask 1) tokens, in fp32."""
    weights = attention_mask.unsqueeze(-1).float()
    return (hidden.float() * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def pool(outputs: Any, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence: ``mean`` (masked), ``cls`` (first token) or the model's ``pooler`` output."""
    if pooling == "mean":
        return mean_pool(outputs.last_hidden_state, attention_mask)
    if pooling == "cls":
        return outputs.last_hidden_state[:, 0].float()
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is None:
        raise ConfigError("this model has no pooler output — use --pooling mean or cls")
    return pooled.float()


def ensure_pad_token(tokenizer: Any, model: Any) -> None:
    """Give a tokenizer without a pad token (decoder-only models) one: EOS, else UNK, else a new token."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is not None or tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    else:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        model.resize_token_embeddings(len(tokenizer))


def check_model_folder(model: str) -> None:
    """A local ``--model`` path must be a folder holding a transformers model (its ``config.json``)."""
    path = Path(model)
    if path.is_file():
        raise ConfigError(f"--model {model} is a file — give the folder that holds it (a transformers model folder "
                          "with config.json, tokenizer and weights) or a model name")
    if path.is_dir() and not (path / "config.json").is_file():
        content = "is empty" if not any(path.iterdir()) else "has no config.json"
        raise ConfigError(f"text model folder {model} {content} — give a transformers model folder (config.json, "
                          "tokenizer files and weights, as save_pretrained writes them) or a model name")


class TextEncoder:
    """A loaded tokenizer and model turning a batch of texts into pooled float32 vectors."""

    def __init__(self, options: TextOptions) -> None:
        transformers = required_module("transformers", "text features", "pip install 'transformers>=5.17,<6' (a "
                                       "dependency of recbole-qrec, which pip install recbole-qrec brings)")

        if options.pooling not in POOLINGS:
            raise ConfigError(f"pooling {options.pooling!r} is not one of {POOLINGS} — choose one of them")
        self.options = options
        self.device = resolve_device(options.device)
        self.dtype = compute_dtype(self.device, options.dtype)
        check_model_folder(options.model)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(options.model)
            model = transformers.AutoModel.from_pretrained(options.model, dtype=DTYPES[self.dtype])
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, EOFError, SafetensorError) as err:
            reason = " ".join(str(err).split())
            raise ConfigError(f"cannot load text model {options.model!r} ({reason}) — give a transformers model "
                              "name or a local folder") from err
        if model.config.is_encoder_decoder:
            model = model.get_encoder()
        ensure_pad_token(self.tokenizer, model)
        self.tokenizer.padding_side = "right"
        self.model = model.to(self.device).eval()
        self.dim = self.encode(["dimension probe"]).shape[1]

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32 in one forward pass."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.options.max_length,
                               return_tensors="pt").to(self.device)
        with autocast(self.device, self.dtype):
            outputs = self.model(**batch)
        return to_numpy(pool(outputs, batch["attention_mask"], self.options.pooling))

    def item_encoder(self, texts: Sequence[str]) -> ItemEncoder:
        """Encoder of item ids whose inputs are ``texts[item]`` (an empty text: no features)."""
        return ItemEncoder(self.dim, self.options.batch_size, lambda item: texts[item] or None, self.encode)


def text_settings(options: TextOptions, texts: Sequence[str]) -> dict[str, Any]:
    """What identifies a text run in its progress file (batch size and device do not change vectors)."""
    return {"model": model_id(options.model), "pooling": options.pooling, "max_length": options.max_length,
            "dtype": compute_dtype(resolve_device(options.device), options.dtype), "inputs_sha256": inputs_digest(texts)}


def encode_texts(texts: Sequence[str], options: TextOptions = TextOptions(), progress: bool = False) -> EncodedRows:
    """Features of ``texts`` in memory (row ``i`` = ``texts[i]``; empty texts get a zero row, present False)."""
    return encode_all(TextEncoder(options).item_encoder(texts), len(texts), "text features", progress)


def extract_text_features(item_json: str | os.PathLike, out: str | os.PathLike, options: TextOptions = TextOptions(),
                          *, chunk_size: int = DEFAULT_CHUNK_SIZE, overwrite: bool = False,
                          max_chunks: int | None = None, progress: bool = True) -> FeatureProgress:
    """Encode every item of ``item_json`` (see ``items`` for the text template) into ``out``, resumably."""
    texts = item_texts(read_item_json(item_json), item_json)
    return write_features(out, "text", text_settings(options, texts), len(texts),
                          lambda: TextEncoder(options).item_encoder(texts), chunk_size=chunk_size,
                          overwrite=overwrite, max_chunks=max_chunks, progress_bar=progress)
