"""`dreamsmith batch` end to end on the embedded prior: a bad row reported by line, a worker killed
mid-job without losing the batch, idempotent re-runs, the same assets from Ray, and bad input."""

from __future__ import annotations

import json
import time

import pytest
from batch_helpers import VICTIM, asset_files, run_and_kill_victim, run_batch_cli, write_manifest
from export_shapes import validate_gltf

from dreamsmith.engine.batch.lock import batch_lock

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_batch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    manifest = write_manifest(folder)
    out = folder / "local"
    result, killed_at = run_and_kill_victim(out, str(manifest), "--out", str(out), "--workers", "2", "--skip-invalid",
                                            "--retry", "1")
    return manifest, out, result, killed_at


def test_a_killed_worker_loses_nothing_and_the_bad_row_is_reported_by_line(local_batch):
    manifest, out, result, killed_at = local_batch
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{VICTIM}: its worker (local-" in result.stderr and "was killed by SIGKILL; retrying" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"pending": 0, "running": 0, "interrupted": 0, "done": 4, "failed": 0, "invalid": 1}
    invalid = summary["invalid_rows"][0]
    assert invalid["line"] == 5 and "'image' is not supported yet" in invalid["error"]
    jobs = {job["id"]: job for job in summary["jobs"]}
    assert jobs[VICTIM]["attempts"] == 2 and all(j["attempts"] == 1 for i, j in jobs.items() if i != VICTIM)
    victim_report = json.loads((out / "jobs" / VICTIM / "report.json").read_text())
    assert victim_report["resumed_from_step"] >= killed_at >= 2 and victim_report["stages"][0]["steps"] == 12
    for job in jobs.values():
        assert job["state"] == "done" and job["qa"] in ("pass", "warn") and job["triangles"] > 0
        assert job["device"].startswith("cpu on ") and job["wall_time_s"] > 0
        report = validate_gltf(out / job["dir"] / "asset.glb")
        assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
        assert json.loads((out / job["dir"] / "batch_job.json").read_text())["state"] == "done"
    assert (out / "jobs" / "a-blue-sphere-seed2" / "asset.obj").is_file()
    assert "asset.obj" in jobs["a-blue-sphere-seed2"]["outputs"]
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 4 + 1 and csv_lines[-1].startswith(",5,") and ",invalid," in csv_lines[-1]
    gallery = (out / "gallery.html").read_text()
    assert gallery.count("<model-viewer ") == 4 and len(list((out / "gallery" / "models").glob("*.js"))) == 4


def test_rerunning_the_same_batch_does_nothing(local_batch):
    manifest, out, _, _ = local_batch
    before = {p: p.stat().st_mtime_ns for p in (out / "jobs").rglob("*") if p.is_file()}
    started = time.monotonic()
    result = run_batch_cli(str(manifest), "--out", str(out), "--workers", "2", "--skip-invalid", "--retry", "1")
    assert result.returncode == 0, result.stderr
    message = " ".join(result.stderr.split())
    assert "nothing to do: 4 done, 0 failed, 0 unfinished, 1 invalid rows (0 run now)" in message
    after = {p: p.stat().st_mtime_ns for p in (out / "jobs").rglob("*") if p.is_file()}
    assert after == before
    assert time.monotonic() - started < 120  # no job ran: validation and imports only


def test_a_second_batch_on_a_busy_output_directory_is_refused_in_one_line(local_batch):
    manifest, out, _, _ = local_batch
    with batch_lock(out):
        result = run_batch_cli(str(manifest), "--out", str(out), "--skip-invalid")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: another batch (pid ") and str(out) in " ".join(result.stderr.split())


def test_ray_with_a_local_two_cpu_cluster_makes_the_same_files_as_local(local_batch, tmp_path):
    pytest.importorskip("ray", reason="Ray is the distributed extra: pip install -e '.[distributed]'")
    manifest, local_out, _, _ = local_batch
    out = tmp_path / "ray"
    result = run_batch_cli(str(manifest), "--out", str(out), "--executor", "ray", "--workers", "2", "--threads", "1",
                           "--skip-invalid")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["done"] == 4 and summary["batch"]["slots"] == 2
    ray_files, local_files = asset_files(out), asset_files(local_out)
    # a GLB and a poster per job; one OBJ with its texture
    assert sorted(ray_files) == sorted(local_files) and len(ray_files) == 4 * 2 + 2
    differing = [name for name in local_files if ray_files[name] != local_files[name]]
    assert differing == []  # the killed-and-resumed job included: resuming is exact
