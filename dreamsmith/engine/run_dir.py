"""The run directory: where a run's files live, and writes that never leave half a file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dreamsmith.errors import RunDirError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temp_path)`` on a temporary file beside ``path``, then rename it into place.

    Readers see either the old file or the complete new one; a failure leaves no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_yaml(path: Path, data: Any) -> None:
    write_text(path, yaml.safe_dump(data, sort_keys=False))


class RunDir:
    """Paths of one run: config.yaml, checkpoints/, previews/, asset.glb, report.json."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def previews(self) -> Path:
        return self.root / "previews"

    @property
    def asset(self) -> Path:
        return self.root / "asset.glb"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def prepare(self) -> None:
        """Create the directory tree and check it is writable, or fail with a clear message."""
        try:
            for folder in (self.root, self.checkpoints, self.previews):
                folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-test-"):
                pass
        except OSError as error:
            raise RunDirError(
                f"cannot write the run directory {self.root}: {error.strerror or error}; choose another --out"
            ) from None

    def load_config(self) -> dict[str, Any]:
        if not self.config.exists():
            raise RunDirError(f"{self.root} has no config.yaml: it is not a dreamsmith run directory")
        return yaml.safe_load(self.config.read_text(encoding="utf-8"))
