"""GET /health/ready follows Redis, the database and the workers; GET /health/live stays 200 throughout.

Real parts: a redis-server of our own (stopped and started again on its port), a real worker in a
thread (it compiles the mappings and heartbeats), SQLite files and PostgreSQL."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.db.engine import make_engine
from gateway.db.migrate import migrate
from gateway.keys import Keys
from gateway.services.embedded_redis import EmbeddedRedis
from gateway.services.status import gather
from tests.support.asgi_client import AsgiClient
from tests.support.faults import CuttableProxy
from tests.support.queue import RunningWorker, wait_until
from tests.support.redis_server import redis_server

#: Short, so that a stopped worker is noticed quickly (its maintenance heartbeats every 2 s).
HEARTBEAT_TIMEOUT_MS = 5_000


def settings_for(tmp_path: Path, redis_url: str | None, **kw: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        redis_namespace="ready",
        api_tokens="t:reader",
        heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS,
        outage_max_backoff_s=1.0,
        worker_threads=2,
        health_check_timeout_s=0.5,
        **kw,
    )


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, which the test may stop and start on the same port."""
    server = EmbeddedRedis(tmp_path / "redis", persistent=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ready(client: AsgiClient) -> tuple[int, dict[str, Any]]:
    response = client.get("/health/ready")
    return response.status_code, response.json()


def failed(body: dict[str, Any]) -> set[str]:
    return {name for name, check in body["checks"].items() if not check["ok"]}


def assert_live(client: AsgiClient) -> None:
    response = client.get("/health/live")
    assert (response.status_code, response.json()) == (200, {"status": "live"})


def test_ready_follows_the_workers_and_redis(tmp_path: Path, own_redis: EmbeddedRedis) -> None:
    settings = settings_for(tmp_path, own_redis.url)
    client = AsgiClient(create_app(settings))

    # Redis and the database answer, but no worker runs yet.
    status, body = ready(client)
    assert status == 503 and body["status"] == "not ready"
    assert failed(body) == {"workers", "mappings"}
    assert body["checks"]["workers"]["reason"] == "no worker heartbeat within 5 s"
    assert_live(client)

    # A process that only queues messages (an API replaying a letter) heartbeats too: not a worker.
    redis.Redis.from_url(own_redis.url).zadd(Keys("ready").heartbeats(), {"enqueuer": int(time.time() * 1000)})
    body = ready(client)[1]
    assert failed(body) == {"workers", "mappings"}
    assert body["checks"]["workers"]["reason"].startswith("1 heartbeat(s) within 5 s but no worker record")

    with RunningWorker(settings, own_redis.url):
        wait_until(lambda: ready(client)[0] == 200, what="ready with a worker")
        body = ready(client)[1]
        assert body == {
            "status": "ready",
            "checks": {
                "redis": {"ok": True},
                "database": {"ok": True, "detail": "sqlite"},
                "workers": {"ok": True, "detail": "1 live"},
                "mappings": {"ok": True, "detail": body["checks"]["mappings"]["detail"]},
                "disk": {"ok": True, "detail": body["checks"]["disk"]["detail"]},
            },
        }
        assert body["checks"]["disk"]["detail"].startswith(f"{settings.storage.data_dir.resolve()} has ")
        assert int(body["checks"]["mappings"]["detail"].split()[0]) > 10  # message types compiled

        own_redis.stop()
        started = time.monotonic()
        status, body = ready(client)
        assert time.monotonic() - started < 5
        assert status == 503
        assert failed(body) == {"redis", "workers", "mappings"}
        assert "ConnectionError" in body["checks"]["redis"]["reason"]
        assert body["checks"]["workers"]["reason"] == "unknown: Redis not reached"
        assert_live(client)

        own_redis.start()  # same port; empty (not persistent): the worker heartbeats again by itself
        wait_until(lambda: ready(client)[0] == 200, timeout=30, what="ready again after Redis returned")
        assert_live(client)

    # The worker stopped: its heartbeat and record expire after the heartbeat timeout.
    wait_until(lambda: ready(client)[0] == 503, timeout=HEARTBEAT_TIMEOUT_MS / 1000 + 5, what="not ready")
    assert failed(ready(client)[1]) == {"workers", "mappings"}
    assert_live(client)


def test_a_hung_redis_is_reported_within_the_check_timeout(tmp_path: Path) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    try:
        client = AsgiClient(create_app(settings_for(tmp_path, f"redis://127.0.0.1:{silent.getsockname()[1]}/0")))
        started = time.monotonic()
        status, body = ready(client)
        took = time.monotonic() - started
        assert_live(client)
    finally:
        silent.close()
        for conn in held:
            conn.close()
    assert status == 503
    assert took < 3, took  # the check timeout is 0.5 s
    assert body["checks"]["redis"]["ok"] is False
    assert "imeout" in body["checks"]["redis"]["reason"] or "no answer within" in body["checks"]["redis"]["reason"]
    assert body["checks"]["database"]["ok"] is True


def test_no_redis_configured_is_not_ready(tmp_path: Path) -> None:
    client = AsgiClient(create_app(settings_for(tmp_path, None)))
    status, body = ready(client)
    assert status == 503
    assert body["checks"]["redis"] == {"ok": False, "reason": "no Redis to ask: HL7GW_REDIS_URL is not set"}
    assert_live(client)


def test_a_redis_that_can_lose_what_it_acknowledges_is_not_ready_unless_allowed(tmp_path: Path) -> None:
    """The listener refuses every message on such a Redis (gateway/queue/durability.py); readiness
    and ``hl7gw status`` say so, naming the setting, and still read the queues."""
    with redis_server(tmp_path / "volatile", "appendonly no") as url:
        settings = settings_for(tmp_path, url, allow_volatile_redis=False)
        client = AsgiClient(create_app(settings))
        status, body = ready(client)
        assert status == 503
        reason = body["checks"]["redis"]["reason"]
        assert reason.startswith("messages are refused: ") and "appendonly is no" in reason
        assert "HL7GW_ALLOW_VOLATILE_REDIS" in reason
        shown = gather(settings, url)
        assert shown.readiness.checks["redis"].reason == reason and shown.queues is not None
        assert gather(settings_for(tmp_path, url, allow_volatile_redis=True), url).readiness.checks["redis"].ok
        server = redis.Redis.from_url(url)
        server.config_set("appendonly", "yes")
        server.config_set("appendfsync", "always")
        server.close()
        assert ready(client)[1]["checks"]["redis"] == {"ok": True}


def test_a_sqlite_file_moved_away_is_not_ready_until_it_is_back(tmp_path: Path, own_redis: EmbeddedRedis) -> None:
    settings = settings_for(tmp_path, own_redis.url)
    client = AsgiClient(create_app(settings))
    database = Path(settings.storage.database_url.removeprefix("sqlite:///"))
    with RunningWorker(settings, own_redis.url):
        wait_until(lambda: ready(client)[0] == 200, what="ready")
        os.rename(database, database.with_suffix(".away"))
        try:
            status, body = ready(client)
            assert status == 503 and failed(body) == {"database"}
            assert body["checks"]["database"]["reason"] == "the SQLite database file is missing"
            assert_live(client)
        finally:
            os.rename(database.with_suffix(".away"), database)
        assert ready(client)[0] == 200


def test_a_database_on_a_closed_port_is_not_ready(tmp_path: Path, redis_url: str) -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:1/none")
    try:
        client = AsgiClient(create_app(settings_for(tmp_path, redis_url), engine))
        status, body = ready(client)
        assert_live(client)
    finally:
        engine.dispose()
    assert status == 503
    assert body["checks"]["database"]["ok"] is False
    assert "08001" in body["checks"]["database"]["reason"] or "refused" in body["checks"]["database"]["reason"]


@pytest.mark.skipif(not os.environ.get("HL7GW_TEST_DATABASE_URL"), reason="needs HL7GW_TEST_DATABASE_URL")
def test_postgresql_cut_away_and_back(tmp_path: Path, redis_url: str) -> None:
    from tests.conftest import postgres_schema

    with postgres_schema(os.environ["HL7GW_TEST_DATABASE_URL"]) as url:
        proxy = CuttableProxy.for_url(url)
        engine = make_engine(proxy.url(url))
        migrate(engine)
        try:
            client = AsgiClient(create_app(settings_for(tmp_path, redis_url), engine))
            assert ready(client)[1]["checks"]["database"] == {"ok": True, "detail": "postgresql"}
            proxy.cut()
            body = ready(client)[1]
            assert body["checks"]["database"]["ok"] is False, body
            assert_live(client)
            proxy.restore()
            wait_until(lambda: ready(client)[1]["checks"]["database"]["ok"], what="database back")
        finally:
            engine.dispose()
            proxy.close()
