"""The run directory: where a run's files live, and writes that never leave half a file behind."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from dreamsmith.errors import RunDirError

LOCK_FILE = ".dreamsmith.lock"
RUN_FILES = ("config.yaml", "report.json", "qa.json", "edit.json")
"""Files of a run besides checkpoints/, previews/ and the asset files (``asset*``)."""


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
    def edit_record(self) -> Path:
        """What an edit run (``dreamsmith edit``) started from."""
        return self.root / "edit.json"

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
        try:
            config = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise RunDirError(f"{self.config} cannot be read ({type(error).__name__}); it was changed by hand or "
                              "damaged") from None
        if not isinstance(config, dict) or not isinstance(config.get("stages"), list):
            raise RunDirError(f"{self.config} is not a run config (it was changed by hand or damaged)")
        return config

    def has_run(self) -> bool:
        """Whether a run already wrote its checkpoint, report or asset here."""
        return self.last_checkpoint.exists() or self.report.exists() or self.asset.exists()

    def clear_run(self) -> None:
        """Remove a previous run's files (``--overwrite``); anything else in the folder stays."""
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        shutil.rmtree(self.previews, ignore_errors=True)
        for path in [*(self.root / name for name in RUN_FILES), *self.root.glob("asset*")]:
            if path.is_file():
                path.unlink()

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete what interrupted writes left behind (``.NAME.*.tmp`` files, ``.export-*`` staging
        folders); only called while holding the lock, so no live writer owns them."""
        stale: list[Path] = []
        for folder in (self.root, self.checkpoints, self.previews):
            if folder.is_dir():
                stale += [p for p in folder.glob(".*.tmp") if p.is_file()]
        stale += [p for p in self.root.glob(".export-*") if p.is_dir()]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return stale

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for one process: a second run (or export) into it is refused at once."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / LOCK_FILE, "a+")  # noqa: SIM115 (held for the whole block)
        except OSError as error:
            raise RunDirError(
                f"cannot write the run directory {self.root}: {error.strerror or error}; choose another --out"
            ) from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                raise RunDirError(f"{self.root} is in use by another dreamsmith run ({owner}); wait for it to "
                                  "finish or choose another --out") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
