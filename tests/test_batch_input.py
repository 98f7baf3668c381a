"""Bad batch input: one clear message each, nothing run (through the CLI, a few seconds each: slow)."""

from __future__ import annotations

import socket
import time

import pytest
from batch_helpers import run_batch_cli, write_manifest

from dreamsmith.engine.batch.ray_executor import check_reachable
from dreamsmith.errors import BatchError


def error_lines(result) -> list[str]:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.slow
def test_an_invalid_manifest_lists_every_bad_row_and_runs_nothing(tmp_path):
    manifest = write_manifest(tmp_path)
    lines = error_lines(run_batch_cli(str(manifest), "--out", str(tmp_path / "out")))
    assert lines[0] == f"error: {manifest}:5: 'image' is not supported yet: this engine makes assets from text " \
                       "prompts only, not from image prompts; remove the field (or the row)"
    assert lines[1] == "1 of 5 rows cannot run; fix them, or pass --skip-invalid to run the other 4"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("content", "args", "needle"), [
    ('{"prompt": "a red cube"}\n{"prompt": "a red cube"}\n', [], "job id 'a-red-cube' is already used by line 1"),
    ('{"prompt": "a red cube"\n', [], "props.jsonl:1: not JSON"),
    ('{"prompt": "a red cube"}\n', ["--workers", "0"], "--workers must be 1 or more"),
    ('{"prompt": "a red cube"}\n', ["--only", "done"], "--only done is unknown"),
    ('{"prompt": "a red cube"}\n', ["--executor", "dask"], "unknown executor 'dask'"),
])
def test_bad_input_is_one_line(tmp_path, content, args, needle):
    (tmp_path / "props.jsonl").write_text(content)
    lines = error_lines(run_batch_cli(str(tmp_path / "props.jsonl"), "--out", str(tmp_path / "out"), *args))
    assert len(lines) <= 2 and needle in lines[0]


def test_a_ray_address_that_does_not_answer_is_refused_within_seconds():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(BatchError, match=rf"no Ray cluster answers at 127.0.0.1:{port} \(.*\); start one with"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(BatchError, match="is not host:port"):
        check_reachable("somewhere")
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_the_cli_refuses_an_unreachable_ray_address_in_one_line(tmp_path):
    pytest.importorskip("ray", reason="Ray is the distributed extra: pip install -e '.[distributed]'")
    (tmp_path / "props.jsonl").write_text('{"prompt": "a red cube", "steps": 1}\n')
    lines = error_lines(run_batch_cli(str(tmp_path / "props.jsonl"), "--out", str(tmp_path / "out"), "--executor",
                                      "ray", "--address", "ray://127.0.0.1:9"))
    assert len(lines) == 1 and lines[0].startswith("error: no Ray cluster answers at ray://127.0.0.1:9")
