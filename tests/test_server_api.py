"""The job server's HTTP layer: requests, refusals, paths that cannot escape, uploads, the event stream.

The app runs without its scheduler here (jobs stay queued); tests/test_server_jobs.py runs real jobs.
"""

from __future__ import annotations

import json
import socket
import struct

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed: pip install -e '.[server,dev]'")

from fastapi.testclient import TestClient  # noqa: E402
from server_helpers import box_glb  # noqa: E402

from dreamsmith.server.access import artifact_path  # noqa: E402
from dreamsmith.server.api import create_app  # noqa: E402
from dreamsmith.server.config import ServerConfig, ServerError  # noqa: E402
from dreamsmith.server.scheduler import recover  # noqa: E402
from dreamsmith.server.store import JobStore  # noqa: E402

TOKEN = "s3cret-token-0123456789"


def client_for(tmp_path, address="127.0.0.1", host="127.0.0.1:8642", **config) -> TestClient:
    app = create_app(ServerConfig(jobs_dir=tmp_path / "jobs", **config), run_jobs=False)
    return TestClient(app, base_url=f"http://{host}", client=(address, 50000))


@pytest.fixture
def api(tmp_path) -> TestClient:
    return client_for(tmp_path, max_upload_bytes=4096, stream_seconds=1.0)


def submit(api: TestClient, **request) -> dict:
    response = api.post("/jobs", json={"prompt": "a red cube", **request})
    assert response.status_code == 201, response.text
    return response.json()


def test_submitted_job_is_queued_listed_and_reported(api):
    job = submit(api, steps=5, seed=3, lods=1, max_triangles=500)
    assert job["state"] == "queued" and len(job["id"]) == 32 and job["runs"] == 0
    assert [j["id"] for j in api.get("/jobs").json()["jobs"]] == [job["id"]]
    assert api.get("/jobs", params={"state": "running"}).json()["jobs"] == []
    status = api.get(f"/jobs/{job['id']}").json()
    assert status["prompt"] == "a red cube" and status["preview_url"] is None
    assert api.get("/health").json()["queued"] == 1


def test_bad_requests_are_client_errors_with_a_one_line_detail(api):
    assert api.post("/jobs", json={"prompt": "a red cube", "colour": "red"}).status_code == 422
    assert api.post("/jobs", json={"prompt": "a red cube", "steps": -1}).status_code == 422
    assert api.post("/jobs", json={"prompt": ""}).status_code == 422
    assert api.post("/jobs", json={"prompt": "x", "texture_size": 1000}).status_code == 422
    refused = api.post("/jobs", json={"prompt": "a red cube", "overrides": ["allow_pickle=true"]})
    assert refused.status_code == 400 and "set by the server" in refused.json()["detail"]
    assert api.post("/jobs", json={"prompt": "x", "overrides": [" device = cuda"]}).status_code == 400
    assert api.get("/jobs/" + "0" * 32).status_code == 404
    assert api.get("/jobs/not-a-job").status_code == 422
    assert api.get("/jobs", params={"state": "nonsense"}).status_code == 422


