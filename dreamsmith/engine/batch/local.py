"""The local executor: worker processes on this machine, each running one job at a time.

CPU threads are split between the workers; with GPUs, worker ``i`` sees only GPU ``i mod n``
(``CUDA_VISIBLE_DEVICES``). Workers live in their own process group (the driver alone decides when they
stop, and a Ctrl-C reaches each of them once, as a checkpoint request) and die with the driver. A worker
that dies mid-job (kill -9, out of memory) is reported as a lost task and replaced.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import time
from dataclasses import asdict
from multiprocessing.connection import Connection, wait
from typing import Any

from dreamsmith.engine.batch.executor import Event, Task, cpu_count

STOP_GRACE_S = 120.0
"""How long an interrupted worker may take to reach a step boundary and checkpoint before it is killed."""


class _Worker:
    def __init__(self, index: int, process: Any, conn: Connection) -> None:
        self.index, self.process, self.conn = index, process, conn
        self.task: Task | None = None

    @property
    def name(self) -> str:
        return f"local-{self.index} pid {self.process.pid}"


class LocalExecutor:
    """``workers`` processes; ``threads`` CPU threads each (default: this machine's CPUs split evenly)."""

    def __init__(self, workers: int, threads: int | None = None, gpus: int = 0) -> None:
        self.slots = workers
        self.threads = threads or max(1, cpu_count() // workers)
        self.gpus = gpus
        self.context = multiprocessing.get_context("spawn")  # fork after torch's threads start is unsafe
        self.workers: list[_Worker | None] = [None] * workers
        self.events: list[Event] = []

    def environment(self, index: int) -> dict[str, str]:
        """The variables worker ``index`` runs with."""
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(index % self.gpus)
        return env

    def submit(self, task: Task) -> None:
        index = next(i for i, w in enumerate(self.workers) if w is None or w.task is None)
        worker = self.workers[index]
        try:
            if worker is None or not worker.process.is_alive():
                raise BrokenPipeError
            worker.conn.send(asdict(task))
        except OSError:  # an idle worker died (killed, out of memory): start its replacement
            if worker is not None:
                worker.conn.close()
            worker = self._start(index)
            worker.conn.send(asdict(task))
        worker.task = task
        self.events.append(Event("started", task.job_id, worker=worker.name))

    def in_flight(self) -> int:
        return sum(1 for w in self.workers if w is not None and w.task is not None)

    def wait(self, timeout: float) -> list[Event]:
        busy = [w for w in self.workers if w is not None and w.task is not None]
        if busy and not self.events:
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout)
        elif not busy and not self.events:
            time.sleep(timeout)
        for worker in busy:
            self._collect(worker)
        events, self.events = self.events, []
        return events

    def close(self, interrupt: bool) -> list[Event]:
        live = [w for w in self.workers if w is not None]
        for worker in live:
            if worker.task is None:
                worker.conn.send(None)
            elif interrupt:
                os.kill(worker.process.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        for worker in live:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            if worker.task is not None:
                self._collect(worker)
        events, self.events = self.events, []
        return events

    def _start(self, index: int) -> _Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=worker_main, args=(child, self.environment(index)), daemon=True,
                                       name=f"dreamsmith-batch-{index}")
        process.start()
        child.close()
        worker = self.workers[index] = _Worker(index, process, parent)
        return worker

    def _collect(self, worker: _Worker) -> None:
        """Turn what ``worker`` said (or its death) into an event."""
        task = worker.task
        assert task is not None
        message: Any = None
        try:
            if worker.conn.poll():
                message = worker.conn.recv()
        except (EOFError, OSError):
            message = None
        if message is not None:
            kind, result = message
            worker.task = None
            if kind == "result":
                self.events.append(Event("finished", task.job_id, worker.name, result=result))
            else:
                self.events.append(Event("lost", task.job_id, worker.name, error="interrupted"))
            return
        if worker.process.is_alive():
            return
        worker.process.join()
        code = worker.process.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited ({code})"
        self.events.append(Event("lost", task.job_id, worker.name, error=f"its worker ({worker.name}) {how}"))
        worker.conn.close()
        self.workers[worker.index] = None


def worker_main(conn: Connection, env: dict[str, str]) -> None:
    """A worker process: run the jobs the driver sends until it sends None (or dies)."""
    os.setpgrp()
    _die_with_parent()
    os.environ.update(env)
    import torch

    from dreamsmith.engine.batch.job import run_job

    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        try:
            result = run_job(message["spec"], message["job_dir"])
        except KeyboardInterrupt:
            conn.send(("interrupted", None))
            return
        conn.send(("result", result))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the driver dies, so no orphan writes into a job folder
    that a later batch owns (elsewhere the driver's pipe closing ends an idle worker)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the driver died before prctl took effect
        os._exit(1)
