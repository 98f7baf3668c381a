"""Server overhead per job: the same `generate` through `dreamsmith serve` against the CLI.

    python benchmarks/server_overhead.py [--prompt "a red cube"] [--steps 30] [--repeats 2]

Each repeat times `dreamsmith generate PROMPT --steps N --quiet` as a subprocess (process start,
model load, steps, export) and the same request submitted to a live server on 127.0.0.1, from POST
to the job's `succeeded` state as a client sees it; which goes first alternates between repeats, so
drifts in machine load hit both. Prints JSON with every time, the median ratio server / CLI, the
time each job waited in the queue and what one step's progress report costs the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def call(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def time_cli(prompt: str, steps: int, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dreamsmith", "generate", prompt, "--steps", str(steps), "--quiet",
                    "--out", str(out)], check=True)
    return time.perf_counter() - started


def time_server(url: str, prompt: str, steps: int) -> tuple[float, float]:
    """Wall time from POST to `succeeded`, and the part of it the job waited in the queue."""
    started = time.perf_counter()
    job = call(f"{url}/jobs", {"prompt": prompt, "steps": steps})
    while (status := call(f"{url}/jobs/{job['id']}"))["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.1)
    if status["state"] != "succeeded":
        raise SystemExit(f"server job ended {status['state']}: {status['error']}")
    return time.perf_counter() - started, status["started"] - status["created"]


def progress_write_ms(folder: Path, calls: int = 500) -> float:
    """Milliseconds one step's progress costs the worker (its SQLite update and preview lookup)."""
    from dreamsmith.server.store import JobStore
    from dreamsmith.server.worker import StoreProgress

    store = JobStore(folder)
    job = store.add("generate", {"prompt": "a red cube"})
    progress = StoreProgress(store, job, folder / job.id / "run", [("coarse", calls)])
    progress.stage_started("coarse", 0, calls)
    started = time.perf_counter()
    for step in range(1, calls + 1):
        progress.step(step, 0.5, {"grad_norm": 1.0})
    return (time.perf_counter() - started) / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a red cube")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        server = subprocess.Popen([sys.executable, "-m", "dreamsmith", "serve", "--port", str(port), "--jobs-dir",
                                   f"{folder}/jobs"], stderr=subprocess.DEVNULL, env={**os.environ})
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    call(f"{url}/health")
                    break
                except OSError:
                    time.sleep(0.2)
            cli, served, queued = [], [], []
            for repeat in range(args.repeats):  # CLI first, then server first: load drifts hit both alike
                for side in ("cli", "server") if repeat % 2 == 0 else ("server", "cli"):
                    if side == "cli":
                        cli.append(time_cli(args.prompt, args.steps, Path(folder) / f"cli-{repeat}"))
                    else:
                        wall, wait = time_server(url, args.prompt, args.steps)
                        served.append(wall)
                        queued.append(wait)
        finally:
            server.terminate()
            server.wait(120)
        write_ms = progress_write_ms(Path(folder) / "progress")
    ratios = [s / c for s, c in zip(served, cli, strict=True)]
    print(json.dumps({"prompt": args.prompt, "steps": args.steps, "cli_s": cli, "server_s": served,
                      "queue_wait_s": queued, "progress_write_ms_per_step": write_ms,
                      "ratio_server_over_cli": statistics.median(ratios),
                      "overhead_s": statistics.median(s - c for s, c in zip(served, cli, strict=True))}, indent=2))


if __name__ == "__main__":
    main()
