"""``hl7gw status``: the readiness checks of ``GET /health/ready``, then what waits in each queue, how
many workers heartbeat, when each sender last sent and how many dead letters are open; for a person,
or as one JSON document (``--json``). Only reads: it never creates a database or a key."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import redis

from gateway.backlog import QueueBacklog, live_workers, pipeline_queues, read_backlog, senders_last_seen
from gateway.config import Settings
from gateway.db.engine import make_engine
from gateway.errors import describe
from gateway.journal.dead_letters import DeadLetterStore
from gateway.readiness import REFUSED, Readiness, ReadinessProbe


@dataclass
class Status:
    readiness: Readiness
    #: The Redis asked (without a password), and how it was found.
    redis: str
    queues: list[QueueBacklog] | None = None
    senders: dict[str, float] | None = None
    dead_letters_open: int | None = None
    #: What could not be read beyond the checks, and why.
    problems: list[str] = field(default_factory=list)

    def as_data(self, now: float) -> dict[str, Any]:
        data = self.readiness.as_data()
        data["redis"] = self.redis
        data["workers"] = len(self.readiness.workers) if self.readiness.checks["redis"].ok else None
        data["queues"] = [asdict(queue) for queue in self.queues] if self.queues is not None else None
        data["senders"] = (
            [
                {"sender": name, "last_message_at": _iso(seen), "silent_s": round(max(0.0, now - seen), 1)}
                for name, seen in sorted(self.senders.items())
            ]
            if self.senders is not None
            else None
        )
        data["dead_letters_open"] = self.dead_letters_open
        data["problems"] = self.problems
        return data


def gather(settings: Settings, redis_url: str | None, found_as: str = "") -> Status:
    """Everything ``hl7gw status`` shows, from ``redis_url`` and the configured database."""
    engine = make_engine(settings.storage.database_url)
    probe = ReadinessProbe(
        redis_url,
        settings.storage.redis_namespace,
        engine,
        settings.worker.heartbeat_timeout_ms,
        settings.api.health_check_timeout_s,
        data_dir=settings.storage.data_dir,
        allow_volatile_redis=settings.storage.allow_volatile_redis,
    )
    try:
        status = Status(probe.check(), _without_password(redis_url) + found_as if redis_url else "none")
        redis_check = status.readiness.checks["redis"]
        if probe.client is not None and (redis_check.ok or redis_check.reason.startswith(REFUSED)):
            _read_queues(status, probe, settings)
        if status.readiness.checks["database"].ok:
            try:
                status.dead_letters_open = DeadLetterStore(engine).count_open()
            except Exception as exc:  # noqa: BLE001 - shown, not raised
                status.problems.append(f"dead letters not counted: {describe(exc)}")
        return status
    finally:
        probe.close()
        engine.dispose()


def _read_queues(status: Status, probe: ReadinessProbe, settings: Settings) -> None:
    assert probe.client is not None
    try:
        live = live_workers(probe.client, probe.keys, settings.worker.heartbeat_timeout_ms)
        queues = pipeline_queues(spec.queue for spec in settings.sinks.specs)
        status.queues = read_backlog(probe.client, probe.keys, queues, live)
        status.senders = senders_last_seen(probe.client, probe.keys)
    except redis.RedisError as exc:
        status.problems.append(f"queues not read: {describe(exc)}")


def print_status(status: Status, out: TextIO, as_json: bool, now: float | None = None) -> None:
    now = time.time() if now is None else now
    if as_json:
        print(json.dumps(status.as_data(now), indent=2), file=out)
        return
    readiness = status.readiness
    print(f"hl7gw: {'ready' if readiness.ready else 'NOT READY'}", file=out)
    for name, check in readiness.checks.items():
        what = status.redis if name == "redis" and check.ok else check.reason
        print(f"  {name:10} {'ok' if check.ok else 'FAILED':7} {what}".rstrip(), file=out)
    if status.queues is not None:
        print(f"\n{'queue':24} {'depth':>8} {'in flight':>10} {'delayed':>8}  oldest", file=out)
        for q in status.queues:
            oldest = _age(q.oldest_age_s) if q.depth else "-"
            print(f"{q.queue:24} {q.depth:8d} {q.in_flight:10d} {q.delayed:8d}  {oldest}", file=out)
    if status.senders is not None:
        if status.senders:
            print(f"\n{'sender':32} last message", file=out)
            for name, seen in sorted(status.senders.items()):
                print(f"{name:32} {_iso(seen)}  ({_age(now - seen)} ago)", file=out)
        else:
            print("\nsenders: none has sent a message yet", file=out)
    if status.dead_letters_open is not None:
        print(f"\nopen dead letters: {status.dead_letters_open}", file=out)
    for problem in status.problems:
        print(f"note: {problem}", file=out)


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _without_password(url: str) -> str:
    """``url`` without its password (a Redis URL may carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.hostname or ""
    netloc = f"{user}{host}:{parts.port}" if parts.port else f"{user}{host}"
    return urlunsplit(parts._replace(netloc=netloc))