def test_cancel_and_resume_move_a_job_through_its_states(api):
    job_id = submit(api)["id"]
    cancelled = api.post(f"/jobs/{job_id}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    assert api.post(f"/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    resumed = api.post(f"/jobs/{job_id}/resume")
    assert resumed.status_code == 202 and resumed.json()["state"] == "queued"
    assert api.post(f"/jobs/{job_id}/resume").status_code == 409


def test_running_job_is_asked_to_cancel_and_finished_jobs_refuse(tmp_path):
    api = client_for(tmp_path)
    store = JobStore(tmp_path / "jobs")
    job_id = submit(api)["id"]
    assert store.claim_next("cpu").id == job_id
    assert api.post(f"/jobs/{job_id}/cancel").json()["state"] == "cancelling"
    store.transition(job_id, ("cancelling",), "succeeded")
    assert api.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_restart_requeues_interrupted_jobs_to_resume(tmp_path):
    store = JobStore(tmp_path / "jobs")
    running = store.add("generate", {"prompt": "a red cube"})
    cancelling = store.add("generate", {"prompt": "a red cube"})
    store.claim_next("cpu"), store.claim_next("cpu")
    store.update(running.id, pid=2**22 + 12345)  # no such process: its worker is gone
    store.transition(cancelling.id, ("running",), "cancelling")
    recover(store)
    assert (store.get(running.id).state, store.get(running.id).resume) == ("queued", True)
    assert store.get(cancelling.id).state == "cancelled"
    assert store.claim_next("cuda") is None  # a started job resumes on its own device
    assert store.claim_next("cpu").id == running.id


def test_clients_off_this_machine_need_the_token(tmp_path):
    remote = client_for(tmp_path, address="203.0.113.7")
    refused = remote.get("/jobs")
    assert refused.status_code == 403 and "--token" in refused.json()["detail"]
    assert remote.get("/openapi.json").status_code == 403
    with_token = client_for(tmp_path, address="203.0.113.7", host="assets.example:8642", token=TOKEN)
    assert with_token.get("/jobs").status_code == 401
    assert with_token.get("/jobs", headers={"Authorization": "Bearer wrong-token-000000"}).status_code == 401
    assert with_token.get("/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    local = client_for(tmp_path, token=TOKEN)
    assert local.get("/jobs").status_code == 401  # with a token, every client needs it


def test_a_foreign_host_name_is_refused_without_a_token(tmp_path):
    rebound = client_for(tmp_path, host="attacker.example:8642")
    assert rebound.get("/jobs").status_code == 403
    assert client_for(tmp_path, host="localhost:8642").get("/jobs").status_code == 200
    assert client_for(tmp_path, host="[::1]:8642").get("/jobs").status_code == 200


def test_exposed_address_without_token_is_refused_before_listening():
    with pytest.raises(ServerError, match="without a token"):
        ServerConfig(host="0.0.0.0").check()
    with pytest.raises(ServerError, match="16 characters"):
        ServerConfig(host="0.0.0.0", token="short").check()
    with pytest.raises(ServerError, match="name each once"):
        ServerConfig(devices=("cpu", "cpu")).check()
    ServerConfig(host="0.0.0.0", token=TOKEN).check()
    ServerConfig(host="::1").check()


def test_artifact_names_cannot_leave_the_run_directory(api, tmp_path):
    job_id = submit(api)["id"]
    run_dir = tmp_path / "jobs" / job_id / "run"
    (run_dir / "previews").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "asset.glb").write_bytes(b"glTF-bytes")
    (run_dir / "previews" / "final.png").write_bytes(b"png")
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"pickle")
    (tmp_path / "secret.json").write_text("{}")
    (run_dir / "link.json").symlink_to(tmp_path / "secret.json")
    names = [a["name"] for a in api.get(f"/jobs/{job_id}/artifacts").json()["artifacts"]]
    assert names == ["asset.glb", "previews/final.png"]
    assert api.get(f"/jobs/{job_id}/artifacts/asset.glb").content == b"glTF-bytes"
    assert api.get(f"/jobs/{job_id}/artifacts/previews/final.png").content == b"png"
    for name in ("../../secret.json", "..%2F..%2Fsecret.json", "%2e%2e/%2e%2e/secret.json", "link.json",
                 "checkpoints/last.pt", "previews/../../../secret.json", ".hidden.json", "a/b/c.png"):
        response = api.get(f"/jobs/{job_id}/artifacts/{name}")
        assert response.status_code in (404, 422), name  # a client may normalize ".." away first
        assert response.content != b"{}"
        assert artifact_path(run_dir, name) is None, name  # as the handler sees it, unnormalized


