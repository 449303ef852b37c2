"""Is the gateway ready to take and process messages? Redis answers and keeps what it acknowledges
(gateway/redis_persistence.py: else the listener refuses every message), the database answers, a
worker heartbeats, a live worker compiled its mappings, and the data dir's disk is not full. For
``GET /health/ready`` and ``hl7gw status``.

Every check runs in a thread of its own and is waited for at most ``timeout_s``: a Redis or a
database that hangs makes the probe say so in time, instead of making it hang too.

A worker starts heartbeating only once its mappings compiled, and from then on writes a small
record (``WorkerRecord``) next to its heartbeat, expiring with it (gateway/queue/broker.py
QueueMaintenance). A heartbeat alone is not enough: dramatiq heartbeats for any process that queues
messages (an API replaying a dead letter, say), so a worker is a live heartbeat with a record.
The reasons of failed checks name the kind of failure and never a password or a message's content.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from gateway.backlog import live_workers
from gateway.diskspace import data_dir_space
from gateway.errors import describe
from gateway.keys import Keys
from gateway.redis_persistence import Verdict, read_persistence

#: How long one check may take before it counts as failed (HL7GW_HEALTH_CHECK_TIMEOUT_S).
DEFAULT_TIMEOUT_S = 1.0
#: "disk" only when the probe knows a data dir.
CHECKS = ("redis", "database", "workers", "mappings", "disk")
#: How the "redis" check's reason starts when Redis answers but may lose what it acknowledges.
REFUSED = "messages are refused: "


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """What a worker says of itself next to its heartbeat."""

    pid: int
    host: str
    #: Message types (code^trigger) its compiled mappings convert.
    message_types: int
    started_at: int

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> WorkerRecord | None:
        try:
            found = json.loads(data)
            return cls(int(found["pid"]), str(found["host"]), int(found["message_types"]), int(found["started_at"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    #: Why it failed, or what was found when it passed.
    reason: str = ""

    def as_data(self) -> dict[str, Any]:
        return {"ok": self.ok, ("detail" if self.ok else "reason"): self.reason} if self.reason else {"ok": self.ok}


@dataclass(frozen=True, slots=True)
class Readiness:
    checks: dict[str, Check]
    #: The live workers' records (empty when Redis did not answer).
    workers: list[WorkerRecord] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks.values())

    def as_data(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready else "not ready",
            "checks": {name: check.as_data() for name, check in self.checks.items()},
        }


class ReadinessProbe:
    """The checks against one Redis (None: none configured), one database engine and, when given,
    the data dir's disk."""

    def __init__(
        self,
        redis_url: str | None,
        namespace: str,
        engine: Engine,
        heartbeat_timeout_ms: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        data_dir: Path | None = None,
        allow_volatile_redis: bool = False,
    ):
        self.data_dir = data_dir
        self.allow_volatile_redis = allow_volatile_redis
        self.keys = Keys(namespace)
        self.engine = engine
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.timeout_s = timeout_s
        self.client = (
            redis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
            if redis_url
            else None
        )
        # One small pool per dependency: a database that hangs never delays the Redis checks.
        self._redis_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="hl7gw-ready-redis")
        self._database_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="hl7gw-ready-db")
        self._disk_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hl7gw-ready-disk")

    def check(self) -> Readiness:
        redis_future = self._redis_pool.submit(self._redis_checks)
        database_future = self._database_pool.submit(self._database_check)
        disk_future = self._disk_pool.submit(self._disk_check) if self.data_dir is not None else None
        deadline = time.monotonic() + self.timeout_s
        late = Check(False, f"no answer within {self.timeout_s:g} s")
        redis_checks = _within(redis_future, deadline, (late, _unknown(), _unknown(), []))
        database = _within(database_future, deadline, late)
        redis_check, workers, mappings, records = redis_checks
        checks = {"redis": redis_check, "database": database, "workers": workers, "mappings": mappings}
        if disk_future is not None:
            checks["disk"] = _within(disk_future, deadline, late)
        return Readiness(checks, records)

    def _redis_checks(self) -> tuple[Check, Check, Check, list[WorkerRecord]]:
        if self.client is None:
            return Check(False, "no Redis to ask: HL7GW_REDIS_URL is not set"), _unknown(), _unknown(), []
        try:
            self.client.ping()
            refusal = Verdict(read_persistence(self.client), self.allow_volatile_redis).refusal
            live = live_workers(self.client, self.keys, self.heartbeat_timeout_ms)
            found = self.client.mget([self.keys.worker_record(worker) for worker in live]) if live else []
        except redis.RedisError as exc:
            return Check(False, describe(exc)), _unknown(), _unknown(), []
        records = [record for data in found if data and (record := WorkerRecord.decode(data)) is not None]
        workers = _workers_check(records, len(live), self.heartbeat_timeout_ms)
        redis_check = Check(False, f"{REFUSED}{refusal}") if refusal else Check(True)
        return redis_check, workers, _mappings_check(records), records

    def _database_check(self) -> Check:
        missing = _missing_sqlite_file(self.engine)
        if missing:
            return Check(False, missing)
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure is a reason, named without values
            return Check(False, describe(exc))
        return Check(True, self.engine.dialect.name)

    def _disk_check(self) -> Check:
        assert self.data_dir is not None
        try:
            space = data_dir_space(self.data_dir)
        except OSError as exc:
            return Check(False, f"data dir {self.data_dir} cannot be examined: {describe(exc)}")
        return Check(not space.full, space.describe())

    def close(self) -> None:
        self._redis_pool.shutdown(wait=False, cancel_futures=True)
        self._database_pool.shutdown(wait=False, cancel_futures=True)
        self._disk_pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            self.client.close()


def _within(future: concurrent.futures.Future[Any], deadline: float, late: Any) -> Any:
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except concurrent.futures.TimeoutError:
        future.cancel()  # still queued behind a hung check: never runs
        return late


def _unknown() -> Check:
    return Check(False, "unknown: Redis not reached")


def _workers_check(records: list[WorkerRecord], heartbeats: int, heartbeat_timeout_ms: int) -> Check:
    if not records and heartbeats:
        return Check(
            False,
            f"{heartbeats} heartbeat(s) within {heartbeat_timeout_ms / 1000:g} s but no worker record: processes "
            "that only queue messages, or workers of a release older than this one",
        )
    if not records:
        return Check(False, f"no worker heartbeat within {heartbeat_timeout_ms / 1000:g} s")
    return Check(True, f"{len(records)} live")


def _mappings_check(records: list[WorkerRecord]) -> Check:
    loaded = [record for record in records if record.message_types > 0]
    if not loaded:
        return Check(False, "no live worker has compiled mappings (a worker heartbeats once they compiled)")
    return Check(True, f"{max(record.message_types for record in loaded)} message types")


def _missing_sqlite_file(engine: Engine) -> str:
    """For a SQLite file: why it cannot be used ("" when it can). An open connection keeps working
    on a file deleted or moved away, while everything written from then on would be lost."""
    url = make_url(str(engine.url))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return ""
    if not os.path.isfile(url.database):
        return "the SQLite database file is missing"
    if not os.access(url.database, os.R_OK | os.W_OK):
        return "the SQLite database file is not readable and writable"
    return ""
