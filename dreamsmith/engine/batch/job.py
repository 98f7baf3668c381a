"""One job, run inside a worker (a local worker process or a Ray task): generate into the job's own
folder, resuming its checkpoint if an earlier attempt left one, and mark it finished last.

A job folder is finished only when ``batch_job.json`` says ``"state": "done"``: it is written
atomically after the asset, QA report and run report, so a half-written job never looks finished.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from dreamsmith.engine.batch.manifest import JobSpec
from dreamsmith.engine.run_dir import RunDir, write_json, write_text
from dreamsmith.errors import DreamsmithError

MARKER = "batch_job.json"
"""The job folder's state file: who runs it (pid, host) while it runs, its result once done."""


def is_finished(job_dir: Path) -> bool:
    """Whether ``job_dir`` holds a finished job (its marker says done)."""
    try:
        return json.loads((Path(job_dir) / MARKER).read_text())["state"] == "done"
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run_job(spec: dict[str, Any], job_dir: str) -> dict[str, Any]:
    """Run the job ``spec`` (``JobSpec.to_dict()``) into ``job_dir``; never raises for the job's own errors.

    Returns ``{"ok": True, "wall_time_s", "device", "qa", "triangles", "outputs", "resumed_from_step"}``
    or ``{"ok": False, "error": one line}`` (the traceback of an unexpected error goes to error.log).
    The device is the config's (auto): workers pin theirs with ``CUDA_VISIBLE_DEVICES``. A
    KeyboardInterrupt (Ctrl-C, a cancelled task) stops at a step boundary with a checkpoint and propagates.
    """
    from dreamsmith.engine.batch.validation import job_config
    from dreamsmith.engine.run import generate

    job = JobSpec.from_dict(spec)
    run = RunDir(job_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    where = {"pid": os.getpid(), "host": socket.gethostname(), "cuda_visible_devices":
             os.environ.get("CUDA_VISIBLE_DEVICES")}
    write_json(run.root / MARKER, {"state": "running", "id": job.id, **where})
    started = time.perf_counter()
    try:
        config = job_config(job)
        resume = run.last_checkpoint.is_file() and run.config.is_file()
        report = generate(config, run.root, resume=resume)
    except DreamsmithError as error:
        return {"ok": False, "error": str(error)}
    except Exception as error:  # noqa: BLE001 - a job's crash must not take its worker or the batch down
        write_text(run.root / "error.log", traceback.format_exc())
        return {"ok": False, "error": f"{type(error).__name__}: {error} (traceback in {run.root / 'error.log'})"}
    qa = json.loads((run.root / "qa.json").read_text())
    result = {
        "ok": True,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "device": _device_name(report["device"], where),
        "qa": qa["asset"]["status"],
        "triangles": report["asset"]["faces"],
        "outputs": sorted(qa["files"]),
        "resumed_from_step": report["resumed_from_step"],
    }
    write_json(run.root / MARKER, {"state": "done", "id": job.id, **where, **result})
    return result


def _device_name(device: str, where: dict[str, Any]) -> str:
    pinned = f" (CUDA_VISIBLE_DEVICES={where['cuda_visible_devices']})" if device.startswith("cuda") and \
        where["cuda_visible_devices"] is not None else ""
    return f"{device}{pinned} on {where['host']}"
