"""Progress of a whole batch: the driver's callbacks, the ETA from measured job times, and the rich view
the CLI shows (jobs done, failed and running, the ETA)."""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class BatchProgress:
    """Receives the batch's progress; the CLI shows it, tests and libraries ignore it."""

    def batch_started(self, total: int, done: int, to_run: int, slots: int) -> None: ...

    def job_started(self, job_id: str, worker: str) -> None: ...

    def job_ended(self, job_id: str, state: str, wall_time_s: float | None, error: str | None) -> None: ...

    def message(self, text: str) -> None: ...

    def batch_finished(self) -> None: ...


def eta_seconds(remaining: int, job_times: list[float], slots: int, running_elapsed: list[float]) -> float | None:
    """Seconds until ``remaining`` jobs (running ones included) finish on ``slots`` parallel workers, from
    the mean measured job time; running jobs count what they have left. None before any job finished."""
    if not job_times:
        return None
    mean = sum(job_times) / len(job_times)
    left_running = sum(max(0.0, mean - elapsed) for elapsed in running_elapsed)
    queued = max(0, remaining - len(running_elapsed))
    return (left_running + queued * mean) / max(1, slots)


class RichBatchProgress(BatchProgress):
    """One bar over the batch's jobs: done/failed/running counts and the ETA; a line per failed job."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("done {task.fields[done]} · failed {task.fields[failed]} · "
                                       "running {task.fields[running]}"),
                            TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"), console=console)
        self.task = None
        self.slots = 1
        self.counts = {"done": 0, "failed": 0}
        self.running: dict[str, float] = {}
        self.job_times: list[float] = []

    def batch_started(self, total: int, done: int, to_run: int, slots: int) -> None:
        self.slots = slots
        self.counts["done"] = done
        self.bar.start()
        self.task = self.bar.add_task("batch", total=total, completed=done, done=done, failed=0, running=0, eta="?")

    def job_started(self, job_id: str, worker: str) -> None:
        self.running[job_id] = time.monotonic()
        self._refresh()

    def job_ended(self, job_id: str, state: str, wall_time_s: float | None, error: str | None) -> None:
        self.running.pop(job_id, None)
        if state in self.counts:
            self.counts[state] += 1
        if state == "done" and wall_time_s is not None:
            self.job_times.append(wall_time_s)
        if error:
            self.console.print(f"[yellow]{job_id}[/yellow] ({state}): {error}", highlight=False, soft_wrap=True)
        self._refresh()

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def batch_finished(self) -> None:
        self.bar.stop()

    def _refresh(self) -> None:
        if self.task is None:
            return
        task = self.bar.tasks[0]
        remaining = int(task.total or 0) - self.counts["done"] - self.counts["failed"]
        now = time.monotonic()
        eta = eta_seconds(remaining, self.job_times, self.slots, [now - t for t in self.running.values()])
        self.bar.update(self.task, completed=self.counts["done"] + self.counts["failed"], done=self.counts["done"],
                        failed=self.counts["failed"], running=len(self.running),
                        eta="?" if eta is None else _duration(eta))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(math.ceil(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
