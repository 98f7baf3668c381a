"""One job in its own process: ``python -m dreamsmith.server.worker JOBS_DIR JOB_ID``.

The worker loads the engine (torch, the diffusion model), runs the job into ``JOBS_DIR/JOB_ID/run``
and writes its progress into the job's row. SIGINT stops it at the next step boundary with a
checkpoint (the engine's own handling); so does the death of the server that started it, which a
watchdog thread notices. Exit status: 0 done, 130 interrupted, 1 the job's own error (in the row).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from dreamsmith.engine import Progress, export_run, generate, make_config
from dreamsmith.errors import DreamsmithError
from dreamsmith.server.scheduler import INTERRUPTED
from dreamsmith.server.schemas import generate_overrides
from dreamsmith.server.store import Job, JobStore


class StoreProgress(Progress):
    """Writes stage, step, losses, ETA and the latest preview into the job's row."""

    def __init__(self, store: JobStore, job: Job, run_dir: Path, stage_steps: list[tuple[str, int]]) -> None:
        self.store, self.job, self.run_dir = store, job, run_dir
        self.stage_steps = stage_steps
        self.all_steps = sum(steps for _, steps in stage_steps)
        self.before = 0
        self.first_done: int | None = None
        self.first_time = 0.0
        self.preview: str | None = None

    def stage_started(self, name: str, start: int, total: int) -> None:
        index = [stage for stage, _ in self.stage_steps].index(name)
        self.before = sum(steps for _, steps in self.stage_steps[:index])
        self.store.update(self.job.id, stage=name, step=start, total=total, done_steps=self.before + start,
                          all_steps=self.all_steps)

    def step(self, step: int, loss: float, logs: dict[str, float]) -> None:
        done = self.before + step
        now = time.monotonic()
        if self.first_done is None:
            self.first_done, self.first_time = done, now
        rate = (now - self.first_time) / (done - self.first_done) if done > self.first_done else None
        eta = rate * (self.all_steps - done) if rate is not None else None
        self.store.update(self.job.id, step=step, done_steps=done, eta_s=eta, preview=self._latest_preview(),
                          losses={"loss": float(loss), **{key: float(value) for key, value in logs.items()}})

    def message(self, text: str) -> None:
        self.store.update(self.job.id, message=text)

    def _latest_preview(self) -> str | None:
        folder = self.run_dir / "previews"
        pngs = sorted(folder.glob("*.png"), key=lambda path: path.stat().st_mtime_ns) if folder.is_dir() else []
        return f"previews/{pngs[-1].name}" if pngs else None


def run_job(store: JobStore, job: Job) -> None:
    """Run ``job`` to completion into its folder's ``run`` directory (raises what the engine raises)."""
    run_dir = store.job_dir(job.id) / "run"
    request = job.request
    if job.kind == "export":
        source = store.job_dir(job.source) / "run"
        store.update(job.id, message="exporting")
        export_run(source, formats=request["formats"], texture_size=request["texture_size"],
                   max_triangles=request["max_triangles"], lods=request["lods"], origin=request["origin"],
                   scale=request["scale"], profile=request["profile"], out=run_dir, device=job.device or "auto")
        store.update(job.id, message="exported")
        return
    config = make_config(request["prompt"], request["preset"], request["model"], request["steps"], request["seed"],
                         job.device, generate_overrides(request))
    progress = StoreProgress(store, job, run_dir, [(stage.name, stage.steps) for stage in config.stages])
    resume = job.resume and (run_dir / "checkpoints" / "last.pt").is_file()
    generate(config, run_dir, resume=resume, progress=progress)
    store.update(job.id, preview="previews/final.png", eta_s=0.0, message="done")


def _stop_when_orphaned(parent: int) -> None:
    """If the server dies (even by SIGKILL), stop at the next step boundary as on Ctrl-C."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str]) -> int:
    jobs_dir, job_id = argv
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), daemon=True).start()
    store = JobStore(jobs_dir)
    job = store.get(job_id)
    if job is None:
        print(f"no job {job_id} in {jobs_dir}", file=sys.stderr)
        return 1
    try:
        run_job(store, job)
    except KeyboardInterrupt:
        return INTERRUPTED
    except DreamsmithError as error:
        store.update(job.id, error=str(error))
        return 1
    except Exception as error:  # the job fails, the server goes on; the traceback is in worker.log
        traceback.print_exc()
        store.update(job.id, error=f"internal error: {type(error).__name__}: {error} (see the job's worker.log)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
