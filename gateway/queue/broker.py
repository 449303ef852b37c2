"""Dramatiq broker setup, and the maintenance that gives a dead worker's messages back quickly.

Dramatiq's Redis broker requeues a dead worker's unacknowledged messages only when a random
command happens to trigger maintenance, and only after a 60 s silence. A gateway wants both
bounded: every worker heartbeats on its own clock and sweeps for dead peers every few seconds.
"""

from __future__ import annotations

import logging
import threading
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, ShutdownNotifications, TimeLimit

from gateway.queue.keys import QUEUE, Keys

log = logging.getLogger(__name__)

#: Dramatiq keeps its own dead-letter copies for this long; ours live in the database.
DRAMATIQ_DEAD_MESSAGE_TTL_MS = 7 * 86_400_000


def make_broker(
    redis_url: str,
    *,
    namespace: str = "hl7gw",
    heartbeat_timeout_ms: int = 15_000,
    max_retries: int = 5,
    extra_middleware: list[dramatiq.Middleware] | None = None,
) -> RedisBroker:
    client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=10)
    # Dramatiq runs after_* hooks in reverse list order: middleware listed before Retries sees
    # a message after Retries has decided whether it failed for good.
    middleware: list[dramatiq.Middleware] = [
        *(extra_middleware or []),
        AgeLimit(),
        TimeLimit(time_limit=300_000),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=max_retries, min_backoff=500, max_backoff=60_000),
    ]
    broker = RedisBroker(
        client=client,
        namespace=namespace,
        middleware=middleware,
        heartbeat_timeout=heartbeat_timeout_ms,
        dead_message_ttl=DRAMATIQ_DEAD_MESSAGE_TTL_MS,
        # Maintenance runs on our schedule (QueueMaintenance), not by chance on every command.
        maintenance_chance=0,
    )
    broker.declare_queue(QUEUE)
    return broker


def _maintain(broker: RedisBroker, queue: str) -> None:
    """One dispatch.lua call with maintenance on: requeue dead workers' messages, expire old XQ."""
    dispatch = broker.scripts["dispatch"]
    dispatch(
        keys=[broker.namespace],
        args=[
            "qsize",
            int(time.time() * 1000),
            queue,
            broker.broker_id,
            broker.heartbeat_timeout,
            broker.dead_message_ttl,
            1,
            broker._max_unpack_size(),
        ],
    )


def requeue_orphans(broker: RedisBroker, queue: str = QUEUE) -> None:
    """Run maintenance for the queue and its delay queue now."""
    for name in (queue, f"{queue}.DQ"):
        _maintain(broker, name)


def forget_all_workers(redis_url: str, namespace: str) -> int:
    """Put every in-flight message of every worker back on its queue.

    Only safe when no worker can be running: the embedded Redis right after it was started by us.
    Returns how many messages were given back.
    """
    keys = Keys(namespace)
    client = redis.Redis.from_url(redis_url)
    moved = 0
    try:
        prefix = keys.acks_prefix()
        for ack_key in client.scan_iter(match=f"{prefix}*"):
            name = ack_key.decode()
            queue = name[len(prefix) :].split(".", 1)[1] if "." in name[len(prefix) :] else QUEUE
            ids = client.smembers(ack_key)
            msgs_key = f"{namespace}:{queue}.msgs"
            for message_id in ids:
                if client.hexists(msgs_key, message_id):
                    client.rpush(f"{namespace}:{queue}", message_id)
                    moved += 1
            client.delete(ack_key)
        client.delete(keys.heartbeats())
    finally:
        client.close()
    if moved:
        log.warning("requeued %d message(s) left in flight by a previous run", moved)
    return moved


class QueueMaintenance(threading.Thread):
    """Heartbeat for this process's broker and sweep dead peers, every ``interval`` seconds."""

    def __init__(self, broker: RedisBroker, interval: float = 2.0):
        super().__init__(name="hl7gw-queue-maintenance", daemon=True)
        self.broker = broker
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        heartbeats = Keys(self.broker.namespace).heartbeats()
        while not self._stop_event.is_set():
            try:
                self.broker.client.zadd(heartbeats, {self.broker.broker_id: int(time.time() * 1000)})
                # Every queue: the pipeline's and each remote sink's (their delay queues too).
                for queue in sorted(q for q in self.broker.get_declared_queues() if not q.endswith(".DQ")):
                    requeue_orphans(self.broker, queue)
            except redis.RedisError as exc:
                log.warning("queue maintenance failed, will retry: %s", exc)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
