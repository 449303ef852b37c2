"""The queue in tests: envelopes, the intake, a worker running in a thread, and waiting for them."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from dramatiq import Message
from sqlalchemy.engine import Engine

from gateway.config import Settings
from gateway.envelope import Envelope
from gateway.hl7.message import parse
from gateway.journal.messages import MessageArchive
from gateway.keys import QUEUE, Keys
from gateway.queue.intake import Intake, Receipt
from gateway.services.worker import run_worker


def parsed_envelope(raw: bytes, seq: int = 1, **kw: Any) -> Envelope:
    """The envelope of a message received now, its sender and MSH-10 read from ``raw``."""
    message = parse(raw.decode("utf-8"))
    return Envelope(
        id=kw.pop("id", str(uuid.uuid4())),
        raw=raw,
        received_at=kw.pop("received_at", int(time.time() * 1000)),
        sender=message.sender,
        control_id=message.control_id,
        seq=seq,
        **kw,
    )


def queued_envelope(
    sender: str = "App|Fac", control_id: str = "1", raw: bytes = b"MSH|^~\\&|App|Fac\r", kind: str = "message"
) -> Envelope:
    """An envelope as the listener queues it, of any kind (rejected ones carry their reason)."""
    return Envelope(
        id=str(uuid.uuid4()),
        raw=raw,
        received_at=int(time.time() * 1000),
        sender=sender,
        control_id=control_id,
        kind=kind,  # type: ignore[arg-type]
        meta={} if kind == "message" else {"reason": "AR: 203 MSH-12 version"},
    )


async def submit_all(redis_url: str, namespace: str, envelopes: list[Envelope], **options: int) -> list[Receipt]:
    intake = Intake(redis_url, namespace=namespace, **options)
    await intake.start()
    try:
        return list(await asyncio.gather(*(intake.submit(e) for e in envelopes)))
    finally:
        await intake.close()


def enqueue(redis_url: str, namespace: str, envelopes: list[Envelope]) -> None:
    """Commit ``envelopes`` to the queue as the listener would."""
    asyncio.run(submit_all(redis_url, namespace, envelopes))


def queued(redis_url: str, namespace: str, queue: str = QUEUE) -> list[Envelope]:
    """The envelopes waiting in ``queue`` (the live one unless told), oldest first."""
    keys = Keys(namespace)
    client = redis.Redis.from_url(redis_url)
    try:
        ids = client.lrange(keys.queue(queue), 0, -1)
        return [Envelope.from_json(Message.decode(client.hget(keys.queue_messages(queue), i)).args[0]) for i in ids]
    finally:
        client.close()


class RunningWorker:
    """``run_worker`` in a thread for the length of a ``with`` block, stopped and drained at its end."""

    def __init__(self, settings: Settings, redis_url: str):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run_worker, args=(settings, redis_url, self.stop), daemon=True)

    def __enter__(self) -> RunningWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(90)
        assert not self.thread.is_alive()


def worker_settings(tmp_path: Path, database_url: str, namespace: str, **kw: Any) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url, redis_namespace=namespace, worker_threads=2, **kw)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout:.0f} s")


def archive_statuses(engine: Engine, envelopes: list[Envelope]) -> list[str]:
    """Each envelope's archive status ("missing" when it has no row yet)."""
    archive = MessageArchive(engine)
    return [getattr(archive.get(e.id), "status", "missing") for e in envelopes]
