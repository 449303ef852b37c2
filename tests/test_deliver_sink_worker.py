"""SinkWorker: one queued message for one remote sink, with a real database and Redis; the remote
server's faults are injected with httpx.MockTransport."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
import redis
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
from tests.support.fhir_bundles import observation, patient, put, transaction

RAW = b"MSH|^~\\&|ADT|HOSP|GW|GW|20240501120000||ADT^A08^ADT_A01|C1|P|2.5.1\r"
OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": "no"}]}


class Harness:
    """A SinkWorker for sink "hapi" whose server answers with ``reply``; reschedules are recorded."""

    def __init__(self, engine: Engine, client: redis.Redis, namespace: str, max_age_s: float = 3600):
        self.engine = engine
        self.requests: list[httpx.Request] = []
        self.reply: Callable[[httpx.Request], httpx.Response] = lambda r: httpx.Response(200, json={})
        self.rescheduled: list[tuple[SinkMessage, int]] = []
        self.store_sink = StoreSink(engine)
        spec = SinkSpec("hapi", "http://fhir.test/fhir")
        remote = RemoteSink(spec, transport=httpx.MockTransport(self._serve))
        self.breaker = CircuitBreaker(client, Keys(namespace), "hapi", threshold=2, cooldown_s=30)
        self.worker = SinkWorker(
            remote,
            self.breaker,
            DeliveryStates(engine),
            ResourceStore(engine),
            MessageArchive(engine),
            DeadLetterStore(engine).park,
            lambda message, delay: self.rescheduled.append((message, delay)),
            max_age_s=max_age_s,
            max_backoff_s=60,
            rng=random.Random(5),
        )

    def _serve(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.reply(request)

    def stored(self, bundle: dict[str, Any], minute: int = 10, received_at: int | None = None) -> SinkMessage:
        """Deliver ``bundle`` to the built-in store as a received message with a pending row for hapi."""
        envelope = Envelope(str(uuid.uuid4()), RAW, received_at or int(time.time() * 1000), "ADT|HOSP", "C1", seq=1)
        source = Source(envelope.id, "ADT|HOSP", "C1", 1, datetime(2024, 5, 1, 12, minute))
        self.store_sink.deliver(bundle, source, envelope, "ADT^A08", ("hapi",))
        return SinkMessage.of(SinkSpec("hapi", "http://fhir.test/fhir"), envelope, source, bundle)

    def state(self, message: SinkMessage) -> Any:
        return DeliveryStates(self.engine).get(message.message_id, "hapi")


@pytest.fixture
def harness(engine: Engine, redis_url: str, redis_namespace: str) -> Iterator[Harness]:
    client = redis.Redis.from_url(redis_url)
    made = Harness(engine, client, redis_namespace)
    yield made
    made.store_sink.close()
    client.close()


BUNDLE = transaction(put(patient("p1", "M1")), put(observation("o1", "p1")))


def test_a_delivered_message_is_marked_and_not_sent_again(harness: Harness) -> None:
    message = harness.stored(BUNDLE)

    assert harness.worker.handle(message) == "delivered"
    assert harness.worker.handle(message) == "duplicate"  # at-least-once queue, once in effect

    assert len(harness.requests) == 1 and orjson.loads(harness.requests[0].content) == BUNDLE
    state = harness.state(message)
    assert (state.status, state.attempts, state.last_error) == ("delivered", 1, "")


def test_429_waits_at_least_retry_after_then_delivers(harness: Harness) -> None:
    message = harness.stored(BUNDLE)
    harness.reply = lambda r: httpx.Response(429, headers={"Retry-After": "42"}, json=OUTCOME)

    assert harness.worker.handle(message) == "retry"

    ((again, delay),) = harness.rescheduled
    assert delay >= 42_000 and again.attempts == 1
    state = harness.state(message)
    assert (state.status, state.attempts) == ("pending", 1) and "HTTP 429" in state.last_error
    harness.reply = lambda r: httpx.Response(200, json={})
    assert harness.worker.handle(again) == "delivered"


def test_backoff_grows_exponentially_with_jitter(harness: Harness) -> None:
    message = harness.stored(BUNDLE)
    harness.reply = lambda r: httpx.Response(503)
    harness.breaker.threshold = 100  # keep the breaker out of this

    current = message
    for _ in range(8):
        assert harness.worker.handle(current) == "retry"
        current = harness.rescheduled[-1][0]
    delays = [delay for _, delay in harness.rescheduled]
    assert all(50 <= d <= min(60_000, 1_000 * 2**n) for n, d in enumerate(delays))
    assert max(delays[5:]) > 2_000 and len(set(delays)) == len(delays)  # grows, and no two alike


def test_a_4xx_becomes_a_dead_letter_with_the_operation_outcome(harness: Harness, engine: Engine) -> None:
    message = harness.stored(BUNDLE)
    harness.reply = lambda r: httpx.Response(422, json=OUTCOME)

    assert harness.worker.handle(message) == "rejected"

    (letter,) = DeadLetterStore(engine).list()
    assert letter.stage == "deliver:hapi" and letter.envelope_id == message.message_id
    assert '"diagnostics":"no"' in letter.reason and "HTTP 422" in letter.reason
    assert letter.raw == RAW and letter.error_type == "RemoteRejected" and letter.attempts == 1
    assert harness.state(message).status == "dead"
    assert not harness.rescheduled
    assert harness.worker.handle(message) == "duplicate"


def test_too_old_becomes_a_dead_letter_with_the_last_error(harness: Harness, engine: Engine) -> None:
    harness.worker.max_age_ms = 60_000
    message = harness.stored(BUNDLE)
    harness.reply = lambda r: httpx.Response(503, text="maintenance")
    harness.worker.handle(message)
    ((again, delay),) = harness.rescheduled
    assert delay <= 60_010  # never sleeps past the deadline

    expired = SinkMessage.from_json({**again.to_json(), "received_at": again.received_at - 61_000})
    assert harness.worker.handle(expired) == "expired"

    (letter,) = DeadLetterStore(engine).list()
    assert letter.stage == "deliver:hapi" and "within 60 s" in letter.reason and "maintenance" in letter.reason
    assert letter.attempts == 1 and harness.state(message).status == "dead"
    assert len(harness.requests) == 1


def test_an_open_breaker_holds_messages_without_calling_the_server(harness: Harness) -> None:
    harness.reply = lambda r: httpx.Response(503)
    first, second, third = (harness.stored(transaction(put(patient(f"p{i}", f"M{i}")))) for i in range(3))
    assert [harness.worker.handle(first), harness.worker.handle(second)] == ["retry", "retry"]

    assert harness.worker.handle(third) == "breaker-open"

    assert len(harness.requests) == 2
    assert harness.rescheduled[-1][1] >= 29_000  # waits for the cooldown
    assert harness.state(third).attempts == 0


def test_entries_the_store_holds_from_newer_messages_are_not_sent(harness: Harness) -> None:
    older = harness.stored(transaction(put(patient("p1", "M1", family="Old")), put(observation("o1", "p1"))), 10)
    harness.stored(transaction(put(patient("p1", "M1", family="New"))), 20)

    assert harness.worker.handle(older) == "delivered"

    sent = orjson.loads(harness.requests[0].content)
    assert [e["request"]["url"] for e in sent["entry"]] == ["Observation/o1"]


def test_a_message_entirely_superseded_sends_nothing(harness: Harness) -> None:
    older = harness.stored(transaction(put(patient("p1", "M1", family="Old"))), 10)
    harness.stored(transaction(put(patient("p1", "M1", family="New"))), 20)

    assert harness.worker.handle(older) == "superseded"

    assert harness.requests == [] and harness.state(older).status == "delivered"


def test_a_queue_failure_after_the_store_commit_is_retried_not_parked(harness: Harness) -> None:
    from gateway.deliver.fanout import SinkFanout
    from gateway.errors import is_retryable
    from gateway.queue.broker import make_broker
    from gateway.services.embedded_redis import free_port

    broker = make_broker(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    message = harness.stored(BUNDLE)
    envelope = Envelope(message.message_id, RAW, message.received_at, "ADT|HOSP", "C1")
    try:
        with pytest.raises(Exception) as caught:
            SinkFanout(broker, (SinkSpec("hapi", "http://fhir.test/fhir"),)).enqueue(envelope, message.source, BUNDLE)
    finally:
        broker.close()
    assert is_retryable(caught.value) and "could not queue" in str(caught.value)
