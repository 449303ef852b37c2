"""Worker: queued envelopes through the real pipeline, with retries and dead letters."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import Engine

from gateway.config import Settings
from gateway.envelope import Envelope
from gateway.errors import TransientDeliveryError
from gateway.hl7.message import parse
from gateway.journal.dead_letters import DeadLetterStore
from gateway.journal.messages import MessageArchive
from gateway.keys import Keys
from gateway.queue.intake import Intake
from gateway.services.worker import run_worker
from gateway.store.resources import ResourceStore
from tests.conftest import sample


def _envelope(raw: bytes) -> Envelope:
    message = parse(raw.decode("utf-8"))
    return Envelope(
        id=str(uuid.uuid4()),
        raw=raw,
        received_at=int(time.time() * 1000),
        sender=message.sender,
        control_id=message.control_id,
    )


def _enqueue(redis_url: str, namespace: str, envelopes: list[Envelope]) -> None:
    async def go() -> None:
        intake = Intake(redis_url, namespace=namespace)
        await intake.start()
        try:
            await asyncio.gather(*(intake.submit(e) for e in envelopes))
        finally:
            await intake.close()

    asyncio.run(go())


class RunningWorker:
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


def _wait(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _settings(tmp_path: Path, database_url: str, namespace: str, **kw: object) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url, redis_namespace=namespace, worker_threads=2, **kw)


def _archive_statuses(engine: Engine, envelopes: list[Envelope]) -> list[str]:
    archive = MessageArchive(engine)
    return [getattr(archive.get(e.id), "status", "missing") for e in envelopes]


def test_messages_are_converted_and_stored(
    tmp_path: Path, engine: Engine, database_url: str, redis_url: str, redis_namespace: str
) -> None:
    envelopes = [_envelope(sample("v2-to-fhir-ig/ADT_A01.hl7")), _envelope(sample("v2-to-fhir-ig/ORU_R01.hl7"))]
    _enqueue(redis_url, redis_namespace, envelopes)
    with RunningWorker(_settings(tmp_path, database_url, redis_namespace), redis_url):
        _wait(lambda: _archive_statuses(engine, envelopes) == ["processed", "processed"])
    store = ResourceStore(engine)
    patients = store.search("Patient", {"identifier": ["1032702"]})
    assert patients and all(p["birthDate"] == "1970-06-01" for p in patients)
    assert len(store.search("Observation", {"code": ["6153-1"]})) == 1
    # Everything was acknowledged to the queue: nothing waits, nothing is in flight.
    client = redis.Redis.from_url(redis_url)
    assert client.llen(Keys(redis_namespace).queue()) == 0
    assert client.hlen(Keys(redis_namespace).queue_messages()) == 0


def test_bad_content_is_dead_lettered_with_stage(
    tmp_path: Path, engine: Engine, database_url: str, redis_url: str, redis_namespace: str
) -> None:
    no_patient = b"MSH|^~\\&|LAB|HOSP|GW|GW|20240101120000||ADT^A01^ADT_A01|NOPID|P|2.5.1\rEVN|A01|20240101\r"
    bad_charset = (
        b"MSH|^~\\&|LAB|HOSP|GW|GW|20240101120000||ADT^A01^ADT_A01|BADCS|P|2.5.1|||||||UNICODE UTF-8\r"
        b"PID|1||\xff\xfe^^^H^MR\r"
    )
    # The second one's bytes are not UTF-8 although MSH-18 says so: it cannot be parsed in a worker.
    charset_env = Envelope(
        id=str(uuid.uuid4()),
        raw=bad_charset,
        received_at=int(time.time() * 1000),
        sender="LAB|HOSP",
        control_id="BADCS",
    )
    envelopes = [_envelope(no_patient), charset_env]
    _enqueue(redis_url, redis_namespace, envelopes)
    with RunningWorker(_settings(tmp_path, database_url, redis_namespace), redis_url):
        _wait(lambda: _archive_statuses(engine, envelopes) == ["failed", "failed"])
    letters = {d.control_id: d for d in DeadLetterStore(engine).list()}
    assert letters["NOPID"].stage == "convert"
    assert letters["NOPID"].raw == no_patient
    assert letters["BADCS"].stage == "parse"
    assert letters["BADCS"].raw == bad_charset
    assert all(d.attempts == 1 for d in letters.values())  # not retryable: parked at once


def test_transient_failures_are_retried_then_parked(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    redis_url: str,
    redis_namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def always_busy(self, bundle, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(bundle["entry"][0]["resource"]["id"])
        raise TransientDeliveryError("database is locked")

    # Fault injection at the sink seam, as a remote server outage would look.
    monkeypatch.setattr("gateway.deliver.store_sink.StoreSink.deliver", always_busy)
    envelopes = [_envelope(sample("v2-to-fhir-ig/ADT_A01.hl7"))]
    _enqueue(redis_url, redis_namespace, envelopes)
    with RunningWorker(_settings(tmp_path, database_url, redis_namespace, max_retries=2), redis_url):
        _wait(lambda: _archive_statuses(engine, envelopes) == ["failed"], timeout=30)
    assert len(calls) == 3  # first try and two retries
    (letter,) = DeadLetterStore(engine).list()
    assert letter.stage == "deliver" and "database is locked" in letter.reason and letter.attempts == 3
