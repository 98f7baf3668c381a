"""The batch ledger, the retry policy, the output-directory lock and the ETA: no jobs run here."""

import pytest

from dreamsmith.engine.batch.ledger import Ledger
from dreamsmith.engine.batch.lock import batch_lock
from dreamsmith.engine.batch.manifest import JobSpec
from dreamsmith.engine.batch.progress import eta_seconds
from dreamsmith.engine.batch.runner import BatchOptions, _tries
from dreamsmith.errors import BatchError

RESULT = {"wall_time_s": 12.5, "device": "cpu on host", "qa": "warn", "triangles": 5000,
          "outputs": ["asset.glb", "qa.json"]}


def specs(*ids: str, seed: int = 0) -> list[JobSpec]:
    return [JobSpec(id=job_id, prompt="a red cube", line=line, seed=seed) for line, job_id in enumerate(ids, 1)]


def job_dir(job_id: str) -> str:
    return f"out/jobs/{job_id}"


def states(ledger: Ledger) -> dict[str, tuple[str, int]]:
    return {row.id: (row.state, row.attempts) for row in ledger.jobs()}


def test_ledger_records_attempts_results_and_survives_reopening(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.sync(specs("a", "b", "c"), job_dir) == []
    ledger.started("a", "local-0 pid 1")
    ledger.finished("a", RESULT)
    ledger.started("b", "local-1 pid 2")
    ledger.stopped("b", "failed", "boom")
    ledger.started("c", "local-0 pid 1")
    ledger.close()  # the driver died with c running

    reopened = Ledger(tmp_path / "ledger.sqlite")
    reopened.sync(specs("a", "b", "c"), job_dir)
    assert states(reopened) == {"a": ("done", 1), "b": ("failed", 1), "c": ("interrupted", 1)}
    done = reopened.jobs(["a"])[0]
    assert (done.qa, done.triangles, done.wall_time_s, done.outputs) == ("warn", 5000, 12.5, ["asset.glb", "qa.json"])
    assert reopened.jobs(["b"])[0].error == "boom"


def test_a_changed_job_restarts_unless_it_is_finished(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.sync(specs("a", "b"), job_dir)
    ledger.started("a", "w")
    ledger.finished("a", RESULT)
    ledger.started("b", "w")
    ledger.stopped("b", "failed", "boom")
    changed = [JobSpec(id="b", prompt="a blue cube", line=2)]
    assert ledger.sync(changed, job_dir) == ["b"]
    assert states(ledger)["b"] == ("pending", 0)
    moved = [JobSpec(id="a", prompt="a red cube", line=9, seed=0)]
    assert ledger.sync(moved, job_dir) == [] and ledger.jobs(["a"])[0].line == 9  # a moved row is the same job
    with pytest.raises(BatchError, match="job 'a' changed in the manifest since it finished.*out/jobs/a"):
        ledger.sync(specs("a", seed=7), job_dir)


def test_retry_policy_gives_each_job_its_attempts(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.sync(specs("done", "fresh", "cut", "failed-once", "failed-out"), job_dir)
    ledger.started("done", "w")
    ledger.finished("done", RESULT)
    ledger.started("cut", "w")
    ledger.stopped("cut", "interrupted", None)
    for job_id, attempts in (("failed-once", 1), ("failed-out", 3)):
        for _ in range(attempts):
            ledger.started(job_id, "w")
        ledger.stopped(job_id, "failed", "boom")
    rows = ledger.jobs()
    assert _tries(rows, BatchOptions(retry=2)) == {"fresh": 3, "cut": 3, "failed-once": 2}
    assert _tries(rows, BatchOptions(retry=0)) == {"fresh": 1, "cut": 1}
    assert _tries(rows, BatchOptions(retry=1, only="failed")) == {"failed-once": 2, "failed-out": 2}
    assert _tries(rows, BatchOptions(retry=2, only="pending")) == {"fresh": 3, "cut": 3}


def test_a_second_batch_on_the_same_output_directory_is_refused(tmp_path):
    held = batch_lock(tmp_path)
    held.__enter__()
    with pytest.raises(BatchError, match=r"another batch \(pid \d+\) is running in"), batch_lock(tmp_path):
        pass
    held.__exit__(None, None, None)
    with batch_lock(tmp_path):  # released: the next batch may run
        pass


def test_eta_counts_queued_jobs_and_what_running_ones_have_left():
    assert eta_seconds(5, [], 2, []) is None
    # mean 10 s; 2 running (4 s and 12 s in: 6 s and 0 s left) + 3 queued (30 s) on 2 slots
    assert eta_seconds(5, [8.0, 12.0], 2, [4.0, 12.0]) == pytest.approx(18.0)
    assert eta_seconds(0, [10.0], 1, []) == 0.0
