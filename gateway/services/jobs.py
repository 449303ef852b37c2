"""Running operator jobs: a bulk replay of the dead letters a filter matches, or a reprocess of the
archived messages it matches through the current mappings (after a mapping fix), at
``HL7GW_REPLAY_RATE`` messages a second on the replay queue, so live traffic keeps its latency.

Every worker process runs a JobRunner; the database lease lets one at a time work on a job, and the
cursor, saved after every few items, is where a job resumes after a crash. An item handled twice
(a crash after queueing it, before the cursor was saved) is harmless: a replayed letter is no
longer open and is skipped, and a message applied again changes nothing stored.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from gateway import logcontext
from gateway.db.schema import dead_letter, message_archive
from gateway.envelope import Envelope, Kind
from gateway.errors import describe
from gateway.journal.dead_letters import DeadLetterStore
from gateway.journal.jobs import Job, JobStore
from gateway.mllp.triage import Triage
from gateway.queue.entry import new_envelope_id
from gateway.services.pipeline import REPROCESS_JOB
from gateway.services.replay import Replayer

log = logging.getLogger(__name__)

#: Filter keys of each kind of job (times in ms since the epoch; ``reason``: text the reason holds).
REPLAY_FILTERS = frozenset({"stage", "error_type", "sender", "since", "until", "reason"})
REPROCESS_FILTERS = frozenset({"sender", "message_type", "status", "since", "until"})
#: Envelope meta of a reprocessed message: the archived message it re-runs (and REPROCESS_JOB, the job).
REPROCESS_OF = "reprocess_of"


def check_filter(kind: str, filter: dict[str, Any]) -> dict[str, Any]:
    """The filter, checked: known keys only, times as integers; raises ValueError saying what is wrong."""
    allowed = REPLAY_FILTERS if kind == "replay" else REPROCESS_FILTERS
    unknown = sorted(set(filter) - allowed)
    if unknown:
        raise ValueError(f"a {kind} job has no filter {', '.join(unknown)} (it takes {', '.join(sorted(allowed))})")
    checked = {key: value for key, value in filter.items() if value not in (None, "")}
    for key in ("since", "until"):
        if key in checked and not isinstance(checked[key], int):
            raise ValueError(f"{key} is a time in milliseconds since the epoch")
    if kind == "reprocess" and checked.get("status", "processed") not in ("processed", "failed"):
        raise ValueError("a reprocess takes messages whose status is processed or failed")
    return checked


def _after(time_column: Any, id_column: Any, cursor: str) -> ColumnElement[bool] | None:
    if not cursor:
        return None
    at, _, key = cursor.partition("|")
    return or_(time_column > int(at), and_(time_column == int(at), id_column > key))


def next_letters(engine: Engine, filter: dict[str, Any], cursor: str, limit: int, before: int) -> list[tuple[int, str]]:
    """(created_at, id) of the next open dead letters the filter matches, after ``cursor``, written
    before ``before`` (the job's start: a replay that fails again is a new letter, not one more
    for the same job to replay, and again)."""
    t = dead_letter.c
    query = select(t.created_at, t.id).where(t.status == "open", t.created_at <= before)
    for key in ("stage", "error_type", "sender"):
        if key in filter:
            query = query.where(getattr(t, key) == filter[key])
    if "reason" in filter:
        query = query.where(t.reason.contains(filter["reason"], autoescape=True))
    if "since" in filter:
        query = query.where(t.created_at >= filter["since"])
    if "until" in filter:
        query = query.where(t.created_at < filter["until"])
    after = _after(t.created_at, t.id, cursor)
    if after is not None:
        query = query.where(after)
    with engine.connect() as conn:
        return [(row[0], row[1]) for row in conn.execute(query.order_by(t.created_at, t.id).limit(limit))]


def next_messages(engine: Engine, filter: dict[str, Any], cursor: str, limit: int, before: int) -> list[Any]:
    """The next archived messages the filter matches, after ``cursor``, as rows: those last handled
    before ``before`` (the job's start), so the copies the job itself makes are never taken again."""
    t = message_archive.c
    query = select(message_archive).where(t.status == filter.get("status", "processed"), t.updated_at <= before)
    if "sender" in filter:
        query = query.where(t.sender == filter["sender"])
    if "message_type" in filter:
        query = query.where(t.message_type.startswith(filter["message_type"], autoescape=True))
    if "since" in filter:
        query = query.where(t.received_at >= filter["since"])
    if "until" in filter:
        query = query.where(t.received_at < filter["until"])
    after = _after(t.received_at, t.id, cursor)
    if after is not None:
        query = query.where(after)
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(t.received_at, t.id).limit(limit)))


