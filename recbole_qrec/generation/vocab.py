"""Token ids of semantic IDs: special tokens first, then one block of ``codebook_size`` ids per level."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SemanticIdVocab:
    """Token id of code ``c`` at level ``l`` is ``n_special + l * codebook_size + c``.

    Ids ``0..n_special-1`` are special: ``pad_id = 0`` (also T5's decoder start token) and ``eos_id = 1``;
    further special ids (e.g. modality or task markers) are free for the models to use.
    """

    levels: int
    codebook_size: int
    n_special: int = 2

    pad_id = 0
    eos_id = 1

    def __post_init__(self) -> None:
        if self.levels < 1 or self.codebook_size < 1 or self.n_special < 2:
            raise ValueError(f"need levels >= 1, codebook_size >= 1 and n_special >= 2 (pad, eos); got {self}.")

    @property
    def decoder_start_id(self) -> int:
        return self.pad_id

    @property
    def size(self) -> int:
        """Vocabulary size (the model's ``vocab_size``)."""
        return self.level_start(self.levels)

    def level_start(self, level: int) -> int:
        """Token id of code 0 at ``level``."""
        return self.n_special + level * self.codebook_size

    def level_slice(self, level: int) -> slice:
        """Token ids of all codes of ``level``."""
        return slice(self.level_start(level), self.level_start(level + 1))

    def encode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[..., t]`` of levels ``0..t-1`` (t <= levels) -> token ids of the same shape."""
        return codes + self._level_starts(codes)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[..., t]`` of levels ``0..t-1`` -> codes; raises ``ValueError`` on a token of another level."""
        codes = tokens - self._level_starts(tokens)
        wrong = ((codes < 0) | (codes >= self.codebook_size)).nonzero()
        if len(wrong):
            token, level = int(tokens[tuple(wrong[0])]), int(wrong[0, -1])
            raise ValueError(f"token {token} at level {level} is not a code token of that level.")
        return codes

    def _level_starts(self, like: torch.Tensor) -> torch.Tensor:
        if like.shape[-1] > self.levels:
            raise ValueError(f"{like.shape[-1]} levels given; the vocabulary has {self.levels}.")
        return self.n_special + self.codebook_size * torch.arange(like.shape[-1], device=like.device)
