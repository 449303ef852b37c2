"""Sending a subscription's notifications to a real HTTP endpoint: the Backport IG's shape, order,
retries with backoff, the circuit breaker and the error status, refusals as dead letters."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters
from sqlalchemy.engine import Engine

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.deliver.breaker import CircuitBreaker
from gateway.deliver.rest_hook import RestHook
from gateway.deliver.subscription_delivery import DeliveryPolicy, SubscriptionDelivery
from gateway.deliver.subscription_dispatch import Dispatcher
from gateway.journal.dead_letters import DeadLetterStore
from gateway.keys import Keys
from gateway.services.replay import Replayer, ReplayRefused
from gateway.store.feed import read_changes
from gateway.store.resources import ResourceStore
from gateway.store.subscription_outbox import DispatchLease, Outbox
from gateway.store.subscriptions import SubscriptionStore
from tests.support.asgi_client import AsgiClient
from tests.support.fhir_bundles import delete, observation, put, transaction
from tests.support.subscriptions import Receiver, subscription

BASE = "https://gateway.example/fhir"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver().start()
    yield made
    made.stop()


def make_delivery(
    engine: Engine, redis_url: str, namespace: str, subscription_id: str, batch_max: int = 50, threshold: int = 3
) -> SubscriptionDelivery:
    subscriptions = SubscriptionStore(engine)
    stored = subscriptions.get(subscription_id)
    assert stored is not None
    client = redis.Redis.from_url(redis_url)
    breaker = CircuitBreaker(
        client,
        Keys(namespace),
        f"subscription:{subscription_id}",
        threshold=threshold,
        cooldown_s=0.1,
        max_cooldown_s=0.2,
    )
    return SubscriptionDelivery(
        stored,
        RestHook(stored.spec(), timeout_s=2),
        breaker,
        Outbox(engine),
        subscriptions,
        DeadLetterStore(engine),
        DeliveryPolicy(BASE, batch_max, max_backoff_s=0.2),
        rng=random.Random(7),
    )


def run_until(delivery: SubscriptionDelivery, done: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError("delivery did not reach the expected state")
        wait = delivery.step()
        if wait > 0:
            time.sleep(min(wait, 0.05))


def dispatch(engine: Engine, *bundles: dict[str, Any]) -> None:
    """Activate the subscriptions, write ``bundles`` into the store, and dispatch the changes."""
    lease = DispatchLease(engine, "test")
    assert lease.hold()
    dispatcher = Dispatcher(engine, lease, read_changes)
    dispatcher.activate()
    store = ResourceStore(engine)
    for bundle in bundles:
        store.apply_bundle(bundle)
    while dispatcher.run_once():
        pass


def glucose(resource_id: str, **fields: Any) -> dict[str, Any]:
    return transaction(put(observation(resource_id, "p1", code="2345-7", **fields)))


def test_a_full_resource_notification_follows_the_backport_ig(
    engine: Engine, redis_url: str, redis_namespace: str, receiver: Receiver
) -> None:
    SubscriptionStore(engine).put(subscription(receiver.url, headers=["X-Api-Key: k1"]), "glucose")
    dispatch(engine, glucose("o1"), glucose("o1", status="amended"), transaction(delete("Observation", "o1")))
    delivery = make_delivery(engine, redis_url, redis_namespace, "glucose")
    run_until(delivery, lambda: receiver.event_numbers() == [1, 2, 3])

    (note,) = receiver.received  # the three events in one notification: they were queued together
    assert note.headers["X-Api-Key"] == "k1"
    assert note.headers["Content-Type"] == "application/fhir+json"
    Bundle.model_validate(note.bundle)
    assert note.bundle["type"] == "history"
    status = note.status
    Parameters.model_validate(status)
    assert status["meta"]["profile"] == [
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
    ]
    values = {p["name"]: p for p in status["parameter"] if p["name"] != "notification-event"}
    assert values["subscription"]["valueReference"]["reference"] == f"{BASE}/Subscription/glucose"
    assert values["status"]["valueCode"] == "active"
    assert values["type"]["valueCode"] == "event-notification"
    assert values["events-since-subscription-start"]["valueString"] == "3"
    assert note.focus == [f"{BASE}/Observation/o1/_history/{v}" for v in (1, 2, 3)]
    entries = note.bundle["entry"][1:]
    assert [e["request"] for e in entries] == [
        {"method": "PUT", "url": "Observation/o1"},
        {"method": "PUT", "url": "Observation/o1"},
        {"method": "DELETE", "url": "Observation/o1"},
    ]
    assert [e.get("resource", {}).get("status") for e in entries] == ["final", "amended", None]
    assert entries[1]["resource"]["meta"]["versionId"] == "2"
    assert [e.event_number for e in Outbox(engine).events("glucose") if e.status == "sent"] == [1, 2, 3]


def test_an_id_only_notification_names_the_version(
    engine: Engine, redis_url: str, redis_namespace: str, receiver: Receiver
) -> None:
    SubscriptionStore(engine).put(subscription(receiver.url, payload=None), "ids")
    dispatch(engine, glucose("o1"))
    delivery = make_delivery(engine, redis_url, redis_namespace, "ids")
    run_until(delivery, lambda: receiver.event_numbers() == [1])

    (note,) = receiver.received
    assert len(note.bundle["entry"]) == 1
    assert note.focus == [f"{BASE}/Observation/o1/_history/1"]


def test_a_refused_notification_is_a_dead_letter_and_the_rest_go_on(
    engine: Engine, redis_url: str, redis_namespace: str, receiver: Receiver, tmp_path: Path
) -> None:
    def refuse_o2(bundle: dict[str, Any]) -> int:
        ids = [e["resource"]["id"] for e in bundle["entry"][1:] if "resource" in e]
        return 422 if "o2" in ids else 200

    receiver.respond = refuse_o2
    SubscriptionStore(engine).put(subscription(receiver.url), "glucose")
    dispatch(engine, glucose("o1"), glucose("o2"), glucose("o3"))
    delivery = make_delivery(engine, redis_url, redis_namespace, "glucose")
    run_until(delivery, lambda: Outbox(engine).pending("glucose") == 0)

    # the batch of three was refused, then sent one by one: o2 alone was refused
    assert receiver.event_numbers() == [1, 3]
    assert [(e.event_number, e.status) for e in Outbox(engine).events("glucose")] == [
        (1, "sent"),
        (2, "dead"),
        (3, "sent"),
    ]
    (letter,) = DeadLetterStore(engine).list()
    assert letter.stage == "subscription:glucose"
    assert letter.sender == "Subscription/glucose" and letter.control_id == "2"
    assert "HTTP 422" in letter.reason
    assert b'"o2"' in letter.raw  # the notification, for an operator to look at
    assert SubscriptionStore(engine).get("glucose").status == "active"  # type: ignore[union-attr]
    with pytest.raises(ReplayRefused):
        Replayer(DeadLetterStore(engine), lambda envelope: None).replay(letter.id, "ops")
    # operators read it like any letter (its raw bytes are JSON, not HL7: no layout, no 500)
    app = create_app(load_settings(data_dir=tmp_path, api_tokens="o:op:operator"), engine=engine)
    shown = AsgiClient(app, token="op").get(f"/admin/dead-letters/{letter.id}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["stage"] == "subscription:glucose"
    listed = AsgiClient(app, token="op").get("/admin/dead-letters", params={"stage": "subscription"}).json()
    assert [item["id"] for item in listed["items"]] == [letter.id]


def test_a_failing_endpoint_is_retried_in_order_and_the_status_says_error_until_it_recovers(
    engine: Engine, redis_url: str, redis_namespace: str, receiver: Receiver
) -> None:
    healthy = {"now": False}
    receiver.respond = lambda bundle: 200 if healthy["now"] else 503
    SubscriptionStore(engine).put(subscription(receiver.url), "glucose")
    dispatch(engine, glucose("o1"), glucose("o2"))
    delivery = make_delivery(engine, redis_url, redis_namespace, "glucose", batch_max=1, threshold=2)
    subscriptions = SubscriptionStore(engine)

    run_until(delivery, lambda: subscriptions.get("glucose").status == "error")  # type: ignore[union-attr]
    stored = subscriptions.get("glucose")
    assert stored is not None and "HTTP 503" in stored.error
    assert delivery.breaker.is_open()
    assert receiver.received == []
    assert Outbox(engine).events("glucose")[0].attempts >= 2
    assert Outbox(engine).events("glucose")[1].attempts == 0  # the head blocks: order kept

    healthy["now"] = True
    run_until(delivery, lambda: receiver.event_numbers() == [1, 2])
    assert subscriptions.get("glucose").status == "active"  # type: ignore[union-attr]
    assert subscriptions.get("glucose").error == ""  # type: ignore[union-attr]
    assert DeadLetterStore(engine).list() == []


def test_a_subscriber_that_was_away_gets_everything_when_it_comes_back(
    engine: Engine, redis_url: str, redis_namespace: str, receiver: Receiver
) -> None:
    SubscriptionStore(engine).put(subscription(receiver.url), "glucose")
    receiver.stop()
    dispatch(engine, *(glucose(f"o{n}") for n in range(5)))
    delivery = make_delivery(engine, redis_url, redis_namespace, "glucose", batch_max=2)
    run_until(delivery, lambda: Outbox(engine).events("glucose")[0].attempts >= 3)
    assert Outbox(engine).pending("glucose") == 5

    receiver.start()
    run_until(delivery, lambda: Outbox(engine).pending("glucose") == 0)
    assert receiver.event_numbers() == [1, 2, 3, 4, 5]
    assert DeadLetterStore(engine).list() == []
