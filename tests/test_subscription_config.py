"""HL7GW_SUBSCRIPTIONS_FILE: Subscriptions from a file, written once however many workers load it,
turned off when the file no longer holds them; a bad file fails loudly. And the outbox's pruning."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from gateway.errors import ConfigError
from gateway.services.subscriptions import load_subscription_file
from gateway.store.subscription_outbox import DispatchLease, Matched, Outbox, record
from gateway.store.subscriptions import CONFIG, SubscriptionStore
from tests.support.subscriptions import subscription

ENDPOINT = "https://subscriber.example/notify"


def test_a_yaml_file_is_loaded_once_and_what_leaves_it_is_turned_off(tmp_path: Path, engine: Engine) -> None:
    path = tmp_path / "subscriptions.yaml"
    path.write_text(
        f"""
- resourceType: Subscription
  id: glucose
  status: requested
  reason: lab
  criteria: Observation?code=http://loinc.org|2345-7
  channel: {{type: rest-hook, endpoint: "{ENDPOINT}", payload: application/fhir+json}}
- resourceType: Subscription
  id: finished
  status: requested
  reason: beds
  criteria: Encounter?status=finished
  channel: {{type: rest-hook, endpoint: "{ENDPOINT}"}}
"""
    )
    store = SubscriptionStore(engine)
    assert load_subscription_file(path, store) == ["glucose", "finished"]
    assert load_subscription_file(path, store) == ["glucose", "finished"]  # another worker starting
    glucose = store.get("glucose")
    assert glucose is not None and glucose.origin == CONFIG and glucose.version_id == 1
    assert glucose.spec().payload == "full-resource"
    assert store.get("finished").spec().payload == "id-only"  # type: ignore[union-attr]

    store.put(subscription(ENDPOINT), "made-by-api")
    path.write_text(json.dumps([{**subscription(ENDPOINT), "id": "glucose"}]))
    path = path.rename(tmp_path / "subscriptions.json")
    assert load_subscription_file(path, store) == ["glucose"]
    assert store.get("finished").status == "off"  # type: ignore[union-attr]
    assert store.get("made-by-api").status == "requested"  # type: ignore[union-attr]
    assert store.get("glucose").version_id == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[{resourceType: Subscription}]", "has no id"),
        (
            "- {resourceType: Subscription, id: x, status: requested, reason: r, criteria: Nope,"
            " channel: {type: rest-hook, endpoint: 'http://x'}}",
            "Subscription/x: criteria",
        ),
        ("just text", "list of Subscription"),
        (": : :", "cannot read"),
    ],
)
def test_a_bad_file_fails_loudly(tmp_path: Path, engine: Engine, content: str, words: str) -> None:
    path = tmp_path / "subscriptions.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_subscription_file(path, SubscriptionStore(engine))
    assert words in str(caught.value)


def test_pruning_forgets_old_sent_events_but_not_their_numbers(engine: Engine) -> None:
    SubscriptionStore(engine).put(subscription(ENDPOINT), "glucose")
    lease = DispatchLease(engine, "w")
    assert lease.hold()
    outbox = Outbox(engine)
    changes = [Matched("glucose", "Observation", f"o{n}", 1, False, datetime(2026, 1, 1)) for n in range(3)]
    with engine.begin() as conn:
        record(conn, "w", changes, None)
    outbox.sent("glucose", [1, 2])
    assert outbox.prune(int(time.time() * 1000) + 1000) == 2
    assert [(e.event_number, e.status) for e in outbox.events("glucose")] == [(3, "pending")]
    with engine.begin() as conn:
        assert record(conn, "w", changes[:1], None) == {"glucose": [4]}
