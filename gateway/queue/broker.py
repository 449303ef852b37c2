"""Dramatiq broker setup, and the maintenance that gives a dead worker's messages back quickly.

Dramatiq's Redis broker requeues a dead worker's unacknowledged messages only when a random
command happens to trigger maintenance, and only after a 60 s silence. A gateway wants both
bounded: every worker heartbeats on its own clock and sweeps for dead peers every few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.encoder import MessageData
from dramatiq.errors import BrokerConnectionError, ConnectionClosed, DecodeError

from gateway import fhirjson
from gateway.errors import describe, unavailable_dependency
from gateway.keys import QUEUE, Keys

log = logging.getLogger(__name__)

#: How long dramatiq would keep messages in its own dead-letter set; the gateway puts none there.
DRAMATIQ_DEAD_MESSAGE_TTL_MS = 7 * 86_400_000


def make_broker(
    redis_url: str,
    *,
    namespace: str = "hl7gw",
    heartbeat_timeout_ms: int = 15_000,
    middleware: list[dramatiq.Middleware] | None = None,
    consumer_prefix: str | None = None,
) -> GatewayBroker:
    """A Redis broker with only ``middleware``: failures are handled by gateway/services/failures.py,
    not by dramatiq's Retries (whose exhausted messages end in ``.XQ``), and there is no TimeLimit
    (it raises into a thread that may be waiting out an outage, or holding a database connection).
    With ``consumer_prefix`` its consumer identities are ``<prefix>-0``, ``<prefix>-1``, ... (see
    ``give_back``); without, random as dramatiq makes them."""
    client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=10)
    broker = GatewayBroker(
        client=client,
        namespace=namespace,
        middleware=list(middleware or []),
        heartbeat_timeout=heartbeat_timeout_ms,
        dead_message_ttl=DRAMATIQ_DEAD_MESSAGE_TTL_MS,
        # Maintenance runs on our schedule (QueueMaintenance), not by chance on every command.
        maintenance_chance=0,
    )
    if consumer_prefix is not None:
        broker.consumer_prefix = consumer_prefix
        broker.broker_id = broker.next_identity()
    broker.declare_queue(QUEUE)
    dramatiq.set_encoder(FhirJsonEncoder())
    return broker


class FhirJsonEncoder(dramatiq.Encoder):
    """Queue messages as JSON that keeps a decimal's digits (a sink message carries a Bundle whose
    ``0.90`` must reach the remote server as ``0.90``); orjson, so also faster than dramatiq's own."""

    def encode(self, data: MessageData) -> bytes:
        return fhirjson.dumps(data)

    def decode(self, data: bytes) -> MessageData:
        try:
            decoded: MessageData = fhirjson.loads(data)
        except ValueError as exc:  # not UTF-8 or not JSON; the message is not quoted (PHI)
            raise DecodeError("a queue message is not JSON", b"", exc) from None
        return decoded


class GatewayBroker(RedisBroker):
    """dramatiq's Redis broker, told when a consumer lost its connection (``identity_lost``)."""

    #: Set when a consumer met a connection error; QueueMaintenance then starts a new identity.
    identity_lost = False
    #: Where this process's consumer identities start (``hl7gw run`` gives each worker its own).
    consumer_prefix: str | None = None
    _identities = 0

    def next_identity(self) -> str:
        """A consumer identity never used before: ``<prefix>-<n>``, or a random one without a prefix."""
        if self.consumer_prefix is None:
            return str(uuid.uuid4())
        identity = f"{self.consumer_prefix}-{self._identities}"
        self._identities += 1
        return identity

    @property
    def consumer_class(self) -> type:
        return _WatchedConsumer


class _WatchedConsumer(_RedisConsumer):
    """dramatiq's Redis consumer, with every Redis failure treated as a lost connection.

    dramatiq turns only ``redis.ConnectionError`` into ConnectionClosed; a Redis that hangs raises
    ``redis.TimeoutError`` instead, which it takes for a bug: its consumer thread logs a traceback
    every second, and a failure while closing ends that thread for good; an acknowledgement that
    times out is given up on. As ConnectionClosed, each is retried until Redis answers. And since
    the consumer drops what it held locally on a lost connection, the broker is told
    (``identity_lost``), so that the worker goes on as a new consumer."""

    def __next__(self):  # type: ignore[no-untyped-def]
        with self._lost_connection():
            return super().__next__()

    def ack(self, message):  # type: ignore[no-untyped-def]
        with self._lost_connection():
            return super().ack(message)

    def nack(self, message):  # type: ignore[no-untyped-def]
        with self._lost_connection():
            return super().nack(message)

    def requeue(self, messages):  # type: ignore[no-untyped-def]
        with self._lost_connection():
            return super().requeue(messages)

    @contextlib.contextmanager
    def _lost_connection(self) -> Iterator[None]:
        try:
            yield
        except BrokerConnectionError:
            self.broker.identity_lost = True
            raise
        except redis.RedisError as exc:
            if unavailable_dependency(exc) != "redis":
                raise
            self.broker.identity_lost = True
            raise ConnectionClosed(exc) from None


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


