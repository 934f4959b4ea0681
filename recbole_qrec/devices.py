"""The torch device a command computes on: :func:`resolve_device`."""

from __future__ import annotations

import torch

from recbole_qrec.errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU; a malformed or unavailable device is a ConfigError."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {str(device)!r} is not a torch device — use cpu, cuda or cuda:<index>") from None
    if resolved.type == "cuda" and (not torch.cuda.is_available() or (resolved.index or 0) >= torch.cuda.device_count()):
        found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
        raise ConfigError(f"--device {resolved} is not available here ({found}) — use --device cpu, or leave --device "
                          "out (CUDA when available)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {resolved} is not available here — use --device cpu")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {str(device)!r} is not supported — use cpu, cuda or cuda:<index>")
    return resolved
