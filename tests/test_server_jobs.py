"""Real jobs through a live `dreamsmith serve` (tiny random model): progress, download, cancel and
resume, a server killed mid-job whose restart finishes the job from its checkpoint, and Ctrl-C."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed: pip install -e '.[server,dev]'")

import trimesh  # noqa: E402
from server_helpers import LiveServer  # noqa: E402
from test_generate import SMALL  # noqa: E402

from dreamsmith.engine.checkpoint import load_checkpoint  # noqa: E402
from dreamsmith.server.store import JobStore  # noqa: E402

pytestmark = pytest.mark.slow


def request(model, steps: int) -> dict:
    return {"prompt": "a hamburger", "model": str(model), "steps": steps, "seed": 3,
            "overrides": [*SMALL, "checkpoint_every=1000", "preview_every=3"]}


@pytest.fixture
def server(tmp_path):
    live = LiveServer(tmp_path / "jobs")
    yield live
    live.stop()


def test_job_streams_progress_and_its_asset_downloads(server, tiny_sd_dir, tmp_path):
    job = server.http.post("/jobs", json=request(tiny_sd_dir, 6)).json()
    events = list(server.events(job["id"]))
    statuses = [data for event, data in events if event == "status"]
    assert events[-1][0] == "end" and events[-1][1]["state"] == "succeeded"
    done = [status["done_steps"] for status in statuses if status["state"] == "running"]
    assert done == sorted(done) and done[-1] == 6 and len(set(done)) >= 3
    assert any(status["eta_s"] is not None and status["eta_s"] > 0 for status in statuses)
    assert all("loss" in status["losses"] for status in statuses if status["done_steps"] > 0)
    # The latest preview follows the steps (one every 3); which ones a 0.25 s poll sees depends on speed.
    shown = [(int(status["preview_url"][-10:-4]), status["done_steps"]) for status in statuses
             if (status["preview_url"] or "").split("/")[-1].startswith("coarse_")]
    assert shown and all(step % 3 == 0 and 3 <= step <= done for step, done in shown)
    final = events[-1][1]
    assert final["runs"] == 1 and final["preview_url"].endswith("previews/final.png")
    assert server.http.get(final["preview_url"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    names = {a["name"] for a in server.http.get(final["artifacts_url"]).json()["artifacts"]}
    expected = {"asset.glb", "qa.json", "report.json", "config.yaml", "previews/final.png",
                "previews/coarse_000003.png"}
    assert expected <= names
    glb = tmp_path / "asset.glb"
    glb.write_bytes(server.http.get(f"/jobs/{job['id']}/artifacts/asset.glb").content)
    report = server.http.get(f"/jobs/{job['id']}/artifacts/report.json").json()
    assert len(trimesh.load(glb, force="mesh").faces) == report["asset"]["faces"] > 0
    assert report["stages"][0]["steps"] == 6 and report["resumed_from_step"] is None


def test_cancel_stops_at_a_step_with_a_checkpoint_and_resume_finishes(server, tiny_sd_dir):
    job_id = server.http.post("/jobs", json=request(tiny_sd_dir, 40)).json()["id"]
    server.wait_for(job_id, lambda status: status["done_steps"] >= 3)
    assert server.http.post(f"/jobs/{job_id}/cancel").status_code == 202
    cancelled = server.wait_for(job_id, lambda status: status["state"] == "cancelled")
    stopped_at = load_checkpoint(server.jobs_dir / job_id / "run" / "checkpoints" / "last.pt")["step"]
    assert 3 <= stopped_at == cancelled["step"] < 40
    assert server.http.post(f"/jobs/{job_id}/resume").json()["state"] == "queued"
    finished = server.wait_for(job_id, lambda status: status["state"] in ("succeeded", "failed"))
    assert finished["state"] == "succeeded" and finished["runs"] == 2, finished
    report = server.http.get(f"/jobs/{job_id}/artifacts/report.json").json()
    assert report["resumed_from_step"] == stopped_at and report["stages"][0]["steps"] == 40


def test_killed_server_restarts_and_finishes_the_job_from_its_checkpoint(tiny_sd_dir, tmp_path):
    first = LiveServer(tmp_path / "jobs")
    job_id = first.http.post("/jobs", json=request(tiny_sd_dir, 40)).json()["id"]
    first.wait_for(job_id, lambda status: status["done_steps"] >= 3)
    first.kill()  # the orphaned worker notices, checkpoints at its step boundary and exits
    second = LiveServer(tmp_path / "jobs", first.port)
    try:
        finished = second.wait_for(job_id, lambda status: status["state"] in ("succeeded", "failed"))
        assert finished["state"] == "succeeded" and finished["runs"] == 2, finished
        report = second.http.get(f"/jobs/{job_id}/artifacts/report.json").json()
        assert 3 <= report["resumed_from_step"] < 40 and report["stages"][0]["steps"] == 40
        log = (tmp_path / "jobs" / job_id / "worker.log").read_text()
        assert finished["message"] == "done" and finished["error"] is None  # no stale interruption message
        assert log.count("Traceback") == 0, log
    finally:
        second.stop()


def test_ctrl_c_on_the_server_checkpoints_the_running_job_and_requeues_it(tiny_sd_dir, tmp_path):
    server = LiveServer(tmp_path / "jobs")
    job_id = server.http.post("/jobs", json=request(tiny_sd_dir, 40)).json()["id"]
    server.wait_for(job_id, lambda status: status["done_steps"] >= 3)
    server.stop()  # SIGINT, as Ctrl-C in its terminal
    job = JobStore(tmp_path / "jobs").get(job_id)
    stopped_at = load_checkpoint(tmp_path / "jobs" / job_id / "run" / "checkpoints" / "last.pt")["step"]
    assert (job.state, job.resume, job.pid) == ("queued", True, None)
    assert 3 <= stopped_at == job.step < 40
