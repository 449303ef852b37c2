"""The audit trail's background writer (batches, drain, retries, a full queue) and its retention."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from gateway.config import load_settings
from gateway.store.access_events import AuthFailure, auth_failure_event
from gateway.store.audit import OperatorAction, Outcome, audit_event, record
from gateway.store.audit_retention import purge_expired
from gateway.store.audit_trail import AuditTrail
from gateway.store.resources import ResourceStore
from tests.support.faults import fail_inserts_of

NOW = datetime.now(UTC).replace(tzinfo=None)


def refusal(days_ago: float = 0) -> dict[str, Any]:
    return auth_failure_event(AuthFailure.missing, "GET", "/fhir/Patient", "10.0.0.1", NOW - timedelta(days=days_ago))


def stored_ids(engine: Engine) -> set[str]:
    return {event["id"] for event in ResourceStore(engine).search("AuditEvent", {"_count": ["1000"]})}


def rows_of(engine: Engine, event_id: str) -> int:
    """Rows of ``event_id`` in the resource table, its history and every index table."""
    tables = (
        "fhir_resource",
        "fhir_resource_history",
        *(f"fhir_search_{kind}" for kind in ("token", "string", "date", "reference")),
    )
    with engine.connect() as conn:
        return sum(
            conn.exec_driver_sql(
                f"SELECT count(*) FROM {table} WHERE type = 'AuditEvent' AND id = '{event_id}'"
            ).scalar_one()
            for table in tables
        )


def test_records_are_written_in_batches_and_counted(engine: Engine) -> None:
    trail = AuditTrail(ResourceStore(engine), batch=200, linger_s=0.2)
    events = [refusal() for _ in range(450)]
    for event in events:
        assert trail.submit(event)

    assert trail.flush(timeout=30)
    assert stored_ids(engine) == {event["id"] for event in events}
    assert (trail.pending, trail.written, trail.dropped) == (0, 450, 0)
    trail.close()


def test_a_lone_record_is_written_within_the_linger(engine: Engine) -> None:
    trail = AuditTrail(ResourceStore(engine), linger_s=0.1)
    event = refusal()
    trail.submit(event)
    deadline = time.monotonic() + 5
    while trail.written == 0 and time.monotonic() < deadline:
        time.sleep(0.02)

    assert trail.written == 1 and stored_ids(engine) == {event["id"]}  # without flush or close
    trail.close()


def test_close_drains_what_is_queued(engine: Engine) -> None:
    trail = AuditTrail(ResourceStore(engine), linger_s=60.0)
    trail.start()
    events = [refusal() for _ in range(5)]
    for event in events:
        trail.submit(event)
    time.sleep(0.1)
    assert trail.pending == 5 and trail.written == 0

    trail.close()
    assert stored_ids(engine) == {event["id"] for event in events}
    assert (trail.pending, trail.written, trail.dropped) == (0, 5, 0)
    assert not trail.submit(refusal())  # closed: refused and counted
    assert trail.dropped == 1


def test_a_refused_write_is_retried_and_written_once_the_database_takes_it(engine: Engine) -> None:
    fail_inserts_of(engine, "AuditEvent", column="type")
    trail = AuditTrail(ResourceStore(engine), linger_s=0.0)
    event = refusal()
    trail.submit(event)
    time.sleep(0.2)  # the first try failed; the next is 0.5 s later
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "DROP TRIGGER reject" if engine.dialect.name == "sqlite" else "DROP TRIGGER reject ON fhir_resource"
        )

    assert trail.flush(timeout=10)
    assert stored_ids(engine) == {event["id"]} and (trail.written, trail.dropped) == (1, 0)
    trail.close()


def test_a_batch_the_database_keeps_refusing_is_given_up_counted_and_logged(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    fail_inserts_of(engine, "AuditEvent", column="type")
    trail = AuditTrail(ResourceStore(engine), linger_s=0.0)
    with caplog.at_level(logging.WARNING, logger="gateway.store.audit_trail"):
        trail.submit(refusal())
        assert trail.flush(timeout=15)

    assert (trail.written, trail.dropped, trail.pending) == (0, 1, 0)
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.store.audit_trail"]
    assert sum("retrying" in line for line in lines) == 2 and "1 record(s) lost" in lines[-1]
    trail.close()


def test_a_full_queue_makes_submit_wait_then_refuse_and_failed_logins_get_half(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    trail = AuditTrail(ResourceStore(engine), capacity=4, batch=100, linger_s=60.0, block_s=0.1)
    for _ in range(2):
        assert trail.submit(refusal(), wait=False)
    assert not trail.submit(refusal(), wait=False)  # failed logins may fill only half the queue
    assert trail.submit(refusal()) and trail.submit(refusal())
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="gateway.store.audit_trail"):
        assert not trail.submit(refusal())
    assert time.monotonic() - started >= 0.1  # it waited for room first
    assert (trail.pending, trail.dropped) == (4, 2)
    assert "refused" in caplog.records[-1].getMessage()

    waiting = threading.Thread(target=lambda: trail.submit(refusal()))
    trail.block_s = 10
    waiting.start()
    time.sleep(0.1)
    trail.close()  # the writer drains the queue; the submit still waiting is refused
    waiting.join(5)
    assert (trail.written, trail.dropped) == (4, 3)


def test_retention_deletes_only_expired_events_with_their_index_rows(engine: Engine) -> None:
    store = ResourceStore(engine)
    old, older, recent = refusal(days_ago=400), refusal(days_ago=3000), refusal(days_ago=10)
    action = audit_event(OperatorAction.purge, "ada", Outcome.success, [], recorded=NOW - timedelta(days=500))
    for event in (old, older, recent, action):
        store.apply_bundle(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"resource": event, "request": {"method": "PUT", "url": f"AuditEvent/{event['id']}"}}],
            }
        )
    kept = record(store, OperatorAction.replay, "ada", Outcome.success, [])
    assert rows_of(engine, old["id"]) > 5

    assert purge_expired(engine, NOW - timedelta(days=365), batch=2) == 3
    assert stored_ids(engine) == {recent["id"], kept}
    assert rows_of(engine, old["id"]) == rows_of(engine, older["id"]) == rows_of(engine, action["id"]) == 0
    assert purge_expired(engine, NOW - timedelta(days=365)) == 0


def test_a_started_trail_applies_its_retention(engine: Engine) -> None:
    store = ResourceStore(engine)
    old, recent = refusal(days_ago=40), refusal(days_ago=1)
    trail = AuditTrail(store, retention_days=30, linger_s=0.0)
    for event in (old, recent):
        trail.submit(event)
    assert trail.flush()
    trail.start()  # purges now, then every hour
    deadline = time.monotonic() + 10
    while old["id"] in stored_ids(engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored_ids(engine) == {recent["id"]}
    trail.close()


def test_settings() -> None:
    assert load_settings().audit.access is True
    assert load_settings().audit.retention_days == 6 * 365
    assert load_settings(access_audit="off").audit.access is False
    assert load_settings(audit_retention_days=0).audit.retention_days == 0


def test_the_metrics_follow_the_trail(engine: Engine) -> None:
    from prometheus_client import REGISTRY

    from gateway.metrics import configure

    def figure(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    configure(True)
    written, dropped = figure("hl7gw_audit_events_written_total"), figure("hl7gw_audit_events_dropped_total")
    trail = AuditTrail(ResourceStore(engine), capacity=6, batch=100, linger_s=60.0, block_s=0.0)
    for _ in range(3):
        assert trail.submit(refusal(), wait=False)
    assert not trail.submit(refusal(), wait=False)  # half the queue: refused, counted
    assert trail.flush(timeout=30)
    assert figure("hl7gw_audit_events_written_total") - written == 3
    assert figure("hl7gw_audit_events_dropped_total") - dropped == 1
    assert figure("hl7gw_audit_events_pending") == 0
    trail.close()
