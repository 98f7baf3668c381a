"""Schema-driven fuzzing of every endpoint (schemathesis): whatever a client sends, never an HTTP 5xx.

The server runs for real (uvicorn on 127.0.0.1) but without its scheduler, so fuzzed jobs queue and
nothing heavy starts; every operation gets a bounded number of generated requests.
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed: pip install -e '.[server,dev]'")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev extra) is not installed")

import uvicorn  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from server_helpers import free_port  # noqa: E402

from dreamsmith.server.api import create_app  # noqa: E402
from dreamsmith.server.config import ServerConfig  # noqa: E402
from dreamsmith.server.store import JobStore  # noqa: E402

EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def live_schema(tmp_path_factory):
    jobs_dir = tmp_path_factory.mktemp("fuzz") / "jobs"
    store = JobStore(jobs_dir)
    finished = store.add("generate", {"prompt": "a red cube"})  # a finished job, so edit/export/resume get past 404
    store.transition(finished.id, ("queued",), "succeeded")
    run_dir = jobs_dir / finished.id / "run"
    run_dir.mkdir()
    (run_dir / "asset.glb").write_bytes(b"glTF")
    config = ServerConfig(port=free_port(), jobs_dir=jobs_dir, stream_seconds=0.5, max_upload_bytes=65536)
    server = uvicorn.Server(uvicorn.Config(create_app(config, run_jobs=False), host="127.0.0.1", port=config.port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield schemathesis.openapi.from_url(f"http://127.0.0.1:{config.port}/openapi.json"), finished.id
    server.should_exit = True
    thread.join(10)


def test_no_request_makes_the_server_fail(live_schema):
    schema, finished_id = live_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 12  # every endpoint of the API is fuzzed
    for operation in operations:
        cases = operation.as_strategy()
        if "job_id" in operation.path:  # half the cases name the finished job, to get past the 404
            cases = st.one_of(cases, cases.map(lambda case, job=finished_id: _with_job(case, job)))

        @given(case=cases)
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case):
            response = case.call(timeout=10)
            case.validate_response(response, checks=[not_a_server_error])

        no_server_error()


def _with_job(case, job_id: str):
    case.path_parameters = {**(case.path_parameters or {}), "job_id": job_id}
    return case
