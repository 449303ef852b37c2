"""FHIR Bulk Data $export jobs kept in the database (table bulk_export), so that an export survives a
restart of the process running it: the job's ``state`` holds where it is (the type, the last id
written) and the files it wrote with their lengths, saved after each page of resources.

A job is ``accepted`` until a worker takes it, ``running`` while one does, then ``done`` (the files
are ready until ``expires_at``) or ``failed``; ``cancelled`` when its client deleted it; ``expired``
once its files are gone. One worker at a time holds a job's lease; a lease that runs out (its worker
died) lets another take the job over from its last saved state.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.engine import Engine

from gateway.db.schema import bulk_export

#: Statuses a worker may still work on; and those whose files a client may still fetch.
ACTIVE = ("accepted", "running")
#: Export levels (export.html#endpoint---system-level-export and the two below it).
LEVELS = ("system", "patient", "group")


@dataclass(slots=True)
class ExportFile:
    """One NDJSON file of an export: ``kind`` output (resources of ``type``), deleted (Bundles of
    DELETE entries) or error (OperationOutcomes); ``count`` lines, ``size`` bytes as last saved."""

    kind: str
    type: str
    name: str
    count: int = 0
    size: int = 0

    def as_data(self) -> dict[str, Any]:
        return {"kind": self.kind, "type": self.type, "name": self.name, "count": self.count, "size": self.size}


@dataclass(slots=True)
class ExportState:
    """Where a running export is: ``type_index`` into the job's types, ``after`` the last id written
    of that type, and every file written so far (the open ones last)."""

    type_index: int = 0
    after: str = ""
    files: list[ExportFile] = field(default_factory=list)

    @property
    def written(self) -> int:
        return sum(f.count for f in self.files if f.kind == "output")

    def as_json(self) -> str:
        return json.dumps(
            {"type_index": self.type_index, "after": self.after, "files": [f.as_data() for f in self.files]},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> ExportState:
        data = json.loads(text) if text else {}
        files = [ExportFile(**entry) for entry in data.get("files", [])]
        return cls(data.get("type_index", 0), data.get("after", ""), files)


@dataclass(frozen=True, slots=True)
class ExportJob:
    id: str
    status: str
    level: str
    group_id: str
    request: str
    types: tuple[str, ...]
    since: datetime | None
    transaction_time: datetime
    created_by: str
    role: str
    created_at: int
    updated_at: int
    expires_at: int
    state: ExportState
    notes: tuple[str, ...]
    lease_owner: str


def now_ms() -> int:
    return int(time.time() * 1000)


def worker_identity() -> str:
    """host:pid:random, the lease owner a process writes (64 characters at most)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ExportJobStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create(
        self,
        *,
        level: str,
        group_id: str,
        request: str,
        types: list[str],
        since: datetime | None,
        transaction_time: datetime,
        who: str,
        role: str,
        notes: list[str],
    ) -> ExportJob:
        job_id, now = str(uuid.uuid4()), now_ms()
        with self.engine.begin() as conn:
            conn.execute(
                bulk_export.insert().values(
                    id=job_id,
                    status="accepted",
                    level=level,
                    group_id=group_id,
                    request=request,
                    types=json.dumps(types),
                    since=since,
                    transaction_time=transaction_time,
                    created_by=who[:128],
                    role=role,
                    created_at=now,
                    updated_at=now,
                    expires_at=0,
                    state=ExportState().as_json(),
                    notes=json.dumps(notes),
                    lease_owner="",
                    lease_until=0,
                )
            )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> ExportJob | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(bulk_export).where(bulk_export.c.id == job_id)).first()
        return _job(row) if row is not None else None

    def claim(self, owner: str, lease_ms: int, dead_owners: frozenset[str] = frozenset()) -> ExportJob | None:
        """An accepted or running job no live worker holds (its lease ran out, or its owner is in
        ``dead_owners``: processes of this host that are gone), now leased to ``owner``, running."""
        now = now_ms()
        t = bulk_export.c
        free = or_(t.lease_until < now, t.lease_owner == owner, t.lease_owner.in_(sorted(dead_owners)))
        with self.engine.begin() as conn:
            candidates = conn.execute(
                select(t.id).where(t.status.in_(ACTIVE), free).order_by(t.created_at).limit(5)
            ).all()
            for (job_id,) in candidates:
                taken = conn.execute(
                    update(bulk_export)
                    .where(t.id == job_id, t.status.in_(ACTIVE), free)
                    .values(status="running", lease_owner=owner, lease_until=now + lease_ms, updated_at=now)
                )
                if taken.rowcount:
                    row = conn.execute(select(bulk_export).where(t.id == job_id)).first()
                    return _job(row)
        return None

    def lease_owners(self) -> list[str]:
        """Owners of the leases of accepted and running jobs (to find those of dead processes)."""
        t = bulk_export.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.lease_owner).where(t.status.in_(ACTIVE), t.lease_owner != "")).all()
        return sorted({row[0] for row in rows})

    def save(self, job: ExportJob, owner: str, state: ExportState, lease_ms: int) -> bool:
        """Save ``state`` while ``owner`` holds the running job's lease, and extend the lease; False
        when the job was cancelled or taken over meanwhile (stop working on it)."""
        now = now_ms()
        t = bulk_export.c
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(bulk_export)
                .where(t.id == job.id, t.lease_owner == owner, t.status == "running")
                .values(state=state.as_json(), updated_at=now, lease_until=now + lease_ms)
            )
        return bool(moved.rowcount)

    def release(self, job: ExportJob, owner: str, state: ExportState) -> bool:
        """Save ``state`` and give the lease up (the worker is stopping): another worker goes on at once."""
        t = bulk_export.c
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(bulk_export)
                .where(t.id == job.id, t.lease_owner == owner, t.status == "running")
                .values(state=state.as_json(), updated_at=now_ms(), lease_owner="", lease_until=0)
            )
        return bool(moved.rowcount)

    def finish(self, job: ExportJob, owner: str, state: ExportState, retention_ms: int) -> bool:
        """The job is done: its files are kept until ``retention_ms`` from now."""
        now = now_ms()
        return self._end(
            job, owner, status="done", state=state.as_json(), updated_at=now, expires_at=now + retention_ms
        )

    def fail(self, job: ExportJob, owner: str, why: str, retention_ms: int) -> bool:
        """The job failed (``why`` names no value: it becomes the OperationOutcome of its status)."""
        now = now_ms()
        notes = json.dumps([*job.notes, f"failed: {why}"])
        return self._end(job, owner, status="failed", notes=notes, updated_at=now, expires_at=now + retention_ms)

    def cancel(self, job_id: str) -> bool:
        """A client's DELETE: the job stops (its worker sees it at its next save); False if unknown or ended."""
        t = bulk_export.c
        with self.engine.begin() as conn:
            done = conn.execute(
                update(bulk_export)
                .where(t.id == job_id, t.status.in_((*ACTIVE, "done", "failed")))
                .values(status="cancelled", updated_at=now_ms(), lease_owner="", lease_until=0)
            )
        return bool(done.rowcount)

    def expired(self, now: int | None = None, limit: int = 50) -> list[str]:
        """Ids of done or failed jobs whose files are past ``expires_at``."""
        t = bulk_export.c
        moment = now_ms() if now is None else now
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.id)
                .where(t.status.in_(("done", "failed")), t.expires_at > 0, t.expires_at < moment)
                .limit(limit)
            ).all()
        return [row[0] for row in rows]

    def mark_expired(self, job_id: str) -> None:
        t = bulk_export.c
        with self.engine.begin() as conn:
            conn.execute(
                update(bulk_export)
                .where(t.id == job_id, t.status.in_(("done", "failed")))
                .values(status="expired", updated_at=now_ms())
            )

    def _end(self, job: ExportJob, owner: str, **values: Any) -> bool:
        t = bulk_export.c
        with self.engine.begin() as conn:
            ended = conn.execute(
                update(bulk_export)
                .where(t.id == job.id, t.lease_owner == owner, t.status == "running")
                .values(lease_owner="", lease_until=0, **values)
            )
        return bool(ended.rowcount)


def _job(row: Any) -> ExportJob:
    return ExportJob(
        id=row.id,
        status=row.status,
        level=row.level,
        group_id=row.group_id,
        request=row.request,
        types=tuple(json.loads(row.types)),
        since=row.since,
        transaction_time=row.transaction_time,
        created_by=row.created_by,
        role=row.role,
        created_at=row.created_at,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
        state=ExportState.from_json(row.state),
        notes=tuple(json.loads(row.notes)),
        lease_owner=row.lease_owner,
    )
