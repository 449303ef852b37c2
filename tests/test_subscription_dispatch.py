"""The dispatcher: gapless event numbers per subscription, written with the feed position in one
transaction, so a crash between steps neither skips nor repeats one; one dispatcher at a time."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine

import gateway.deliver.subscription_dispatch as dispatch_module
from gateway.deliver.subscription_dispatch import Dispatcher
from gateway.store.feed import read_changes
from gateway.store.resources import ResourceStore
from gateway.store.subscription_outbox import DispatchLease, LeaseLost, Outbox
from gateway.store.subscriptions import SubscriptionStore
from tests.support.fhir_bundles import delete, observation, patient, put, transaction
from tests.support.queue import wait_until
from tests.support.subscriptions import subscription

ENDPOINT = "http://127.0.0.1:9/notify"


def drain(dispatcher: Dispatcher) -> None:
    for _ in range(100):
        if dispatcher.run_once() == 0:
            return
    raise AssertionError("the dispatcher never caught up")


def focus(engine: Engine, subscription_id: str) -> list[tuple[int, str, int, bool]]:
    return [(e.event_number, e.resource_id, e.version_id, e.deleted) for e in Outbox(engine).events(subscription_id)]


@pytest.fixture
def dispatcher(engine: Engine) -> Dispatcher:
    subscriptions = SubscriptionStore(engine)
    subscriptions.put(subscription(ENDPOINT), "glucose")
    subscriptions.put(subscription(ENDPOINT, "Patient"), "patients")
    lease = DispatchLease(engine, "worker-a")
    assert lease.hold()
    made = Dispatcher(engine, lease, read_changes, page_size=3)
    assert sorted(made.activate()) == ["glucose", "patients"]
    return made


def write_changes(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "M1")), put(observation("o1", "p1", code="2345-7"))))
    store.apply_bundle(transaction(put(observation("o2", "p1", code="8867-4"))))
    store.apply_bundle(transaction(put(observation("o3", "p1", code="2345-7"))))
    store.apply_bundle(transaction(put(observation("o1", "p1", code="2345-7", status="amended"))))
    store.apply_bundle(transaction(put(observation("o2", "p1", code="2345-7"))))  # now it matches
    store.apply_bundle(transaction(delete("Observation", "o3")))  # matched on the version before
    store.apply_bundle(transaction(put(patient("p1", "M1", family="Other"))))


EXPECTED_GLUCOSE = [
    (1, "o1", 1, False),
    (2, "o3", 1, False),
    (3, "o1", 2, False),
    (4, "o2", 2, False),
    (5, "o3", 2, True),
]


def test_each_matching_change_gets_the_next_number(engine: Engine, dispatcher: Dispatcher) -> None:
    write_changes(engine)
    drain(dispatcher)

    assert focus(engine, "glucose") == EXPECTED_GLUCOSE
    assert focus(engine, "patients") == [(1, "p1", 1, False), (2, "p1", 2, False)]
    assert SubscriptionStore(engine).get("glucose").events == 5  # type: ignore[union-attr]
    # nothing more to do, and nothing numbered twice
    assert dispatcher.run_once() == 0
    assert len(focus(engine, "glucose")) == 5


@pytest.mark.parametrize("crash_on_page", [1, 2, 3])
def test_a_crash_before_the_commit_loses_and_repeats_nothing(
    engine: Engine, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch, crash_on_page: int
) -> None:
    write_changes(engine)
    real_record = dispatch_module.record
    pages = {"n": 0}

    def crashing(*args: Any, **kwargs: Any) -> Any:
        numbered = real_record(*args, **kwargs)  # the rows are written, the position moved ...
        pages["n"] += 1
        if pages["n"] == crash_on_page:
            raise RuntimeError("power cut")  # ... and the transaction never commits
        return numbered

    monkeypatch.setattr(dispatch_module, "record", crashing)
    with pytest.raises(RuntimeError):
        drain(dispatcher)
    monkeypatch.setattr(dispatch_module, "record", real_record)
    # a new dispatcher (a restarted worker) carries on from the persisted position
    again = Dispatcher(engine, dispatcher.lease, read_changes, page_size=3)
    drain(again)

    assert focus(engine, "glucose") == EXPECTED_GLUCOSE
    assert focus(engine, "patients") == [(1, "p1", 1, False), (2, "p1", 2, False)]


def test_a_crash_after_the_commit_repeats_nothing(engine: Engine, dispatcher: Dispatcher) -> None:
    write_changes(engine)

    def crash(numbered: dict[str, list[int]]) -> None:
        raise RuntimeError("died before waking the senders")

    dispatcher.on_recorded = crash
    with pytest.raises(RuntimeError):
        dispatcher.run_once()
    drain(Dispatcher(engine, dispatcher.lease, read_changes, page_size=3))

    assert focus(engine, "glucose") == EXPECTED_GLUCOSE


def test_changes_before_a_subscription_was_active_do_not_match(engine: Engine, dispatcher: Dispatcher) -> None:
    write_changes(engine)
    drain(dispatcher)
    SubscriptionStore(engine).put(subscription(ENDPOINT), "late")
    dispatcher.activate()
    ResourceStore(engine).apply_bundle(transaction(put(observation("o9", "p1", code="2345-7"))))
    drain(dispatcher)

    assert focus(engine, "late") == [(1, "o9", 1, False)]
    assert focus(engine, "glucose")[-1] == (6, "o9", 1, False)


def test_an_off_subscription_gets_nothing(engine: Engine, dispatcher: Dispatcher) -> None:
    SubscriptionStore(engine).put(subscription(ENDPOINT, status="off"), "glucose")
    write_changes(engine)
    drain(dispatcher)

    assert focus(engine, "glucose") == []
    assert len(focus(engine, "patients")) == 2


def test_one_dispatcher_at_a_time_and_a_stale_one_cannot_commit(engine: Engine) -> None:
    SubscriptionStore(engine).put(subscription(ENDPOINT), "glucose")
    first = DispatchLease(engine, "worker-a", lease_s=0.3)
    second = DispatchLease(engine, "worker-b", lease_s=30)
    assert first.hold()
    assert not second.hold()
    stale = Dispatcher(engine, first, read_changes)
    stale.activate()
    ResourceStore(engine).apply_bundle(transaction(put(observation("o1", "p1", code="2345-7"))))

    wait_until(second.hold, timeout=10, what="the expired lease taken over")  # worker-a paused past its lease
    with pytest.raises(LeaseLost):
        stale.run_once()
    assert focus(engine, "glucose") == []
    drain(Dispatcher(engine, second, read_changes))
    assert focus(engine, "glucose") == [(1, "o1", 1, False)]
    assert not first.hold()
