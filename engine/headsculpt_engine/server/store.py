"""The durable job queue: one SQLite table (stdlib sqlite3) plus a run folder per job.

Every state change is a single SQL statement, so the API threads and the worker never race: a queued
job is either claimed by the worker or cancelled by a client, never both. The table outlives the
process; `requeue_interrupted` puts the job a killed server was running back at the head of the queue.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    iteration INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    eta_s REAL,
    loss REAL,
    message TEXT NOT NULL DEFAULT '',
    request TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    preview TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_by_job ON job_events (job_id)
"""

STOPPED_MESSAGE = "The engine stopped during this job; it resumes from its last checkpoint."


@dataclass
class JobRecord:
    """One row of the jobs table; `request` is the validated submission as JSON-ready data."""

    seq: int
    job_id: str
    kind: str
    state: str
    stage: str
    iteration: int
    total: int
    eta_s: float | None
    loss: float | None
    message: str
    request: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    preview: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    # (time, sentence) of what happened to the job beyond its state: restarts, reasons it ended.
    history: list[tuple[float, str]] = field(default_factory=list)


class JobStore:
    """Jobs on disk under `data_dir`: `jobs.sqlite3` and `jobs/<job_id>/` (the pipeline's run_dir)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "jobs.sqlite3"
        self._submit_lock = threading.Lock()
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # One short-lived connection per operation: safe across threads, and autocommit
        # (isolation_level=None) makes each statement its own transaction.
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def _execute(self, sql: str, params: tuple = ()) -> int:
        with closing(self._connect()) as db:
            return db.execute(sql, params).rowcount

    def _rows(self, sql: str, params: tuple = ()) -> Iterator[JobRecord]:
        with closing(self._connect()) as db:
            rows = db.execute(sql, params).fetchall()
            history: dict[str, list[tuple[float, str]]] = {}
            if rows:
                ids = [row["job_id"] for row in rows]
                events = db.execute(f"SELECT job_id, at, message FROM job_events WHERE job_id IN "
                                    f"({','.join('?' * len(ids))}) ORDER BY rowid", ids).fetchall()
                for event in events:
                    history.setdefault(event["job_id"], []).append((event["at"], event["message"]))
        for row in rows:
            data = dict(row)
            data["request"] = json.loads(data["request"])
            data["cancel_requested"] = bool(data["cancel_requested"])
            yield JobRecord(**data, history=history.get(data["job_id"], []))

    def _note(self, db: sqlite3.Connection, job_ids: list[str], message: str, now: float) -> None:
        db.executemany("INSERT INTO job_events (job_id, at, message) VALUES (?, ?, ?)",
                       [(job_id, now, message) for job_id in job_ids])

    def run_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def submit(self, kind: str, request: dict[str, Any]) -> JobRecord:
        job_id = uuid.uuid4().hex
        self.run_dir(job_id).mkdir(parents=True)
        # Stamp and insert under one lock: two requests at once then get created_at in queue (seq) order.
        with self._submit_lock:
            now = time.time()
            self._execute(
                "INSERT INTO jobs (job_id, kind, state, request, created_at, updated_at) "
                "VALUES (?, ?, 'queued', ?, ?, ?)", (job_id, kind, json.dumps(request), now, now))
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> JobRecord | None:
        return next(self._rows("SELECT * FROM jobs WHERE job_id = ?", (job_id,)), None)

    def list(self) -> list[JobRecord]:
        return list(self._rows("SELECT * FROM jobs ORDER BY seq"))

    def next_queued(self) -> JobRecord | None:
        return next(self._rows("SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"), None)

    def claim(self, job_id: str) -> bool:
        """queued -> running; False when a client cancelled it first. The message stays: after a
        restart it says the job is resuming."""
        return self._execute("UPDATE jobs SET state = 'running', updated_at = ? "
                             "WHERE job_id = ? AND state = 'queued'", (time.time(), job_id)) == 1

    def finish(self, job_id: str, state: str, message: str = "") -> None:
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r}")
        now = time.time()
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE jobs SET state = ?, message = ?, eta_s = NULL, updated_at = ? "
                       "WHERE job_id = ?", (state, message, now, job_id))
            if message:
                self._note(db, [job_id], message, now)
            db.execute("COMMIT")

    def requeue(self, job_id: str, message: str) -> None:
        """running -> queued, keeping its place (seq): it resumes from its checkpoint next."""
        self._requeue("job_id = ? AND state = 'running'", (job_id,), message)

    def requeue_interrupted(self) -> int:
        """After a crash or kill: jobs left `running` go back to the queue, ahead of newer ones."""
        return self._requeue("state = 'running'", (), STOPPED_MESSAGE)

    def _requeue(self, where: str, params: tuple, message: str) -> int:
        """Queue the matching running jobs again with `message`, noted in their history."""
        now = time.time()
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            ids = [row[0] for row in db.execute(f"SELECT job_id FROM jobs WHERE {where}", params)]
            db.execute(f"UPDATE jobs SET state = 'queued', message = ?, eta_s = NULL, updated_at = ? "
                       f"WHERE {where}", (message, now, *params))
            self._note(db, ids, message, now)
            db.execute("COMMIT")
        return len(ids)

    def update_progress(self, job_id: str, stage: str, iteration: int, total: int,
                        loss: float | None, eta_s: float | None) -> None:
        self._execute("UPDATE jobs SET stage = ?, iteration = ?, total = ?, loss = ?, eta_s = ?, "
                      "updated_at = ? WHERE job_id = ?",
                      (stage, iteration, total, loss, eta_s, time.time(), job_id))

    def set_preview(self, job_id: str, relative_path: str) -> None:
        self._execute("UPDATE jobs SET preview = ?, updated_at = ? WHERE job_id = ?",
                      (relative_path, time.time(), job_id))

    def request_cancel(self, job_id: str) -> None:
        """A queued job is cancelled at once; a running one is flagged for the worker to stop."""
        self._execute(
            "UPDATE jobs SET cancel_requested = 1, updated_at = ?, "
            "state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END, "
            "message = CASE WHEN state = 'queued' THEN 'Cancelled before it started.' ELSE message END "
            "WHERE job_id = ? AND state IN ('queued', 'running')", (time.time(), job_id))

    def cancel_requested(self, job_id: str) -> bool:
        with closing(self._connect()) as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return row is None or bool(row[0])  # a deleted job is as good as cancelled

    def delete(self, job_id: str) -> bool:
        """Remove a job that is not running; False when it is running (or was just claimed)."""
        if self._execute("DELETE FROM jobs WHERE job_id = ? AND state != 'running'", (job_id,)) != 1:
            return False
        self._execute("DELETE FROM job_events WHERE job_id = ?", (job_id,))
        shutil.rmtree(self.run_dir(job_id), ignore_errors=True)
        return True
