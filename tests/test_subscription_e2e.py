"""The issue's test: with ``hl7gw run``, a Subscription on ``Observation?code=...`` delivers to an
HTTP receiver that is stopped for a while and started again: every notification arrives, event
numbers have no gaps, nothing is dead-lettered (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.db.engine import make_engine
from gateway.journal.dead_letters import DeadLetterStore
from gateway.mllp.client import send_messages
from tests.support.gateway_process import GatewayProcess
from tests.support.queue import wait_until
from tests.support.subscriptions import Receiver, oru, subscription

GLUCOSE = "2345-7"


@pytest.fixture
def gateway(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[GatewayProcess]:
    external = os.environ.get("HL7GW_REDIS_URL")
    namespace = f"hl7gw-subs-{uuid.uuid4().hex[:8]}" if external else None
    process = GatewayProcess(tmp_path / "data", redis_url=external, namespace=namespace)
    process.env.update(
        HL7GW_DATABASE_URL=database_url,
        HL7GW_WORKER_PROCESSES="2",  # two workers: one holds the dispatcher's lease
        HL7GW_SINK_MAX_BACKOFF_S="2",
        HL7GW_SINK_BREAKER_COOLDOWN_S="0.5",
        HL7GW_SUBSCRIPTION_BATCH_MAX="5",
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def send(gateway: GatewayProcess, messages: list[bytes]) -> None:
    exchanges = asyncio.run(send_messages(messages, "127.0.0.1", gateway.mllp_port))
    assert all(exchange.ok for exchange in exchanges), [e.problem for e in exchanges if not e.ok]


def test_a_receiver_that_goes_away_gets_every_notification_without_gaps(
    gateway: GatewayProcess, database_url: str
) -> None:
    receiver = Receiver().start()
    try:
        with gateway.client() as client:
            created = client.post(
                "/fhir/Subscription", json=subscription(receiver.url, f"Observation?code=http://loinc.org|{GLUCOSE}")
            )
            assert created.status_code == 201, created.text
            path = f"/fhir/Subscription/{created.json()['id']}"
        gateway.wait_for(path, lambda s: s["status"] == "active", timeout=30)

        # 20 matching messages and 10 that do not match, while the receiver is up ...
        send(gateway, [oru(n) for n in range(20)] + [oru(n, code="8867-4") for n in range(100, 110)])
        wait_until(lambda: len(receiver.event_numbers()) >= 10, timeout=60, what="the first notifications")
        # ... then it goes away; 20 more arrive meanwhile, and the subscription says error
        receiver.stop()
        send(gateway, [oru(n) for n in range(20, 40)])
        gateway.wait_for(path, lambda s: s["status"] == "error", timeout=60)
        receiver.start()

        wait_until(lambda: len(receiver.event_numbers()) >= 40, timeout=90, what="every notification")
        numbers = receiver.event_numbers()
        assert numbers == list(range(1, 41))  # in order, no gap, none twice
        gateway.wait_for(path, lambda s: s["status"] == "active", timeout=30)

        # each notification names an Observation of the code, and every one of them is named
        stored = gateway.wait_for(
            f"/fhir/Observation?code={GLUCOSE}&_count=100", lambda b: b.get("total") == 40, timeout=30
        )
        stored_ids = {entry["resource"]["id"] for entry in stored["entry"]}
        sent_ids = {entry["resource"]["id"] for note in receiver.received for entry in note.bundle["entry"][1:]}
        assert sent_ids == stored_ids
        assert all(
            entry["resource"]["code"]["coding"][0]["code"] == GLUCOSE
            for note in receiver.received
            for entry in note.bundle["entry"][1:]
        )
    finally:
        receiver.stop()
    engine = make_engine(database_url)
    try:
        assert DeadLetterStore(engine).list() == []
    finally:
        engine.dispose()
