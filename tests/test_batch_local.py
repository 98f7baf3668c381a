"""The local executor: threads split and GPUs pinned per worker, a job's failure that leaves its worker
serving the next job, and an idle worker's death that its replacement covers."""

from __future__ import annotations

import os
import signal

import pytest

from dreamsmith.engine.batch.executor import Task
from dreamsmith.engine.batch.local import LocalExecutor
from dreamsmith.engine.batch.manifest import JobSpec


def test_workers_split_the_cpu_threads_and_each_gets_one_gpu():
    executor = LocalExecutor(3, threads=4, gpus=2)
    assert [executor.environment(i).get("CUDA_VISIBLE_DEVICES") for i in range(3)] == ["0", "1", "0"]
    assert executor.environment(0)["OMP_NUM_THREADS"] == "4"
    assert "CUDA_VISIBLE_DEVICES" not in LocalExecutor(2, threads=1, gpus=0).environment(1)
    assert LocalExecutor(64).threads == 1  # never zero threads


@pytest.mark.slow
def test_a_failing_job_is_reported_and_its_worker_runs_the_next_job(tmp_path):
    executor = LocalExecutor(1, threads=1)
    missing = JobSpec(id="missing", prompt="a red cube", model=str(tmp_path / "no-model"), steps=1).to_dict()
    events = []
    try:
        for job_id in ("first", "second", "third"):
            if job_id == "third":  # the idle worker dies between jobs
                os.kill(executor.workers[0].process.pid, signal.SIGKILL)
                executor.workers[0].process.join()
            executor.submit(Task(job_id, missing, str(tmp_path / job_id)))
            while not any(e.kind != "started" and e.job_id == job_id for e in events):
                events += executor.wait(1.0)
    finally:
        events += executor.close(interrupt=False)
    started = [e for e in events if e.kind == "started"]
    finished = [e for e in events if e.kind == "finished"]
    assert [e.job_id for e in finished] == ["first", "second", "third"]
    assert all(not e.result["ok"] and "no-model" in e.result["error"] for e in finished)
    assert started[0].worker == started[1].worker != started[2].worker  # one process served two; a new one the third
    assert executor.in_flight() == 0
