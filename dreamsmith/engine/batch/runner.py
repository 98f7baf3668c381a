"""``dreamsmith batch``: validate a manifest, then run its unfinished jobs on an executor, recording each
attempt in the ledger, and write the summary and the gallery.

Re-running the same command is idempotent: finished jobs are skipped, interrupted ones resume from their
checkpoints, failed ones are retried while they have attempts left (``1 + retry`` in all).
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from dreamsmith.engine.batch.executor import Event, Executor, Task, gpu_count
from dreamsmith.engine.batch.job import is_finished
from dreamsmith.engine.batch.ledger import JobRow, Ledger
from dreamsmith.engine.batch.lock import batch_lock
from dreamsmith.engine.batch.manifest import load_manifest
from dreamsmith.engine.batch.progress import BatchProgress
from dreamsmith.engine.batch.summary import write_summary
from dreamsmith.engine.batch.validation import validate
from dreamsmith.errors import BatchError, DreamsmithError

EXECUTORS = ("local", "ray")
ONLY = ("failed", "pending")


@dataclass
class BatchOptions:
    """How a batch runs."""

    executor: Literal["local", "ray"] = "local"
    """local: worker processes on this machine; ray: tasks on a Ray cluster (the distributed extra)."""
    workers: int | None = None
    """Jobs at once (default: one per GPU, else 1; ray with --address: the cluster's CPUs / threads)."""
    threads: int | None = None
    """CPU threads per job (default: this machine's CPUs split between the workers)."""
    address: str | None = None
    """Ray cluster address (host:port, ray://host:port or auto); default: start a local Ray."""
    out: Path | None = None
    """Output directory (default: runs/<manifest name>)."""
    retry: int = 2
    """Further attempts of a job that fails or whose worker dies."""
    only: Literal["failed", "pending"] | None = None
    """Run only failed jobs (each gets 1 + retry fresh attempts) or only pending/interrupted ones."""
    skip_invalid: bool = False
    overrides: tuple[str, ...] = ()
    """KEY=VALUE overrides every job gets after its own (``--adapter``: the adapters' conditioners)."""
    """Run the valid rows of a manifest that has invalid ones (they are listed in the summary)."""
    gallery: bool = True
    """Write gallery.html at the end."""


@dataclass
class BatchResult:
    """What a batch did."""

    out: Path
    """The output directory."""
    counts: dict[str, int]
    """Jobs per state (and invalid rows) after the batch."""
    ran: int
    """Jobs this invocation ran (0: everything was finished already)."""
    summary: dict[str, Any] = field(default_factory=dict)
    """summary.json's content."""
    gallery: Path | None = None
    """gallery.html, when written."""
    interrupted: bool = False
    """Whether Ctrl-C stopped it (re-run the same command to resume)."""


def check_options(options: BatchOptions) -> None:
    if options.executor not in EXECUTORS:
        raise BatchError(f"unknown executor '{options.executor}'; choose local or ray")
    if options.workers is not None and options.workers < 1:
        raise BatchError(f"--workers must be 1 or more, got {options.workers}")
    if options.threads is not None and options.threads < 1:
        raise BatchError(f"--threads must be 1 or more, got {options.threads}")
    if options.retry < 0:
        raise BatchError(f"--retry must be 0 or more, got {options.retry}")
    if options.only is not None and options.only not in ONLY:
        raise BatchError(f"--only {options.only} is unknown; choose failed or pending")
    if options.address and options.executor != "ray":
        raise BatchError("--address is the Ray cluster's; pass it with --executor ray")


def run_batch(manifest_path: Path | str, options: BatchOptions | None = None,
              progress: BatchProgress | None = None) -> BatchResult:
    """Run the manifest's jobs into ``options.out`` (see the module docstring)."""
    options = options or BatchOptions()
    progress = progress or BatchProgress()
    check_options(options)
    manifest = load_manifest(manifest_path)
    if options.overrides:
        manifest.jobs = [replace(job, overrides=(*job.overrides, *options.overrides))
                         for job in manifest.jobs]
    manifest = validate(manifest)
    if manifest.problems and not options.skip_invalid:
        total = len(manifest.jobs) + len(manifest.problems)
        raise BatchError(f"{manifest.describe_problems()}\n{len(manifest.problems)} of {total} rows cannot run; fix "
                         f"them, or pass --skip-invalid to run the other {len(manifest.jobs)}")
    if not manifest.jobs:
        raise BatchError(f"{manifest.path}: no row can run\n{manifest.describe_problems()}")
    out = Path(options.out) if options.out is not None else Path("runs") / manifest.path.stem
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BatchError(f"cannot create the output directory {out}: {error.strerror}; choose another --out") from None
    with batch_lock(out):
        ledger = Ledger(out / "ledger.sqlite")
        try:
            return _run(manifest.path, [s.id for s in manifest.jobs], manifest, ledger, out, options, progress)
        finally:
            ledger.close()


def _run(manifest_path: Path, ids: list[str], manifest: Any, ledger: Ledger, out: Path, options: BatchOptions,
         progress: BatchProgress) -> BatchResult:
    def job_dir(job_id: str) -> Path:
        return out / "jobs" / job_id

    for job_id in ledger.sync(manifest.jobs, job_dir):
        shutil.rmtree(job_dir(job_id), ignore_errors=True)  # a changed job's partial run is another job's
    for row in ledger.jobs(ids):
        if row.state == "done" and not is_finished(job_dir(row.id)):
            ledger.reset(row.id)
    rows = ledger.jobs(ids)
    tries = _tries(rows, options)
    queue = deque(row for row in rows if row.id in tries)
    started = time.time()
    interrupted = False
    slots = 0
    if queue:
        executor = _executor(options)
        slots = executor.slots
        done = sum(1 for r in rows if r.state == "done")
        progress.batch_started(len(rows), done, len(queue), slots)
        driver = _Driver(ledger, progress, tries, queue)
        try:
            while queue or executor.in_flight():
                while queue and executor.in_flight() < executor.slots:
                    row = queue.popleft()
                    executor.submit(Task(row.id, row.spec.to_dict(), str(job_dir(row.id))))
                for event in executor.wait(0.5):
                    driver.handle(event, stopping=False)
        except KeyboardInterrupt:
            interrupted = True
            progress.message("interrupted: running jobs checkpoint at their next step; re-run the same command "
                             "to resume")
            for event in executor.close(interrupt=True):
                driver.handle(event, stopping=True)
        else:
            executor.close(interrupt=False)
        finally:
            progress.batch_finished()
    rows = ledger.jobs(ids)
    batch = {"executor": options.executor, "slots": slots, "ran": len(tries),
             "wall_time_s": round(time.time() - started, 3), "interrupted": interrupted}
    summary = write_summary(out, manifest_path, rows, manifest.problems, batch)
    gallery = None
    if options.gallery:
        from dreamsmith.exporters.gallery import write_gallery

        try:
            gallery = write_gallery(out)
        except DreamsmithError as error:
            progress.message(f"the gallery was not written: {error}")
    return BatchResult(out, summary["counts"], len(tries), summary, gallery, interrupted)


def _tries(rows: list[JobRow], options: BatchOptions) -> dict[str, int]:
    """Attempts each job to run may make in this invocation (jobs not to run are absent)."""
    limit = 1 + options.retry
    tries = {}
    for row in rows:
        unfinished = row.state in ("pending", "interrupted")
        if options.only == "failed":
            if row.state == "failed":
                tries[row.id] = limit
        elif unfinished:
            tries[row.id] = limit
        elif row.state == "failed" and options.only is None and row.attempts < limit:
            tries[row.id] = limit - row.attempts
    return tries


class _Driver:
    """Turns executor events into ledger updates, progress and retries (one policy for every executor)."""

    def __init__(self, ledger: Ledger, progress: BatchProgress, tries: dict[str, int], queue: deque) -> None:
        self.ledger, self.progress, self.tries, self.queue = ledger, progress, tries, queue
        self.rows = {row.id: row for row in ledger.jobs(tries)}

    def handle(self, event: Event, stopping: bool) -> None:
        job_id = event.job_id
        if event.kind == "started":
            self.ledger.started(job_id, event.worker)
            self.tries[job_id] -= 1
            self.progress.job_started(job_id, event.worker)
            return
        if event.kind == "finished" and event.result and event.result["ok"]:
            self.ledger.finished(job_id, event.result)
            self.progress.job_ended(job_id, "done", event.result["wall_time_s"], None)
            return
        error = event.result["error"] if event.result else event.error
        if event.kind == "lost" and (stopping or error == "interrupted"):
            self.ledger.stopped(job_id, "interrupted", None)
            self.progress.job_ended(job_id, "interrupted", None, None)
            return
        if self.tries[job_id] > 0 and not stopping:
            # a lost worker's job resumes from its checkpoint; a failed one retries the same way
            self.ledger.stopped(job_id, "interrupted" if event.kind == "lost" else "failed", error)
            self.progress.message(f"{job_id}: {error}; retrying ({self.tries[job_id]} attempt(s) left)")
            self.queue.append(self.rows[job_id])
            return
        self.ledger.stopped(job_id, "failed", error)
        self.progress.job_ended(job_id, "failed", None, error)


def _executor(options: BatchOptions) -> Executor:
    gpus = gpu_count()
    if options.executor == "ray":
        from dreamsmith.engine.batch.ray_executor import RayExecutor

        return RayExecutor(options.workers, options.threads, gpus, options.address)
    from dreamsmith.engine.batch.local import LocalExecutor

    return LocalExecutor(options.workers or max(1, gpus), options.threads, gpus)