class JobRunner:
    """Works on one leased job at a time, queueing its items through ``enqueue`` at ``rate``/s."""

    def __init__(
        self,
        engine: Engine,
        enqueue: Callable[[Envelope], None],
        rate: float,
        *,
        owner: str | None = None,
        triage: Triage | None = None,
        lease_ms: int = 30_000,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.engine = engine
        self.jobs = JobStore(engine)
        self.enqueue = enqueue
        self.rate = rate
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_ms = lease_ms
        self.sleep = sleep
        self.replayer = Replayer(DeadLetterStore(engine), enqueue, triage)
        self._next_at = 0.0

    def step(self) -> bool:
        """Claim a job and handle one slice of it (about a second's worth); False when no job waits."""
        job = self.jobs.claim(self.owner, self.lease_ms)
        if job is None:
            return False
        size = max(1, min(500, int(self.rate)))
        if job.kind == "replay":
            items: list[Any] = next_letters(self.engine, job.filter, job.cursor, size, job.created_at)
        else:
            items = next_messages(self.engine, job.filter, job.cursor, size, job.created_at)
        if not items:
            fresh = self.jobs.get(job.id) or job
            exact = self.jobs.replayed_by(job) if job.kind == "replay" else None
            queued = exact if exact is not None else fresh.done
            summary = f"{queued} message(s) queued, {fresh.skipped} skipped"
            if self.jobs.finish(job, self.owner, summary, exact):
                log.info("job %s (%s by %s) done: %s", job.id, job.kind, job.created_by, summary)
            return True
        done = skipped = 0
        if job.kind == "replay":
            # One read and one write transaction per slice: the database is shared with live traffic.
            letters = self.replayer.letters.open_letters([letter_id for _, letter_id in items])
            skipped += len(items) - len(letters)  # replayed or discarded since the slice was read
            done, refused = self.replayer.replay_many(letters, f"job:{job.id}", self._pace)
            skipped += refused
            created_at, letter_id = items[-1]
            cursor = f"{created_at}|{letter_id}"
        else:
            for item in items:
                self._pace()
                envelope = self._reprocess_envelope(job, item)
                with logcontext.message_context(envelope.id, envelope.sender, envelope.control_id):
                    self.enqueue(envelope)
                    self.replayer.metrics.replayed("reprocess")
                    log.debug("job %s: message %s queued again", job.id, item.id, extra={"outcome": "reprocess-queued"})
                done += 1
            cursor = f"{items[-1].received_at}|{items[-1].id}"
        status = self.jobs.advance(job, self.owner, cursor, done, skipped, self.lease_ms)
        if status is None:
            log.warning("job %s: lease lost to another worker; it goes on there", job.id)
        return True

    def run(self, stop: threading.Event, idle_s: float = 1.0) -> None:
        """Work on jobs until ``stop``. A failed slice (the database or Redis away) is tried again a
        second later, saying so once per run of failures, not once a second."""
        failing = False
        while not stop.is_set():
            try:
                busy = self.step()
            except Exception as exc:  # noqa: BLE001 - a job waits for the next round, the worker goes on
                if not failing:
                    log.warning(
                        "operator jobs wait: a slice failed (%s); trying again each %.0f s", describe(exc), idle_s
                    )
                failing, busy = True, False
            else:
                if failing:
                    log.info("operator jobs going on")
                failing = False
            if not busy:
                stop.wait(idle_s)

    def _pace(self) -> None:
        now = time.monotonic()
        if self._next_at > now:
            self.sleep(self._next_at - now)
        self._next_at = max(now, self._next_at) + 1.0 / self.rate

    @staticmethod
    def _reprocess_envelope(job: Job, row: Any) -> Envelope:
        """An archived message again, as received then (time, sequence), naming what it re-runs."""
        return Envelope(
            new_envelope_id(),
            bytes(row.raw),
            row.received_at,
            row.sender,
            row.control_id,
            "reprocess",
            row.seq,
            Kind.MESSAGE,
            {REPROCESS_OF: row.id, REPROCESS_JOB: job.id, "message_type": row.message_type},
        )
