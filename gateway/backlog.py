"""What waits in Redis, read cheaply: per queue how many messages wait, are in flight or delayed and
how old the oldest is; how many workers heartbeat; when each sender last sent. For /metrics,
readiness and ``hl7gw status``; it reads dramatiq's own key layout (gateway/keys.py), never scans.

A queue's messages are the ids in its list (waiting, oldest first) plus those fetched by a worker
and not yet acknowledged (in the worker's ``__acks__`` set: prefetched or being processed); the
``.msgs`` hash holds every one of them. Retries wait in the ``.DQ`` queue until their time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from gateway.keys import IMPORT_QUEUE, QUEUE, REPLAY_QUEUE, Keys

_TIMESTAMP = re.compile(rb'"message_timestamp":(\d+)')


@dataclass(frozen=True, slots=True)
class QueueBacklog:
    queue: str
    #: Waiting to be fetched, plus fetched but not acknowledged.
    depth: int
    in_flight: int
    #: Retries waiting for their time (the delay queue).
    delayed: int
    #: Seconds since the oldest waiting or in-flight message was queued; 0 when there is none.
    oldest_age_s: float


def pipeline_queues(sink_queues: Iterable[str] = ()) -> list[str]:
    """The queues of this gateway: live messages, operator jobs, imported files, then one per remote sink."""
    return [QUEUE, REPLAY_QUEUE, IMPORT_QUEUE, *sink_queues]


def live_workers(client: redis.Redis, keys: Keys, heartbeat_timeout_ms: int, now_ms: int | None = None) -> list[str]:
    """Worker ids with a heartbeat within ``heartbeat_timeout_ms``."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    ids = client.zrangebyscore(keys.heartbeats(), now_ms - heartbeat_timeout_ms, "+inf")
    return [item.decode() if isinstance(item, bytes) else str(item) for item in ids]


def read_backlog(
    client: redis.Redis, keys: Keys, queues: Iterable[str], workers: Iterable[str], now_ms: int | None = None
) -> list[QueueBacklog]:
    """One ``QueueBacklog`` per queue, in a few round trips whatever the backlog's size."""
    queues, workers = list(queues), list(workers)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.hlen(keys.queue_messages(queue))
        pipe.llen(keys.queue(queue))
        pipe.lindex(keys.queue(queue), 0)
        pipe.hlen(keys.queue_messages(f"{queue}.DQ"))
        for worker in workers:
            pipe.smembers(f"{keys.acks_prefix()}{worker}.{queue}")
    replies = iter(pipe.execute())
    counted: list[tuple[str, int, int, int, list[bytes]]] = []
    for queue in queues:
        stored, waiting, head, delayed = next(replies), next(replies), next(replies), next(replies)
        fetched: list[bytes] = [member for _ in workers for member in next(replies)]
        candidates = ([head] if head is not None else []) + fetched
        counted.append((queue, int(stored), int(waiting), int(delayed), candidates))
    pipe = client.pipeline(transaction=False)
    for queue, *_, candidates in counted:
        if candidates:
            pipe.hmget(keys.queue_messages(queue), candidates)
    bodies = iter(pipe.execute())
    result = []
    for queue, stored, waiting, delayed, candidates in counted:
        found = next(bodies) if candidates else []
        stamps = [int(m.group(1)) for body in found if body and (m := _TIMESTAMP.search(body))]
        oldest = max(0.0, (now_ms - min(stamps)) / 1000) if stamps else 0.0
        result.append(QueueBacklog(queue, max(stored, waiting), max(0, stored - waiting), delayed, oldest))
    return result


def senders_last_seen(client: redis.Redis, keys: Keys) -> dict[str, float]:
    """Sender ("MSH-3|MSH-4") -> unix time of the last message accepted from it (kept by the intake)."""
    found = client.hgetall(keys.sender_last_seen())
    return {
        (name.decode() if isinstance(name, bytes) else str(name)): int(value) / 1000 for name, value in found.items()
    }
