"""The job queue and job states, persisted in SQLite so a restarted server loses nothing.

The server's request handlers, its scheduler threads and the worker processes each open their own
connection; SQLite's write-ahead log lets them read while one writes.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dreamsmith.server.config import ServerError

JobState = Literal["queued", "running", "cancelling", "cancelled", "succeeded", "failed"]
JobKind = Literal["generate", "export"]
FINISHED_STATES = ("cancelled", "succeeded", "failed")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    source TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    resume INTEGER NOT NULL DEFAULT 0,
    device TEXT,
    pid INTEGER,
    runs INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    stage TEXT,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    done_steps INTEGER NOT NULL DEFAULT 0,
    all_steps INTEGER NOT NULL DEFAULT 0,
    eta_s REAL,
    losses TEXT NOT NULL DEFAULT '{}',
    message TEXT,
    preview TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""


@dataclass
class Job:
    """One row of the queue: what was asked, where it stands, and its latest progress."""

    id: str
    kind: str
    state: str
    request: dict[str, Any]
    source: str | None
    created: float
    started: float | None
    finished: float | None
    resume: bool
    device: str | None
    pid: int | None
    runs: int
    error: str | None
    stage: str | None
    step: int
    total: int
    done_steps: int
    all_steps: int
    eta_s: float | None
    losses: dict[str, float] = field(default_factory=dict)
    message: str | None = None
    preview: str | None = None
    updated: float = 0.0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = dict(row)
        values["request"] = json.loads(values["request"])
        values["losses"] = json.loads(values["losses"])
        values["resume"] = bool(values["resume"])
        return cls(**values)


class JobStore:
    """The jobs table of ``jobs_dir/jobs.sqlite`` and each job's folder ``jobs_dir/<id>``."""

    def __init__(self, jobs_dir: Path | str) -> None:
        self.root = Path(jobs_dir)
        self._local = threading.local()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._connect() as connection:
                connection.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise ServerError(f"cannot use jobs folder {self.root}: {error}") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, kept open: closing a write-ahead-logged database's last connection
        checkpoints it, which made every progress update cost ~20 ms instead of well under one."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.root / "jobs.sqlite", timeout=30.0, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        try:
            yield connection
        finally:
            if connection.in_transaction:  # a statement failed between BEGIN and COMMIT
                connection.execute("ROLLBACK")

    def job_dir(self, job_id: str) -> Path:
        """The folder of one job; ``job_id`` must be a job id (32 hex digits), so it cannot escape ``root``."""
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def add(self, kind: JobKind, request: dict[str, Any], source: str | None = None) -> Job:
        """Queue a new job; returns it."""
        job_id, now = uuid.uuid4().hex, time.time()
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO jobs (id, kind, state, request, source, created, updated) "
                "VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                (job_id, kind, json.dumps(request), source, now, now),
            )
        self.job_dir(job_id).mkdir(exist_ok=True)
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        if not JOB_ID.match(job_id):
            return None
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def list(self, state: str | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        query, arguments = "SELECT * FROM jobs", []
        if state is not None:
            query, arguments = query + " WHERE state = ?", [state]
        with self._connect() as connection:
            query += " ORDER BY created DESC, rowid DESC LIMIT ?"
            rows = connection.execute(query, (*arguments, limit)).fetchall()
        return [Job.from_row(row) for row in rows]

    def claim_next(self, device: str) -> Job | None:
        """Mark the oldest queued job runnable on ``device`` as running there; None when there is none.

        A job that ran before resumes on the device it started on (its checkpoint is tied to it)."""
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            row = connection.execute(
                "SELECT id FROM jobs WHERE state = 'queued' AND (device IS NULL OR device = ?) "
                "ORDER BY created, rowid LIMIT 1",
                (device,),
            ).fetchone()
            if row is None:
                connection.execute("COMMIT")
                return None
            now = time.time()
            connection.execute(
                "UPDATE jobs SET state = 'running', device = ?, started = ?, runs = runs + 1, error = NULL, "
                "message = NULL, eta_s = NULL, updated = ? WHERE id = ?",
                (device, now, now, row["id"]),
            )
            connection.execute("COMMIT")
        return self.get(row["id"])

    def update(self, job_id: str, **values: Any) -> None:
        """Set columns of one job (dicts are stored as JSON)."""
        values = {key: json.dumps(value) if isinstance(value, dict) else value for key, value in values.items()}
        values["updated"] = time.time()
        columns = ", ".join(f"{key} = ?" for key in values)
        with self._connect() as connection:
            connection.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))

    def transition(self, job_id: str, from_states: tuple[str, ...], to_state: str, **values: Any) -> bool:
        """Move a job to ``to_state`` only if it is in one of ``from_states``; whether it moved."""
        values = {key: json.dumps(value) if isinstance(value, dict) else value for key, value in values.items()}
        values.update(state=to_state, updated=time.time())
        if to_state in FINISHED_STATES:
            values["finished"] = values["updated"]
        columns = ", ".join(f"{key} = ?" for key in values)
        marks = ", ".join("?" for _ in from_states)
        with self._connect() as connection:
            cursor = connection.execute(f"UPDATE jobs SET {columns} WHERE id = ? AND state IN ({marks})",
                                        (*values.values(), job_id, *from_states))
        return cursor.rowcount == 1
