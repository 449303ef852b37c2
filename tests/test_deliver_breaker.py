"""The per-sink circuit breaker, shared by workers through a real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from gateway.deliver.breaker import CircuitBreaker
from gateway.keys import Keys


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def breaker(client: redis.Redis, namespace: str, **kw: float) -> CircuitBreaker:
    options = {"threshold": 3, "cooldown_s": 0.3, "max_cooldown_s": 1.0, "probe_s": 5.0} | kw
    return CircuitBreaker(client, Keys(namespace), "hapi", **options)  # type: ignore[arg-type]


def test_closed_until_enough_failures_in_a_row(client: redis.Redis, redis_namespace: str) -> None:
    one = breaker(client, redis_namespace)
    assert one.wait_ms() == 0
    assert [one.failure(), one.failure()] == [1, 2]
    assert one.wait_ms() == 0 and not one.is_open()
    one.success()  # a success resets the count
    assert [one.failure(), one.failure(), one.failure()] == [1, 2, 3]

    assert one.is_open()
    assert 0 < one.wait_ms() <= 300


def test_state_is_shared_between_workers(client: redis.Redis, redis_namespace: str) -> None:
    worker_a, worker_b = breaker(client, redis_namespace), breaker(client, redis_namespace)
    for _ in range(3):
        worker_a.failure()
    assert worker_b.wait_ms() > 0
    assert breaker(client, f"{redis_namespace}-other").wait_ms() == 0  # another namespace, another breaker


def test_half_open_lets_one_probe_through_and_its_outcome_decides(client: redis.Redis, redis_namespace: str) -> None:
    worker_a, worker_b = breaker(client, redis_namespace), breaker(client, redis_namespace)
    for _ in range(3):
        worker_a.failure()
    time.sleep(0.35)

    assert worker_a.wait_ms() == 0  # the probe
    assert worker_b.wait_ms() > 0  # everyone else waits for its outcome

    worker_a.failure()  # the probe failed: open again, for twice as long
    assert 300 < worker_b.wait_ms() <= 600
    time.sleep(0.65)
    assert worker_b.wait_ms() == 0
    worker_b.success()
    assert worker_a.wait_ms() == 0 and worker_b.wait_ms() == 0 and not worker_a.is_open()


def test_cooldown_is_capped(client: redis.Redis, redis_namespace: str) -> None:
    one = breaker(client, redis_namespace)
    for _ in range(12):
        one.failure()
    assert 0 < one.wait_ms() <= 1000
