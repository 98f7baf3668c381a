"""One batch per output directory: an exclusive ``flock`` on ``batch.lock``, held while the batch runs and
released by the kernel when its process ends (even by kill -9), so a lock is never left stale."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from dreamsmith.errors import BatchError


@contextlib.contextmanager
def batch_lock(out: Path) -> Iterator[None]:
    """Hold ``out/batch.lock`` for the body, or refuse at once if another batch holds it."""
    path = Path(out) / "batch.lock"
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise BatchError(f"cannot write the batch output directory {out}: {error.strerror}; choose another --out") \
            from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 64, 0).decode(errors="replace").strip() or "unknown"
            raise BatchError(f"another batch (pid {holder}) is running in {out}; wait for it to finish or choose "
                             "another --out") from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(handle)
