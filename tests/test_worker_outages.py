"""A worker through outages of its database and of Redis: it holds its messages and waits, however
long; nothing is dead-lettered for an outage, nothing ends in dramatiq's ``.XQ``, and a dead letter
the database cannot take waits in Redis.

The servers are real (the test PostgreSQL, SQLite, Redis); the outages are real connection losses,
made by a proxy that cuts the network (tests/support/faults.py) or, for SQLite, a lock another connection holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from gateway.config import Settings
from gateway.db.engine import make_engine
from gateway.db.migrate import migrate
from gateway.envelope import Envelope
from gateway.journal.dead_letters import DeadLetterStore, Letter
from gateway.journal.messages import MessageArchive
from gateway.keys import Keys
from gateway.services.letters import LetterBox
from tests.conftest import postgres_schema
from tests.support.faults import CuttableProxy
from tests.support.messages import a04
from tests.support.queue import RunningWorker, enqueue, parsed_envelope, wait_until

pytestmark = pytest.mark.slow


def statuses(engine: Engine, envelopes: list[Envelope]) -> list[str]:
    archive = MessageArchive(engine)
    return [getattr(archive.get(e.id), "status", "missing") for e in envelopes]


def dead_queue_sizes(redis_url: str, namespace: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(int(client.zcard(key)) for key in client.scan_iter(match=f"{namespace}:*.XQ"))
    finally:
        client.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    base = os.environ.get("HL7GW_TEST_DATABASE_URL")
    if not base:
        pytest.skip("needs HL7GW_TEST_DATABASE_URL (a PostgreSQL to cut the connection to)")
    with postgres_schema(base) as url:
        yield url


def test_a_database_outage_is_waited_out_with_nothing_dead_lettered(
    tmp_path: Path, postgres_url: str, redis_url: str, redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(postgres_url)  # direct, for the test's own reads
    migrate(engine)
    proxy = CuttableProxy.for_url(postgres_url)
    settings = Settings(
        data_dir=tmp_path,
        database_url=proxy.url(postgres_url),
        redis_namespace=redis_namespace,
        worker_threads=4,
        max_retries=1,  # the old behaviour: two failed attempts, then the message was gone
        outage_max_backoff_s=0.5,
    )
    caplog.set_level(logging.WARNING, logger="gateway.services.outages")
    before = [parsed_envelope(a04(n)) for n in range(3)]
    during = [parsed_envelope(a04(n)) for n in range(3, 23)]
    try:
        enqueue(redis_url, redis_namespace, before)
        with RunningWorker(settings, redis_url):
            wait_until(lambda: statuses(engine, before) == ["processed"] * 3, timeout=30)
            proxy.cut()
            enqueue(redis_url, redis_namespace, during)
            time.sleep(6)  # far longer than 1 retry's backoff
            assert statuses(engine, during) == ["missing"] * len(during)
            assert DeadLetterStore(engine).list() == []
            proxy.restore()
            wait_until(lambda: statuses(engine, during) == ["processed"] * len(during), timeout=60)
        assert DeadLetterStore(engine).list() == []
        assert dead_queue_sizes(redis_url, redis_namespace) == 0
        outage = [r.getMessage() for r in caplog.records if r.name == "gateway.services.outages"]
        assert len([m for m in outage if "database unavailable" in m]) == 1, outage  # once, not per message
        assert len([m for m in outage if "database answers again" in m]) == 1, outage
    finally:
        proxy.close()
        engine.dispose()


def test_a_worker_that_starts_while_the_database_is_down_waits_for_it(
    tmp_path: Path, postgres_url: str, redis_url: str, redis_namespace: str
) -> None:
    engine = make_engine(postgres_url)
    proxy = CuttableProxy.for_url(postgres_url)
    proxy.cut()
    settings = Settings(
        data_dir=tmp_path, database_url=proxy.url(postgres_url), redis_namespace=redis_namespace, worker_threads=2
    )
    envelopes = [parsed_envelope(a04(n)) for n in range(3)]
    try:
        enqueue(redis_url, redis_namespace, envelopes)
        with RunningWorker(settings, redis_url) as worker:
            time.sleep(3)
            assert worker.thread.is_alive()  # waiting, not crashed
            proxy.restore()

            def processed() -> bool:
                try:
                    return statuses(engine, envelopes) == ["processed"] * 3
                except SQLAlchemyError:  # the worker has not created the tables yet
                    return False

            wait_until(processed, timeout=60)
    finally:
        proxy.close()
        engine.dispose()


def test_a_redis_outage_is_waited_out_and_each_message_is_processed(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    redis_url: str,
    redis_namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = CuttableProxy.for_url(redis_url)
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        redis_namespace=redis_namespace,
        worker_threads=4,
        max_retries=1,
        heartbeat_timeout_ms=2_000,  # what the old identity held comes back quickly
        outage_max_backoff_s=0.5,
    )
    caplog.set_level(logging.WARNING, logger="gateway")
    envelopes = [parsed_envelope(a04(n)) for n in range(40)]
    try:
        with RunningWorker(settings, proxy.url(redis_url)):
            enqueue(redis_url, redis_namespace, envelopes[:20])
            time.sleep(0.5)
            proxy.cut()  # mid-stream: some processed, some held, some still queued
            enqueue(redis_url, redis_namespace, envelopes[20:])
            time.sleep(5)
            proxy.restore()
            wait_until(lambda: statuses(engine, envelopes) == ["processed"] * len(envelopes), timeout=60)
            keys = Keys(redis_namespace)
            client = redis.Redis.from_url(redis_url)
            wait_until(lambda: client.llen(keys.queue()) == 0 and client.hlen(keys.queue_messages()) == 0, timeout=30)
            client.close()

            def logged(text: str) -> bool:
                return any(text in r.getMessage() for r in caplog.records)

            # The new identity is taken by the maintenance thread on its next round (every 2 s),
            # which may come after the last message was already stored.
            wait_until(lambda: logged("reconnected to Redis as consumer"), timeout=15)
        assert DeadLetterStore(engine).list() == []
        assert dead_queue_sizes(redis_url, redis_namespace) == 0
        assert logged("redis unavailable")
    finally:
        proxy.close()


@contextlib.contextmanager
def database_down(engine: Engine, database_url: str) -> Iterator[Engine]:
    """An engine on the same database that cannot write now: SQLite locked by another connection
    (and a short busy timeout), PostgreSQL behind a cut proxy. Writing works again on exit."""
    if engine.dialect.name == "sqlite":
        impatient = make_engine(database_url)

        @event.listens_for(impatient, "connect")
        def _short_wait(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=50")

        blocker = engine.connect()
        blocker.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield impatient
        finally:
            blocker.rollback()
            blocker.close()
        return
    proxy = CuttableProxy.for_url(database_url)
    proxied = make_engine(proxy.url(database_url))
    proxy.cut()
    try:
        yield proxied
    finally:
        proxy.restore()
    proxy.close()


def test_a_dead_letter_the_database_cannot_take_waits_in_redis(
    engine: Engine, database_url: str, redis_url: str, redis_namespace: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = Keys(redis_namespace)
    raw = a04(1)
    letter = Letter(parsed_envelope(raw), "convert", "ADT_A04: no PID segment", "MappingError", 1)
    with database_down(engine, database_url) as down:
        box = LetterBox(DeadLetterStore(down), client, keys)
        assert box.post(letter) == "parked"
        assert box.parked() == 1 and DeadLetterStore(engine).list() == []
        assert box.move_parked() == 0 and box.parked() == 1  # still down: it stays
    box = LetterBox(DeadLetterStore(engine), client, keys)
    assert box.move_parked() == 1 and box.parked() == 0
    (stored,) = DeadLetterStore(engine).list()
    assert (stored.id, stored.stage, stored.raw, stored.status) == (letter.id, "convert", raw, "open")
    assert MessageArchive(engine).get(letter.envelope.id).status == "failed"  # type: ignore[union-attr]
    assert box.post(letter) == "stored" and len(DeadLetterStore(engine).list()) == 1  # the same letter, once
    client.close()
