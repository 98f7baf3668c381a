"""Checkpoints: everything needed to continue a run exactly where it stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dreamsmith.engine.run_dir import atomic_write
from dreamsmith.errors import RunDirError

FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temp file + rename): an interrupted write keeps the old checkpoint."""
    payload = {"format_version": FORMAT_VERSION, **state}
    try:
        atomic_write(path, lambda temp: torch.save(payload, temp))
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(error, "strerror", None) or "the write failed (is the disk full?)"
        raise RunDirError(f"cannot write the checkpoint {path}: {reason}; the previous checkpoint is kept. "
                          "Free some space and continue with --resume") from None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; a damaged file is a clear error."""
    if not Path(path).exists():
        raise RunDirError(f"no checkpoint at {path}: the run never reached its first checkpoint")
    try:
        # weights_only: our checkpoints hold tensors, numbers, strings and dicts only
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise RunDirError(f"checkpoint {path} is damaged ({type(error).__name__}); delete it to start over") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise RunDirError(f"checkpoint {path} has format {state.get('format_version')}, expected {FORMAT_VERSION}")
    return state
