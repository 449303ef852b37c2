"""Worker: queued envelopes through the real pipeline, with retries and dead letters."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import Engine

from gateway.envelope import Envelope
from gateway.errors import TransientDeliveryError
from gateway.journal.dead_letters import DeadLetterStore
from gateway.keys import Keys
from gateway.store.resources import ResourceStore
from tests.conftest import sample
from tests.support.queue import (
    RunningWorker,
    archive_statuses,
    enqueue,
    parsed_envelope,
    wait_until,
    worker_settings,
)


def test_messages_are_converted_and_stored(
    tmp_path: Path, engine: Engine, database_url: str, redis_url: str, redis_namespace: str
) -> None:
    envelopes = [
        parsed_envelope(sample("v2-to-fhir-ig/ADT_A01.hl7")),
        parsed_envelope(sample("v2-to-fhir-ig/ORU_R01.hl7")),
    ]
    enqueue(redis_url, redis_namespace, envelopes)
    with RunningWorker(worker_settings(tmp_path, database_url, redis_namespace), redis_url):
        wait_until(lambda: archive_statuses(engine, envelopes) == ["processed", "processed"])
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
    envelopes = [parsed_envelope(no_patient), charset_env]
    enqueue(redis_url, redis_namespace, envelopes)
    with RunningWorker(worker_settings(tmp_path, database_url, redis_namespace), redis_url):
        wait_until(lambda: archive_statuses(engine, envelopes) == ["failed", "failed"])
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
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.services.failures")
    calls: list[str] = []

    def always_busy(self, bundle, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(bundle["entry"][0]["resource"]["id"])
        raise TransientDeliveryError("database is locked")

    # Fault injection at the sink seam, as a remote server outage would look.
    monkeypatch.setattr("gateway.deliver.store_sink.StoreSink.deliver", always_busy)
    envelopes = [parsed_envelope(sample("v2-to-fhir-ig/ADT_A01.hl7"))]
    enqueue(redis_url, redis_namespace, envelopes)
    with RunningWorker(worker_settings(tmp_path, database_url, redis_namespace, max_retries=2), redis_url):
        wait_until(lambda: archive_statuses(engine, envelopes) == ["failed"], timeout=30)
    assert len(calls) == 3  # first try and two retries
    (letter,) = DeadLetterStore(engine).list()
    assert letter.stage == "deliver" and "database is locked" in letter.reason and letter.attempts == 3
    # One line for the retries and one for the dead letter, not one per attempt.
    lines = [r for r in caplog.records if r.name == "gateway.services.failures" and r.levelno >= logging.INFO]
    assert [r.levelno for r in lines] == [logging.INFO, logging.WARNING]
