"""hl7gw_sink_deliveries_total and hl7gw_sink_request_duration_seconds as a SinkWorker records them,
with a real database and Redis; the remote server's answers are injected with httpx.MockTransport."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime

import httpx
import redis
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine

from gateway.deliver.breaker import CircuitBreaker
from gateway.deliver.fanout import SinkMessage
from gateway.deliver.remote import RemoteSink
from gateway.deliver.sink_worker import SinkWorker
from gateway.deliver.store_sink import StoreSink
from gateway.envelope import Envelope
from gateway.journal.dead_letters import DeadLetterStore
from gateway.journal.deliveries import DeliveryStates
from gateway.journal.messages import MessageArchive
from gateway.keys import Keys
from gateway.sinkspec import SinkSpec
from gateway.store.ordering import Source
from gateway.store.resources import ResourceStore
from tests.support.fhir_bundles import patient, put, transaction

RAW = b"MSH|^~\\&|ADT|HOSP|GW|GW|20240501120000||ADT^A08^ADT_A01|C1|P|2.5.1\r"


def test_each_outcome_is_counted_once_and_a_held_back_message_not_at_all(
    engine: Engine, redis_url: str, redis_namespace: str
) -> None:
    name = f"m{uuid.uuid4().hex[:8]}"
    spec = SinkSpec(name, "http://fhir.test/fhir")
    answers: list[Callable[[httpx.Request], httpx.Response]] = []
    remote = RemoteSink(spec, transport=httpx.MockTransport(lambda request: answers.pop(0)(request)))
    client = redis.Redis.from_url(redis_url)
    store_sink = StoreSink(engine)
    worker = SinkWorker(
        remote,
        CircuitBreaker(client, Keys(redis_namespace), name, threshold=2, cooldown_s=30),
        DeliveryStates(engine),
        ResourceStore(engine),
        MessageArchive(engine),
        DeadLetterStore(engine).park,
        lambda message, delay: None,
        max_age_s=3600,
        max_backoff_s=60,
        rng=random.Random(5),
    )

    def stored(n: int, received_at: int | None = None) -> SinkMessage:
        envelope = Envelope(str(uuid.uuid4()), RAW, received_at or int(time.time() * 1000), "ADT|HOSP", f"C{n}")
        source = Source(envelope.id, "ADT|HOSP", f"C{n}", n, datetime(2024, 5, 1, 12, n))
        bundle = transaction(put(patient(f"p{n}", f"M{n}")))
        store_sink.deliver(bundle, source, envelope, "ADT^A08", (name,))
        return SinkMessage.of(spec, envelope, source, bundle)

    def count(outcome: str) -> float:
        return REGISTRY.get_sample_value("hl7gw_sink_deliveries_total", {"sink": name, "outcome": outcome}) or 0.0

    try:
        answers += [lambda r: httpx.Response(200, json={}), lambda r: httpx.Response(422, json={})]
        assert worker.handle(stored(1)) == "delivered"
        assert worker.handle(stored(2)) == "rejected"
        assert worker.handle(stored(3, received_at=int(time.time() * 1000) - 4000_000)) == "expired"
        answers += [lambda r: httpx.Response(503), lambda r: httpx.Response(503)]
        assert [worker.handle(stored(4)), worker.handle(stored(5))] == ["retry", "retry"]
        assert worker.handle(stored(6)) == "breaker-open"

        assert [count(o) for o in ("delivered", "refused", "expired", "retried")] == [1, 1, 1, 2]
        requests = REGISTRY.get_sample_value("hl7gw_sink_request_duration_seconds_count", {"sink": name})
        assert requests == 4  # the expired and the held-back message never reached the server
    finally:
        store_sink.close()
        remote.close()
        client.close()
