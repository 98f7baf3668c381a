"""Runs queued jobs, one at a time per device, each in a worker process; recovers after a restart."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dreamsmith.server.store import Job, JobStore

POLL_SECONDS = 0.2
INTERRUPTED = 130
"""A worker's exit status after a SIGINT stopped it at a step boundary (as a shell reports Ctrl-C)."""


class Scheduler:
    """One thread per device: claim the oldest queued job, run its worker, record how it ended."""

    def __init__(self, store: JobStore, devices: tuple[str, ...]) -> None:
        self.store, self.devices = store, devices
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        recover(self.store)
        for device in self.devices:
            thread = threading.Thread(target=self._run_device, args=(device,), name=f"jobs-{device}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 60.0) -> None:
        """Interrupt running workers (they checkpoint) and requeue their jobs to resume on the next start."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout)

    def _run_device(self, device: str) -> None:
        while not self.stopping.is_set():
            job = self.store.claim_next(device)
            if job is None:
                self.stopping.wait(POLL_SECONDS)
                continue
            self._run_worker(job)

    def _run_worker(self, job: Job) -> None:
        job_dir = self.store.job_dir(job.id)
        with open(job_dir / "worker.log", "ab") as log:
            # A new session: a Ctrl-C in the server's terminal reaches the server, which then stops the
            # worker itself, rather than the worker on its own.
            process = subprocess.Popen([sys.executable, "-m", "dreamsmith.server.worker", str(self.store.root), job.id],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.store.update(job.id, pid=process.pid)
        interrupted = False
        while process.poll() is None:
            wanted = self.stopping.is_set() or self.store.get(job.id).state == "cancelling"
            if wanted and not interrupted:
                process.send_signal(signal.SIGINT)
                interrupted = True
            time.sleep(POLL_SECONDS)
        self._record_exit(job.id, process.returncode)

    def _record_exit(self, job_id: str, code: int) -> None:
        if code == 0:
            self.store.transition(job_id, ("running", "cancelling"), "succeeded", pid=None, eta_s=0.0)
        elif code in (INTERRUPTED, -signal.SIGINT):
            if not self.store.transition(job_id, ("cancelling",), "cancelled", pid=None, resume=1,
                                         message="cancelled at a step boundary; resume to continue"):
                self.store.transition(job_id, ("running",), "queued", pid=None, resume=1,
                                      message="interrupted by the server's shutdown; resumes on its next start")
        else:
            error = self.store.get(job_id).error or f"the worker exited with status {code}; see the job's worker.log"
            self.store.transition(job_id, ("running", "cancelling"), "failed", pid=None, error=error)


def recover(store: JobStore) -> None:
    """Jobs a previous server left running: wait for their workers to stop (an orphaned worker stops
    itself at the next step boundary), then requeue them to resume from their checkpoints."""
    for job in [*store.list("running", limit=10_000), *store.list("cancelling", limit=10_000)]:
        if job.pid is not None:
            _wait_for_worker(job.pid, store.root, job.id)
        if job.state == "cancelling":
            store.transition(job.id, ("cancelling",), "cancelled", pid=None, resume=1)
        else:
            store.transition(job.id, ("running",), "queued", pid=None, resume=1,
                             message="interrupted by a server restart; resuming from the last checkpoint")


def _wait_for_worker(pid: int, jobs_dir: Path, job_id: str, timeout: float = 120.0) -> None:
    """Wait until process ``pid`` has exited, if it is still this job's worker; SIGINT it once first."""
    deadline = time.monotonic() + timeout
    signalled = False
    while _is_worker(pid, job_id) and time.monotonic() < deadline:
        if not signalled:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            signalled = True
        time.sleep(POLL_SECONDS)
    if _is_worker(pid, job_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_worker(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is alive and is the worker of ``job_id`` (not a reused process id)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"dreamsmith.server.worker" in command and job_id.encode() in command
