"""A small manifest on the embedded prior and the batch CLI driver shared by the batch tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dreamsmith.engine.checkpoint import load_checkpoint
from dreamsmith.errors import RunDirError

# The toy preset shrunk so a job's steps take a fraction of a second each on one CPU thread.
SMALL = ["camera.batch_size=2", "camera.eval_resolution=32", "camera.eval_views=4", "renderer.n_samples=24",
         "nerf.hash_grid.n_levels=4", "nerf.hash_grid.log2_hashmap_size=14", "export.isosurface_resolution=40",
         "export.preview_resolution=48", "preview_every=0", "checkpoint_every=2"]
VICTIM = "victim"
"""The job whose worker the tests kill: more steps than the others, so it is still running after its
first checkpoint."""


def write_manifest(folder: Path) -> Path:
    """Four valid jobs (one with obj too) and, on line 5, a row the engine cannot run."""
    rows = [
        {"defaults": {"steps": 4, "texture_size": 128, "overrides": SMALL}},
        {"id": VICTIM, "prompt": "a red cube", "seed": 1, "steps": 12},
        {"prompt": "a blue sphere", "seed": 2, "formats": ["glb", "obj"]},
        {"prompt": "a green torus", "seed": 3},
        {"prompt": "a green torus", "image": "reference.png"},
        {"prompt": "a yellow cone", "seed": 4, "profile": "mobile"},
    ]
    path = folder / "props.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def batch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dreamsmith", "batch", *args]


def environment() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("DREAMSMITH_DEBUG", None)
    return env


def run_batch_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(batch_command(*args), capture_output=True, text=True, env=environment(), timeout=timeout)


def run_and_kill_victim(out: Path, *args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, int]:
    """Run the batch CLI and SIGKILL the victim job's worker once the job has written a checkpoint;
    returns the finished process and the checkpoint step the job had reached (at least 2)."""
    process = subprocess.Popen(batch_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment())
    job = out / "jobs" / VICTIM
    deadline = time.monotonic() + timeout
    step = None
    while step is None and time.monotonic() < deadline and process.poll() is None:
        try:
            marker = json.loads((job / "batch_job.json").read_text())
            state = load_checkpoint(job / "checkpoints" / "last.pt")
        except (OSError, ValueError, RunDirError):
            time.sleep(0.05)
            continue
        if marker["state"] == "running" and 2 <= state["step"] < 12:
            os.kill(marker["pid"], signal.SIGKILL)
            step = state["step"]
    stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    assert step is not None, f"the victim was never caught mid-run:\n{stderr}"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), step


def asset_files(out: Path) -> dict[str, bytes]:
    """Every job's asset files (GLB, OBJ and its texture, poster) by relative path: what "same assets" compares."""
    names = ("asset.glb", "asset.obj", "asset_basecolor.png", "asset_poster.png")
    return {str(path.relative_to(out)): path.read_bytes() for name in names for path in out.glob(f"jobs/*/{name}")}
