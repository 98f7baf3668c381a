"""The executor interface: the batch driver submits tasks and waits for events; executors (local worker
processes, Ray) only run jobs. Retries, the ledger and progress are the driver's, written once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Task:
    """One attempt at one job."""

    job_id: str
    """The job's id."""
    spec: dict[str, Any]
    """``JobSpec.to_dict()``."""
    job_dir: str
    """Its folder (on a path every worker sees)."""


@dataclass(frozen=True)
class Event:
    """What happened to a task: ``started`` (on ``worker``), ``finished`` (``result`` from ``run_job``) or
    ``lost`` (its worker died or was cancelled: ``error`` says how; the job resumes from its checkpoint)."""

    kind: str
    """started, finished or lost."""
    job_id: str
    """The task's job."""
    worker: str = ""
    """Which worker (e.g. ``local-1 pid 1234``, ``ray``)."""
    result: dict[str, Any] | None = None
    """``run_job``'s result (finished)."""
    error: str | None = None
    """Why the task was lost."""


class Executor(Protocol):
    """Runs tasks; ``slots`` of them at a time."""

    slots: int
    """How many tasks run at once."""

    def submit(self, task: Task) -> None:
        """Start ``task`` (only while fewer than ``slots`` are in flight)."""

    def wait(self, timeout: float) -> list[Event]:
        """Events since the last call, waiting up to ``timeout`` seconds for the first."""

    def in_flight(self) -> int:
        """Tasks submitted and not yet finished or lost."""

    def close(self, interrupt: bool) -> list[Event]:
        """Stop every worker; ``interrupt``: ask running jobs to checkpoint first. Returns their lost events."""


def cpu_count() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without torch's CUDA build)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
