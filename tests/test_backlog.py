"""gateway/backlog.py against a real Redis: dramatiq's own queues, fetched by a real consumer."""

from __future__ import annotations

import time

import dramatiq
import redis

from gateway.backlog import live_workers, pipeline_queues, read_backlog, senders_last_seen
from gateway.keys import IMPORT_QUEUE, QUEUE, REPLAY_QUEUE, Keys
from gateway.queue.broker import make_broker


def _message(queue: str, age_ms: int) -> dramatiq.Message[object]:
    return dramatiq.Message(
        queue_name=queue,
        actor_name="noop",
        args=(),
        kwargs={},
        options={},
        message_timestamp=int(time.time() * 1000) - age_ms,
    )


def test_backlog_counts_waiting_in_flight_and_delayed_and_ages_the_oldest(redis_url: str, redis_namespace: str) -> None:
    broker = make_broker(redis_url, namespace=redis_namespace)
    broker.declare_queue(REPLAY_QUEUE)
    keys = Keys(redis_namespace)
    client = redis.Redis.from_url(redis_url)
    try:
        empty = read_backlog(client, keys, pipeline_queues(), [])
        assert [(b.queue, b.depth, b.in_flight, b.delayed, b.oldest_age_s) for b in empty] == [
            (QUEUE, 0, 0, 0, 0.0),
            (REPLAY_QUEUE, 0, 0, 0, 0.0),
            (IMPORT_QUEUE, 0, 0, 0, 0.0),
        ]
        broker.enqueue(_message(QUEUE, age_ms=90_000))  # the oldest: fetched below, so in flight
        broker.enqueue(_message(QUEUE, age_ms=30_000))
        broker.enqueue(_message(QUEUE, age_ms=10_000))
        broker.enqueue(_message(QUEUE, age_ms=0), delay=60_000)
        consumer = broker.consume(QUEUE, prefetch=1, timeout=1000)
        fetched = next(consumer)
        assert fetched is not None
        workers = live_workers(client, keys, heartbeat_timeout_ms=15_000)
        assert workers == [broker.broker_id]
        live, replay, imported = read_backlog(client, keys, pipeline_queues(), workers)
        assert (live.depth, live.in_flight, live.delayed) == (3, 1, 1)
        assert 89 <= live.oldest_age_s < 100
        assert (replay.depth, replay.delayed, replay.oldest_age_s) == (0, 0, 0.0)
        assert (imported.depth, imported.delayed, imported.oldest_age_s) == (0, 0, 0.0)
        # Without the worker's in-flight set the oldest is the head of the waiting list.
        (live_without,) = read_backlog(client, keys, [QUEUE], [])
        assert 29 <= live_without.oldest_age_s < 40
        consumer.close()
    finally:
        broker.close()
        client.close()


def test_live_workers_ignores_stale_heartbeats(redis_url: str, redis_namespace: str) -> None:
    keys = Keys(redis_namespace)
    client = redis.Redis.from_url(redis_url)
    now = int(time.time() * 1000)
    client.zadd(keys.heartbeats(), {"fresh": now - 1_000, "stale": now - 60_000})
    assert live_workers(client, keys, heartbeat_timeout_ms=15_000, now_ms=now) == ["fresh"]
    client.hset(keys.sender_last_seen(), mapping={"LAB|HOSP": now})
    assert senders_last_seen(client, keys) == {"LAB|HOSP": now / 1000}
    client.close()
