"""Shared by the server tests: an API client over loopback, a live `dreamsmith serve`, a small GLB."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LiveServer:
    """`python -m dreamsmith serve` on 127.0.0.1 (a subprocess, as a user starts it), with its own jobs folder."""

    def __init__(self, jobs_dir: Path, port: int | None = None, *extra: str) -> None:
        self.jobs_dir, self.port = jobs_dir, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.log = open(jobs_dir.parent / f"server-{self.port}-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dreamsmith", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--jobs-dir", str(jobs_dir), *extra], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.http = httpx.Client(base_url=self.url, timeout=30.0)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {Path(self.log.name).read_text()}")
            time.sleep(0.2)

    def wait_for(self, job_id: str, done: callable, timeout: float = 300.0) -> dict:
        """Poll the job's status until ``done(status)``; returns that status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.http.get(f"/jobs/{job_id}").json()
            if done(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never got there: {status}")
            time.sleep(0.1)

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """The job's server-sent events as (event, data) until the stream ends."""
        with self.http.stream("GET", f"/jobs/{job_id}/events", timeout=300.0) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: "):
                    yield event, json.loads(line[len("data: "):])

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs in the server."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.http.close()

    def stop(self) -> None:
        """Ctrl-C, as a user stops it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(120)
        self.http.close()
        self.log.close()


def box_glb() -> bytes:
    """A 12-triangle box as GLB bytes (trimesh's writer)."""
    import trimesh

    buffer = io.BytesIO()
    trimesh.creation.box().export(buffer, file_type="glb")
    return buffer.getvalue()
