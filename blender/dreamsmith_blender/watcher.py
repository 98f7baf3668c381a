"""Follows a job off the main thread; Blender data is touched only on the main thread, in a timer.

A background thread polls the server and downloads files into a temporary folder; it hands
events to the timer through a queue. The timer updates the panel and imports the finished asset.
"""

from __future__ import annotations

import queue
import tempfile
import threading
import time
from pathlib import Path

from .client import Client, ServerError

POLL_S = 0.5
FINISHED = ("succeeded", "failed", "cancelled")


class JobWatcher(threading.Thread):
    """Puts ("status", job), ("preview", path), ("ready", folder) or ("error", message) on ``events``."""

    def __init__(self, client: Client, job_id: str, lods: int) -> None:
        super().__init__(name=f"dreamsmith-{job_id}", daemon=True)
        self.client, self.job_id, self.lods = client, job_id, lods
        self.events: queue.Queue = queue.Queue()
        self.stopped = threading.Event()
        self.folder = Path(tempfile.mkdtemp(prefix=f"dreamsmith-{job_id[:8]}-"))

    def run(self) -> None:
        preview = None
        try:
            while not self.stopped.is_set():
                job = self.client.status(self.job_id)
                self.events.put(("status", job))
                if job.get("preview_url") and job["preview_url"] != preview:
                    preview = job["preview_url"]
                    target = self.folder / preview.rsplit("/", 1)[-1]
                    self.events.put(("preview", self.client.download(preview, target)))
                if job["state"] in FINISHED:
                    self._finish(job)
                    return
                time.sleep(POLL_S)
        except ServerError as error:
            self.events.put(("error", str(error)))

    def _finish(self, job: dict) -> None:
        if job["state"] != "succeeded":
            reason = job.get("error") or job.get("message") or ""
            self.events.put(("error", f"job {job['state']}: {reason}".rstrip(": ")))
            return
        names = set(self.client.artifacts(self.job_id))
        wanted = ["asset.glb", *(f"asset_lod{level}.glb" for level in range(1, self.lods + 1))]
        for name in wanted:
            if name not in names:
                self.events.put(("error", f"the job finished without {name}"))
                return
            self.client.download(f"/jobs/{self.job_id}/artifacts/{name}", self.folder / name)
        self.events.put(("ready", self.folder))