def give_back(broker: RedisBroker, consumer_prefix: str, queues: Iterable[str]) -> int:
    """Put back on their queues now what the consumers ``<consumer_prefix>-<n>`` held in ``queues``
    (and their delay queues): those of a worker process known to be dead, reaped by ``hl7gw run``.
    Only for a process that is gone: nothing else may hold those identities. Each one's heartbeat is
    set to 0, so that the queue's own maintenance (dispatch.lua, as ``requeue_orphans`` runs it)
    takes it for dead at once instead of after the heartbeat timeout, and that maintenance then
    runs on every queue it held messages of. Returns how many messages were given back."""
    keys = Keys(broker.namespace)
    client, heartbeats = broker.client, keys.heartbeats()
    identities = [_text(member) for member, _ in client.zscan_iter(heartbeats, match=f"{consumer_prefix}-*")]
    names = [name for queue in queues for name in (queue, f"{queue}.DQ")]
    held: dict[str, int] = {}
    for identity in identities:
        client.zadd(heartbeats, {identity: 0}, xx=True)
        for name in names:
            count = int(client.scard(f"{keys.acks_prefix()}{identity}.{name}"))
            if count:
                held[name] = held.get(name, 0) + count
    for name in held:
        _maintain(broker, name)
    client.zrem(heartbeats, broker.broker_id)  # the maintenance's own heartbeat: no consumer's
    return sum(held.values())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisHealth(Protocol):
    """Told of Redis failures, and says whether Redis is taken to be up (gateway/services/outages.py Gate)."""

    @property
    def is_open(self) -> bool: ...

    def report(self, exc: BaseException) -> bool: ...


class QueueMaintenance(threading.Thread):
    """Every ``interval`` seconds: heartbeat for this process's broker, give dead peers' messages
    back, and move parked dead letters to the database (``move_parked``). A Redis failure here is
    reported to ``redis_gate``, which logs the outage once and probes until Redis answers.
    ``record`` (a worker's: its mappings compiled) is written next to the heartbeat and expires
    with it, so that readiness probes tell workers from other processes that queue messages."""

    def __init__(
        self,
        broker: RedisBroker,
        interval: float = 2.0,
        *,
        redis_gate: RedisHealth | None = None,
        move_parked: Callable[[], object] | None = None,
        record: bytes | None = None,
    ):
        super().__init__(name="hl7gw-queue-maintenance", daemon=True)
        self.broker = broker
        self.interval = interval
        self.redis_gate = redis_gate
        self.move_parked = move_parked
        self.record = record
        self._stop_event = threading.Event()

    def run(self) -> None:
        keys = Keys(self.broker.namespace)
        heartbeats = keys.heartbeats()
        while not self._stop_event.is_set():
            if self.redis_gate is None or self.redis_gate.is_open:
                try:
                    self.broker.client.zadd(heartbeats, {self.broker.broker_id: int(time.time() * 1000)})
                    if self.record is not None:
                        worker = keys.worker_record(self.broker.broker_id)
                        self.broker.client.set(worker, self.record, px=self.broker.heartbeat_timeout)
                    # Every queue: the pipeline's and each remote sink's (their delay queues too).
                    for queue in sorted(q for q in self.broker.get_declared_queues() if not q.endswith(".DQ")):
                        requeue_orphans(self.broker, queue)
                except redis.RedisError as exc:
                    if self.redis_gate is None:
                        log.warning("queue maintenance failed, will retry: %s", exc)
                    else:
                        self.redis_gate.report(exc)
                else:
                    if getattr(self.broker, "identity_lost", False):
                        self.broker.identity_lost = False  # type: ignore[attr-defined]
                        new_consumer_identity(self.broker)
                    self._move_parked()
            self._stop_event.wait(self.interval)

    def _move_parked(self) -> None:
        if self.move_parked is None:
            return
        try:
            self.move_parked()
        except Exception as exc:  # noqa: BLE001 - tried again next round
            log.debug("parked dead letters not moved yet: %s", describe(exc))

    def stop(self) -> None:
        self._stop_event.set()


def new_consumer_identity(broker: RedisBroker) -> None:
    """After Redis was unreachable, go on as a new consumer. What the old identity held may be
    lost to this process (dramatiq drops its local delay queue on a connection error; a fetch
    whose reply never came still moved messages into its in-flight set), so it is left to die: its
    heartbeat stops, and after the heartbeat timeout every in-flight message of it goes back on
    its queue. Messages this process still holds are processed, and some again later: the
    pipeline and the sinks are idempotent, so that costs time, not correctness."""
    fresh = broker.next_identity() if isinstance(broker, GatewayBroker) else str(uuid.uuid4())
    old, broker.broker_id = broker.broker_id, fresh
    log.warning("reconnected to Redis as consumer %s; messages held as %s will be given back", broker.broker_id, old)
