"""Operator jobs: a bulk replay of dead letters or a reprocess of archived messages, kept in the
database so that a crash resumes it where it was (issue 15).

A job is ``running`` until every item its filter matched is handled, then ``done``; an operator may
pause, resume or cancel it. Workers take turns: one holds a job's lease at a time, and a lease that
runs out (its worker died) lets another take the job over from its cursor.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import Engine

from gateway.db.schema import dead_letter, operator_job

JobKind = Literal["replay", "reprocess", "import"]
#: Kinds a worker's JobRunner works on; an import job is run by its own ``hl7gw import`` process
#: and only recorded here (file, hash, size, counts, batch mismatches: gateway/services/importer.py).
RUNNABLE = ("replay", "reprocess")
#: What an operator may ask of a job, and the statuses each moves it between.
CONTROLS = {"pause": ("running", "paused"), "resume": ("paused", "running"), "cancel": (None, "cancelled")}
FINISHED = ("done", "cancelled")


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: JobKind
    filter: dict[str, Any]
    status: str
    created_by: str
    created_at: int
    updated_at: int
    done: int
    skipped: int
    cursor: str
    summary: str

    def as_data(self) -> dict[str, Any]:
        """The job as data, for the /admin API and scripts."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "filter": self.filter,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "queued": self.done,
            "skipped": self.skipped,
            "cursor": self.cursor or None,
            "summary": self.summary or None,
        }


def _now() -> int:
    return int(time.time() * 1000)


class JobStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create(self, kind: JobKind, filter: dict[str, Any], who: str) -> Job:
        job_id, now = str(uuid.uuid4()), _now()
        status = "importing" if kind == "import" else "running"
        with self.engine.begin() as conn:
            conn.execute(
                operator_job.insert().values(
                    id=job_id,
                    kind=kind,
                    filter=json.dumps(filter, sort_keys=True),
                    status=status,
                    created_by=who[:128],
                    created_at=now,
                    updated_at=now,
                    done=0,
                    skipped=0,
                    cursor="",
                    lease_owner="",
                    lease_until=0,
                    summary="",
                )
            )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(operator_job).where(operator_job.c.id == job_id)).first()
        return _job(row) if row is not None else None

    def list(self, limit: int = 50) -> list[Job]:
        query = select(operator_job).order_by(operator_job.c.created_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_job(row) for row in conn.execute(query)]

    def control(self, job_id: str, action: str) -> bool:
        """Pause, resume or cancel a job; False when its status does not allow it (or it is unknown)."""
        before, after = CONTROLS[action]
        condition = operator_job.c.status == before if before else operator_job.c.status.not_in(FINISHED)
        with self.engine.begin() as conn:
            done = conn.execute(
                update(operator_job)
                .where(operator_job.c.id == job_id, condition, operator_job.c.kind.in_(RUNNABLE))
                .values(status=after, updated_at=_now(), lease_owner="", lease_until=0)
            )
        return bool(done.rowcount)

    def claim(self, owner: str, lease_ms: int) -> Job | None:
        """A running job no live worker holds (or ``owner`` holds already), now leased to ``owner``."""
        now = _now()
        with self.engine.begin() as conn:
            candidates = conn.execute(
                select(operator_job.c.id)
                .where(
                    operator_job.c.status == "running",
                    operator_job.c.kind.in_(RUNNABLE),
                    or_(operator_job.c.lease_until < now, operator_job.c.lease_owner == owner),
                )
                .order_by(operator_job.c.created_at)
                .limit(5)
            ).all()
            for (job_id,) in candidates:
                taken = conn.execute(
                    update(operator_job)
                    .where(
                        operator_job.c.id == job_id,
                        operator_job.c.status == "running",
                        or_(operator_job.c.lease_until < now, operator_job.c.lease_owner == owner),
                    )
                    .values(lease_owner=owner, lease_until=now + lease_ms)
                )
                if taken.rowcount:
                    row = conn.execute(select(operator_job).where(operator_job.c.id == job_id)).first()
                    return _job(row)
        return None

    def advance(self, job: Job, owner: str, cursor: str, done: int, skipped: int, lease_ms: int) -> str | None:
        """Record progress (the cursor after the handled items, the counts added) while ``owner``
        holds the lease; the job's status after, or None when the lease was lost (another worker
        took the job over: stop)."""
        now = _now()
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(operator_job)
                .where(operator_job.c.id == job.id, operator_job.c.lease_owner == owner)
                .values(
                    cursor=cursor,
                    done=operator_job.c.done + done,
                    skipped=operator_job.c.skipped + skipped,
                    updated_at=now,
                    lease_until=now + lease_ms,
                )
            )
            if not moved.rowcount:
                return None
            status: str = conn.execute(select(operator_job.c.status).where(operator_job.c.id == job.id)).scalar_one()
        return status

    def finish(self, job: Job, owner: str, summary: str, done: int | None = None) -> bool:
        """A running job whose filter matches nothing more is done, with its summary (and, when
        known exactly, how many it queued: counts saved per slice miss a slice a crash cut short)."""
        values: dict[str, Any] = {"status": "done", "summary": summary, "updated_at": _now()}
        if done is not None:
            values["done"] = done
        with self.engine.begin() as conn:
            finished = conn.execute(
                update(operator_job)
                .where(
                    operator_job.c.id == job.id, operator_job.c.lease_owner == owner, operator_job.c.status == "running"
                )
                .values(lease_owner="", lease_until=0, **values)
            )
        return bool(finished.rowcount)

    def record_import(
        self, job_id: str, *, status: str, accepted: int, duplicates: int, cursor: str, summary: str
    ) -> None:
        """Save an import job's state: ``status`` importing, done or failed (an import killed
        mid-way stays importing until it is run again), ``done`` = accepted, ``skipped`` =
        duplicates, ``cursor`` = the byte offset committed, ``summary`` = its counts (JSON)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(operator_job)
                .where(operator_job.c.id == job_id, operator_job.c.kind == "import")
                .values(
                    status=status, done=accepted, skipped=duplicates, cursor=cursor, summary=summary, updated_at=_now()
                )
            )

    def replayed_by(self, job: Job) -> int:
        """How many dead letters a replay job replayed (they name it), crash or not."""
        with self.engine.connect() as conn:
            query = select(func.count()).select_from(dead_letter).where(dead_letter.c.handled_by == f"job:{job.id}")
            return int(conn.execute(query).scalar_one())


def _job(row: Any) -> Job:
    return Job(
        id=row.id,
        kind=row.kind,
        filter=json.loads(row.filter),
        status=row.status,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
        done=row.done,
        skipped=row.skipped,
        cursor=row.cursor,
        summary=row.summary,
    )
