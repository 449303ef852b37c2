"""The audit trail: an operator action is stored as a valid R4 AuditEvent, searchable, logged without content."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from gateway.errors import DeliveryError
from gateway.store.audit import (
    ENTITY_SYSTEMS,
    OPERATOR_ACTION_SYSTEM,
    Entity,
    OperatorAction,
    Outcome,
    audit_event,
    cli_operator,
    record,
)
from gateway.store.resources import Job, ResourceStore
from gateway.store.transaction import plan_changes
from gateway.validate import validate_bundle
from tests.support.faults import fail_inserts_of
from tests.support.fhir_bundles import patient, put, transaction

DISCARD_REASON = "Duplicate of MRN 555-12 Jane Doe"  # words an operator might type: stored, never logged


def ids(resources: list[dict[str, Any]]) -> set[str]:
    return {resource["id"] for resource in resources}


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.store.audit"]


@pytest.mark.parametrize("action", list(OperatorAction))
@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_action_and_outcome_is_a_valid_r4_audit_event(action: OperatorAction, outcome: Outcome) -> None:
    event = audit_event(
        action,
        "alice",
        outcome,
        [Entity("dead-letter", 7, {"reason": DISCARD_REASON}), Entity("message", "env-1"), Entity("job", "j1")],
        role="operator",
        outcome_text="1 of 1",
    )

    validate_bundle(transaction(put(event)))  # raises on anything R4B's model or our checks refuse
    assert event["subtype"][0]["system"] == OPERATOR_ACTION_SYSTEM
    assert event["subtype"][0]["code"] == action.value
    assert event["outcome"] == outcome.value
    assert event["action"] in ("C", "E", "U", "D")
    assert event["agent"][0]["who"]["display"] == event["agent"][0]["altId"] == "alice"
    assert event["agent"][0]["requestor"] is True


def test_an_action_without_entities_is_valid_too() -> None:
    validate_bundle(transaction(put(audit_event(OperatorAction.purge, cli_operator(), Outcome.success, []))))


def test_action_codes_say_what_kind_of_change() -> None:
    codes = {action: audit_event(action, "a", Outcome.success, [])["action"] for action in OperatorAction}

    assert codes[OperatorAction.replay] == codes[OperatorAction.reprocess] == "E"
    assert codes[OperatorAction.purge] == "D"
    assert codes[OperatorAction.discard] == codes[OperatorAction.edit_replay] == codes[OperatorAction.job_cancel] == "U"
    assert codes[OperatorAction.batch_upload] == "C"


def test_an_unknown_entity_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="entity kind 'patient'"):
        Entity("patient", "p1")


def test_record_stores_an_event_searchable_by_action_who_outcome_and_entity(engine: Engine) -> None:
    store = ResourceStore(engine)
    discard = record(
        store,
        OperatorAction.discard,
        "alice",
        Outcome.success,
        [Entity("dead-letter", 42, {"reason": DISCARD_REASON})],
        role="admin",
    )
    replay = record(
        engine,  # an engine will do: the store is made for it
        OperatorAction.replay,
        "ci-bot",
        Outcome.serious_failure,
        [Entity("dead-letter", 43), Entity("message", "env-9")],
    )

    stored = store.read("AuditEvent", discard)
    assert stored is not None and stored["entity"][0]["detail"][0]["valueString"] == DISCARD_REASON
    assert stored["meta"]["versionId"] == "1"
    assert discard != replay
    assert ids(store.search("AuditEvent", {"subtype": [f"{OPERATOR_ACTION_SYSTEM}|discard"]})) == {discard}
    assert ids(store.search("AuditEvent", {"subtype": ["replay"]})) == {replay}
    assert ids(store.search("AuditEvent", {"altid": ["alice"]})) == {discard}
    assert ids(store.search("AuditEvent", {"agent-name": ["ci-bot"]})) == {replay}
    assert ids(store.search("AuditEvent", {"outcome": ["8"]})) == {replay}
    assert ids(store.search("AuditEvent", {"action": ["U"]})) == {discard}
    letter = f"{ENTITY_SYSTEMS['dead-letter']}|43"
    assert ids(store.search("AuditEvent", {"entity-identifier": [letter]})) == {replay}
    assert ids(store.search("AuditEvent", {"entity-identifier": [f"{ENTITY_SYSTEMS['message']}|env-9"]})) == {replay}
    assert ids(store.search("AuditEvent", {"entity-identifier": ["43"], "altid": ["alice"]})) == set()
    assert ids(store.search("AuditEvent", {"date": ["ge2020-01-01"]})) == {discard, replay}
    assert ids(store.search("AuditEvent", {"date": ["lt2020-01-01"]})) == set()


def test_record_logs_one_line_without_what_the_operator_typed(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    entities = [Entity("dead-letter", n, {"reason": DISCARD_REASON}) for n in range(12)]

    with caplog.at_level(logging.INFO, logger="gateway.store.audit"):
        event_id = record(ResourceStore(engine), OperatorAction.discard, "alice", Outcome.success, entities)

    (line,) = audit_lines(caplog)
    assert "discard by alice" in line and "outcome success" in line and "12 entities" in line
    assert "dead-letter=0" in line and "dead-letter=9" in line and "and 2 more" in line
    assert event_id in line
    assert "Jane" not in line and "555" not in line and "Duplicate" not in line


def test_record_raises_when_the_store_cannot_write(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    store = ResourceStore(engine)
    fail_inserts_of(engine, "AuditEvent", column="type")

    with caplog.at_level(logging.INFO, logger="gateway.store.audit"), pytest.raises(DeliveryError):
        record(store, OperatorAction.purge, "alice", Outcome.success, [Entity("dead-letter", 1)])

    assert store.search("AuditEvent", {}) == []
    assert audit_lines(caplog) == []  # no line for what was not recorded


def test_in_the_callers_transaction_the_action_and_its_record_commit_together(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResourceStore(engine)
    change = Job(plan_changes(transaction(put(patient("p1", "MRN1")))), None)
    caplog.set_level(logging.INFO, logger="gateway.store.audit")

    with store.transaction() as conn:  # left without commit: both roll back, and nothing is logged
        store.write(conn, [change])
        record(store, OperatorAction.discard, "alice", Outcome.success, [Entity("dead-letter", 1)], conn=conn)
    assert store.read("Patient", "p1") is None
    assert store.search("AuditEvent", {}) == []
    assert audit_lines(caplog) == []

    with store.transaction() as conn:
        store.write(conn, [change])
        event_id = record(store, OperatorAction.discard, "alice", Outcome.success, [], conn=conn)
        assert audit_lines(caplog) == []  # not before the caller commits
        conn.commit()
    assert store.read("Patient", "p1") is not None
    assert ids(store.search("AuditEvent", {})) == {event_id}
    (line,) = audit_lines(caplog)
    assert event_id in line

    with store.transaction() as conn:  # rolled back, then the connection commits something else
        record(store, OperatorAction.purge, "alice", Outcome.success, [], conn=conn)
        conn.rollback()
        conn.exec_driver_sql("SELECT 1")
        conn.commit()
    assert len(audit_lines(caplog)) == 1
    assert ids(store.search("AuditEvent", {})) == {event_id}


def test_a_failing_record_in_the_callers_transaction_undoes_the_action(engine: Engine) -> None:
    store = ResourceStore(engine)
    fail_inserts_of(engine, "AuditEvent", column="type")

    with pytest.raises(DeliveryError), store.transaction() as conn:
        store.write(conn, [Job(plan_changes(transaction(put(patient("p1", "MRN1")))), None)])
        record(store, OperatorAction.discard, "alice", Outcome.success, [], conn=conn)
        conn.commit()

    assert store.read("Patient", "p1") is None


def test_cli_operator_names_the_user() -> None:
    assert cli_operator().startswith("cli:")
    assert len(cli_operator()) > len("cli:")
