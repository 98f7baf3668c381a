"""The one device resolver: what ``--device`` means on this machine."""

from __future__ import annotations

import torch

from dreamsmith.errors import DreamsmithError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` (or ``cuda:N``) without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise DreamsmithError(f"unknown device '{name}'; use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DreamsmithError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)
