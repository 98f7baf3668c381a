"""Stopping a run cleanly: Ctrl-C (SIGINT) and a scheduler's SIGTERM end the run at the next step
boundary, after a checkpoint, however often they arrive."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal at a step boundary. ``signum``: the first signal received;
    ``checkpoint_step``: the step its last checkpoint holds (None when nothing was written)."""

    def __init__(self, signum: int, checkpoint_step: int | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.checkpoint_step = checkpoint_step

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by ``signum``: 128 + signum (130, 143)."""
        return 128 + self.signum


@contextlib.contextmanager
def deferred_stop_signals() -> Iterator[Callable[[], int | None]]:
    """Within the block SIGINT and SIGTERM only record that a stop was asked (the first signal wins);
    the callable yielded returns that signal's number, or None. After a stop, both stay ignored (the
    caller is ending the run). Outside the main thread signals are left alone (the callable then always
    returns None)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def handler(signum: int, frame: object) -> None:
        received.append(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield lambda: received[0] if received else None
    finally:
        for signum, old in previous.items():
            # once a stop was asked the process is ending: a further Ctrl-C must not cut its exit short
            signal.signal(signum, signal.SIG_IGN if received else old)
