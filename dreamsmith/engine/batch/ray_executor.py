"""The Ray executor (the ``distributed`` extra): one Ray task per job attempt, on a cluster
(``--address``) or on a local Ray started with this machine's CPUs and GPUs.

Each task asks for ``threads`` CPUs (and one GPU when the cluster has GPUs; Ray pins it with
``CUDA_VISIBLE_DEVICES``) and writes into the job's folder, so on a multi-node cluster the output
directory must be on a file system every node mounts. A task whose worker dies comes back as a lost
task and the driver resumes it like a local one (one retry policy for every executor).
"""

from __future__ import annotations

import socket
from typing import Any

from dreamsmith.engine.batch.executor import Event, Task, cpu_count
from dreamsmith.errors import BatchError

CONNECT_TIMEOUT_S = 3.0
"""How long a cluster address may take to accept a connection before the batch gives up on it."""


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, within ``timeout`` seconds, a ``host:port`` (or ``ray://host:port``) nobody listens on;
    Ray itself would retry for a minute or more before failing."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise BatchError(f"--address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
        raise BatchError(f"no Ray cluster answers at {address} ({reason}); start one with `ray start --head` or "
                         "check --address") from None


def _run_task(spec: dict[str, Any], job_dir: str, threads: int) -> dict[str, Any]:
    import torch

    from dreamsmith.engine.batch.job import run_job

    torch.set_num_threads(threads)
    return run_job(spec, job_dir)


class RayExecutor:
    """Ray tasks; ``workers`` at once (default: the cluster's CPUs divided by ``threads``)."""

    def __init__(self, workers: int | None, threads: int | None, gpus: int, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise BatchError("--executor ray needs Ray: pip install 'dreamsmith[distributed]'") from None
        self.ray = ray
        if address and address != "auto":
            check_reachable(address)
        self.threads = threads or (1 if address else max(1, cpu_count() // (workers or 1)))
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            else:
                slots = workers or 1
                ray.init(num_cpus=slots * self.threads, num_gpus=gpus, include_dashboard=False,
                         log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BatchError(f"cannot start Ray{f' at {address}' if address else ''}: {detail}") from None
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        capacity = int(resources.get("CPU", 1)) // self.threads
        if self.gpus:
            capacity = min(capacity, self.gpus)
        self.slots = max(1, min(workers, capacity) if workers else capacity)
        self.remote = ray.remote(num_cpus=self.threads, num_gpus=1 if self.gpus else 0, max_retries=0)(_run_task)
        self.refs: dict[Any, Task] = {}
        self.events: list[Event] = []

    def submit(self, task: Task) -> None:
        ref = self.remote.remote(task.spec, task.job_dir, self.threads)
        self.refs[ref] = task
        self.events.append(Event("started", task.job_id, worker="ray"))

    def in_flight(self) -> int:
        return len(self.refs)

    def wait(self, timeout: float) -> list[Event]:
        if self.refs:
            ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0 if self.events else
                                     timeout)
            for ref in ready:
                self.events.append(self._outcome(ref, self.refs.pop(ref)))
        events, self.events = self.events, []
        return events

    def close(self, interrupt: bool) -> list[Event]:
        if interrupt:
            for ref in self.refs:
                self.ray.cancel(ref)  # a KeyboardInterrupt in the task: generate checkpoints at a step boundary
            for ref, task in list(self.refs.items()):
                self.events.append(self._outcome(ref, task, cancelled=True))
            self.refs.clear()
        self.ray.shutdown()
        events, self.events = self.events, []
        return events

    def _outcome(self, ref: Any, task: Task, cancelled: bool = False) -> Event:
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.TaskCancelledError:
            return Event("lost", task.job_id, "ray", error="interrupted")
        except self.ray.exceptions.RayError as error:
            if cancelled:
                return Event("lost", task.job_id, "ray", error="interrupted")
            detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            return Event("lost", task.job_id, "ray", error=f"its Ray task was lost ({type(error).__name__}: {detail})")
        return Event("finished", task.job_id, "ray", result=result)