def test_texture_upload_is_size_limited_type_checked_and_then_refused_as_unavailable(api):
    glb = box_glb()
    assert len(glb) < 4096
    url = "/jobs/texture?prompt=a%20red%20cube"
    assert api.post(url, content=glb, headers={"content-type": "text/plain"}).status_code == 415
    assert api.post(url, content=b"solid cube\nfacet", headers={"content-type": "model/gltf-binary"}).status_code == 415
    truncated = api.post(url, content=glb[:-8], headers={"content-type": "model/gltf-binary"})
    assert truncated.status_code == 400 and "truncated" in truncated.json()["detail"]
    too_big = api.post(url, content=glb + b"\0" * 4096, headers={"content-type": "model/gltf-binary"})
    assert too_big.status_code == 413
    no_mesh = _glb({"asset": {"version": "2.0"}})
    assert "holds no mesh" in api.post(url, content=no_mesh, headers={"content-type": "model/gltf-binary"}).text
    valid = api.post(url, content=glb, headers={"content-type": "model/gltf-binary"})
    assert valid.status_code == 422 and "no texture stage yet" in valid.json()["detail"]
    assert "1 meshes" in valid.json()["detail"]


def test_edit_needs_a_finished_asset_and_is_refused_as_unavailable(api, tmp_path):
    job_id = submit(api)["id"]
    body = {"instruction": "make it blue"}
    assert api.post("/jobs/" + "f" * 32 + "/edit", json=body).status_code == 404
    assert api.post(f"/jobs/{job_id}/edit", json=body).status_code == 409
    JobStore(tmp_path / "jobs").transition(job_id, ("queued",), "succeeded")
    refused = api.post(f"/jobs/{job_id}/edit", json=body)
    assert refused.status_code == 422 and "no edit stage yet" in refused.json()["detail"]


def test_export_queues_a_job_of_a_finished_generate_job(api, tmp_path):
    job_id = submit(api)["id"]
    options = {"formats": ["glb", "obj"], "texture_size": 512, "max_triangles": 300, "lods": 2}
    assert api.post(f"/jobs/{job_id}/export", json=options).status_code == 409
    JobStore(tmp_path / "jobs").transition(job_id, ("queued",), "succeeded")
    export = api.post(f"/jobs/{job_id}/export", json=options)
    assert export.status_code == 201
    assert (export.json()["kind"], export.json()["source"], export.json()["state"]) == ("export", job_id, "queued")
    assert api.post(f"/jobs/{export.json()['id']}/export", json=options).status_code == 409


def test_event_stream_sends_the_status_then_ends_when_the_job_finishes(api, tmp_path):
    job_id = submit(api)["id"]
    JobStore(tmp_path / "jobs").transition(job_id, ("queued",), "failed", error="boom")
    lines = api.get(f"/jobs/{job_id}/events").text.splitlines()
    events = [line.split(": ", 1)[1] for line in lines if line.startswith("event: ")]
    data = [json.loads(line.split(": ", 1)[1]) for line in lines if line.startswith("data: ")]
    assert events == ["status", "end"] and data[-1]["state"] == "failed" and data[-1]["error"] == "boom"
    queued = submit(api)["id"]  # never finishes here: the stream closes after stream_seconds
    assert api.get(f"/jobs/{queued}/events").text.count("event: status") == 1


def _glb(document: dict) -> bytes:
    payload = json.dumps(document).encode()
    payload += b" " * (-len(payload) % 4)
    return struct.pack("<4sII", b"glTF", 2, 20 + len(payload)) + struct.pack("<II", len(payload), 0x4E4F534A) + payload


def test_serve_command_refuses_bad_settings_in_one_line(tmp_path):
    from test_generate import assert_clean_failure, run_cli

    assert_clean_failure(run_cli("serve", "--host", "0.0.0.0", "--jobs-dir", str(tmp_path / "jobs")), "without a token")
    (tmp_path / "file").write_text("")
    assert_clean_failure(run_cli("serve", "--jobs-dir", str(tmp_path / "file")), "cannot use jobs folder")
    assert_clean_failure(run_cli("serve", "--port", "70000"), "--port")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_clean_failure(run_cli("serve", "--port", port, "--jobs-dir", str(tmp_path / "jobs")), "cannot listen")
    help_text = run_cli("serve", "--help").stdout
    for option in ("--host", "--port", "--token", "--jobs-dir", "--device"):
        assert option in help_text
