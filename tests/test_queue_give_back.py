"""gateway/queue/broker.py ``give_back``: what a dead worker's consumer identities held goes back on
its queues at once, through dramatiq's own maintenance; nothing a live consumer holds moves.
On a real Redis (tests/conftest.py ``redis_url``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from sqlalchemy import create_engine

from gateway.keys import IMPORT_QUEUE, QUEUE, REPLAY_QUEUE, Keys
from gateway.queue.broker import GatewayBroker, give_back, make_broker, new_consumer_identity
from gateway.services.supervisor import worker_queues
from gateway.services.worker import build_broker
from tests.support.queue import worker_settings


@pytest.fixture
def brokers(redis_url: str, redis_namespace: str) -> Iterator[dict[str, GatewayBroker]]:
    made = {
        "dead": make_broker(redis_url, namespace=redis_namespace, consumer_prefix="worker-0-dead"),
        # Starts like the dead one's prefix: only "<prefix>-<n>" identities may match.
        "alive": make_broker(redis_url, namespace=redis_namespace, consumer_prefix="worker-0-deadbeef"),
        "supervisor": make_broker(redis_url, namespace=redis_namespace),
    }
    for broker in made.values():
        broker.declare_queue(IMPORT_QUEUE)
    yield made
    for broker in made.values():
        broker.close()


def enqueue(broker: GatewayBroker, queue: str, count: int, delay: int | None = None) -> None:
    for n in range(count):
        broker.enqueue(
            dramatiq.Message(queue_name=queue, actor_name="noop", args=(n,), kwargs={}, options={}), delay=delay
        )


def test_identities_are_prefix_and_counter(brokers: dict[str, GatewayBroker]) -> None:
    dead = brokers["dead"]
    assert dead.broker_id == "worker-0-dead-0"
    new_consumer_identity(dead)
    assert dead.broker_id == "worker-0-dead-1"
    assert "-" in brokers["supervisor"].broker_id and not brokers["supervisor"].broker_id.startswith("worker")


def test_a_dead_consumers_messages_go_back_and_a_live_ones_stay(
    brokers: dict[str, GatewayBroker], redis_url: str, redis_namespace: str
) -> None:
    dead, alive, supervisor = brokers["dead"], brokers["alive"], brokers["supervisor"]
    keys, client = Keys(redis_namespace), redis.Redis.from_url(redis_url)
    enqueue(supervisor, QUEUE, 6)
    enqueue(supervisor, IMPORT_QUEUE, 2)
    enqueue(supervisor, QUEUE, 1, delay=60_000)  # waits in QUEUE.DQ
    assert len(dead.do_fetch(QUEUE, 2)) == 2
    assert len(alive.do_fetch(QUEUE, 2)) == 2
    new_consumer_identity(dead)  # a reconnect: its first identity still holds its two
    assert len(dead.do_fetch(QUEUE, 1)) == 1
    assert len(dead.do_fetch(IMPORT_QUEUE, 2)) == 2
    assert len(dead.do_fetch(f"{QUEUE}.DQ", 1)) == 1
    alive_acks = f"{keys.acks_prefix()}{alive.broker_id}.{QUEUE}"
    held_by_alive = client.smembers(alive_acks)
    try:
        assert client.llen(keys.queue(QUEUE)) == 1

        assert give_back(supervisor, "worker-0-dead", [QUEUE, IMPORT_QUEUE]) == 6

        assert client.llen(keys.queue(QUEUE)) == 4  # 1 waiting + 2 + 1 given back
        assert client.llen(keys.queue(IMPORT_QUEUE)) == 2
        assert client.llen(keys.queue(f"{QUEUE}.DQ")) == 1
        assert client.smembers(alive_acks) == held_by_alive  # a live consumer's stay where they are
        assert list(client.scan_iter(match=f"{keys.acks_prefix()}worker-0-dead-*")) == []
        heartbeats = {member.decode() for member in client.zrange(keys.heartbeats(), 0, -1)}
        assert alive.broker_id in heartbeats and supervisor.broker_id not in heartbeats
        assert not {"worker-0-dead-0", "worker-0-dead-1"} & heartbeats
        assert give_back(supervisor, "worker-0-dead", [QUEUE, IMPORT_QUEUE]) == 0  # nothing twice
        assert client.llen(keys.queue(QUEUE)) == 4
    finally:
        client.close()


def test_the_supervisor_knows_the_queues_of_a_worker(tmp_path: Path, redis_url: str, redis_namespace: str) -> None:
    settings = worker_settings(
        tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}", redis_namespace, fhir_sinks="lab=http://127.0.0.1:9"
    )
    engine = create_engine(settings.storage.database_url)
    broker, outages, letters = build_broker(settings, redis_url, None, engine)  # type: ignore[arg-type]
    try:
        declared = {queue for queue in broker.get_declared_queues() if not queue.endswith(".DQ")}
        assert declared == set(worker_queues(settings))
        assert {QUEUE, REPLAY_QUEUE, IMPORT_QUEUE} < declared
    finally:
        outages.stop()
        letters.client.close()
        broker.close()
        engine.dispose()
