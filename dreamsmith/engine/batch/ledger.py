"""The batch ledger: one SQLite row per job in the output directory (state, attempts, error, wall time,
device, QA result, outputs), so a re-run knows what is finished, interrupted or failed.

States: pending (never started), running (a worker has it), interrupted (its worker or the batch
stopped mid-run: resumed from its checkpoint), done, failed (its last attempt raised).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamsmith.engine.batch.manifest import JobSpec
from dreamsmith.errors import BatchError

STATES = ("pending", "running", "interrupted", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    line INTEGER NOT NULL,
    spec TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    wall_time_s REAL,
    device TEXT,
    worker TEXT,
    qa TEXT,
    triangles INTEGER,
    outputs TEXT,
    started_at REAL,
    finished_at REAL
)
"""


@dataclass
class JobRow:
    """A job as the ledger knows it."""

    id: str
    """Job id (its folder under jobs/)."""
    line: int
    """Manifest line of its row."""
    spec: JobSpec
    """What it makes."""
    state: str
    """pending, running, interrupted, done or failed."""
    attempts: int
    """Attempts started so far (a worker death counts)."""
    error: str | None
    """The last attempt's error."""
    wall_time_s: float | None
    """Wall seconds of the attempt that finished it."""
    device: str | None
    """Device (and host) it ran on."""
    worker: str | None
    """The worker that ran (or runs) it."""
    qa: str | None
    """The asset's QA result: pass, warn or fail."""
    triangles: int | None
    """Triangles of the asset."""
    outputs: list[str]
    """Files of the finished job, in its folder."""


class Ledger:
    """The ledger file ``ledger.sqlite`` of a batch output directory (one writer: the batch's driver)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise BatchError(f"cannot open the batch ledger {self.path} ({error}); move it away to start over") \
                from None

    def close(self) -> None:
        self.db.close()

    def sync(self, specs: Iterable[JobSpec], job_dir: Any) -> list[str]:
        """Record the manifest's jobs: new ones pending; a changed unfinished job starts over (its
        folder is cleared by the caller: returns those ids); a changed finished job is refused."""
        specs = list(specs)
        known = {row[0]: (row[1], row[2]) for row in self.db.execute("SELECT id, fingerprint, state FROM jobs")}
        changed_done = [s.id for s in specs if s.id in known and known[s.id][0] != s.fingerprint()
                        and known[s.id][1] == "done"]
        if changed_done:
            raise BatchError(f"job '{changed_done[0]}' changed in the manifest since it finished "
                             f"({len(changed_done)} such job(s)); give it a new id, or delete "
                             f"{job_dir(changed_done[0])} and re-run to make it again")
        restarted = []
        with self.db:
            for spec in specs:
                values = (spec.line, json.dumps(spec.to_dict()), spec.fingerprint(), spec.id)
                if spec.id not in known:
                    self.db.execute("INSERT INTO jobs (line, spec, fingerprint, id, state) VALUES (?, ?, ?, ?, "
                                    "'pending')", values)
                elif known[spec.id][0] != spec.fingerprint():
                    self.db.execute("UPDATE jobs SET line=?, spec=?, fingerprint=?, state='pending', attempts=0, "
                                    "error=NULL WHERE id=?", values)
                    restarted.append(spec.id)
                else:
                    self.db.execute("UPDATE jobs SET line=? WHERE id=?", (spec.line, spec.id))
            # a batch that died (the lock was free) left its running jobs: they resume
            self.db.execute("UPDATE jobs SET state='interrupted', worker=NULL WHERE state='running'")
        return restarted

    def jobs(self, ids: Iterable[str] | None = None) -> list[JobRow]:
        """Jobs in manifest order (all, or those in ``ids``)."""
        rows = [self._row(r) for r in self.db.execute(
            "SELECT id, line, spec, state, attempts, error, wall_time_s, device, worker, qa, triangles, outputs "
            "FROM jobs ORDER BY line")]
        if ids is None:
            return rows
        wanted = set(ids)
        return [r for r in rows if r.id in wanted]

    def started(self, job_id: str, worker: str) -> None:
        self._write("UPDATE jobs SET state='running', attempts=attempts+1, worker=?, error=NULL, started_at=? "
                        "WHERE id=?", (worker, time.time(), job_id))

    def finished(self, job_id: str, result: dict[str, Any]) -> None:
        self._write("UPDATE jobs SET state='done', error=NULL, wall_time_s=?, device=?, qa=?, triangles=?, "
                        "outputs=?, finished_at=? WHERE id=?",
                        (result["wall_time_s"], result["device"], result["qa"], result["triangles"],
                         json.dumps(result["outputs"]), time.time(), job_id))

    def stopped(self, job_id: str, state: str, error: str | None) -> None:
        """The attempt ended without an asset: ``failed`` (it raised or its worker died) or ``interrupted``."""
        self._write("UPDATE jobs SET state=?, error=?, finished_at=? WHERE id=?",
                        (state, error, time.time(), job_id))

    def reset(self, job_id: str) -> None:
        """A done job whose folder lost its finished marker: make it again."""
        self._write("UPDATE jobs SET state='pending', attempts=0, outputs=NULL WHERE id=?", (job_id,))

    def _write(self, sql: str, parameters: tuple) -> None:
        with self.db:  # one transaction: committed, or rolled back on error
            self.db.execute(sql, parameters)

    @staticmethod
    def _row(row: tuple) -> JobRow:
        job_id, line, spec, state, attempts, error, wall, device, worker, qa, triangles, outputs = row
        return JobRow(job_id, line, JobSpec.from_dict(json.loads(spec)), state, attempts, error, wall, device, worker,
                      qa, triangles, json.loads(outputs) if outputs else [])
