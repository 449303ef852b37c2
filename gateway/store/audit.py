"""The audit trail: each operator action becomes a FHIR R4 AuditEvent in the store, and one log line.

An operator action (replay, edit-and-replay, discard, purge, reprocess, job cancel) is not done
until it is recorded: ``record`` raises when the store cannot write, and never quotes message
content. The AuditEvent (auditevent.html) says

* ``type``: DICOM 110100 "Application Activity"; ``subtype``: the action, a code of the gateway's
  own CodeSystem ``OPERATOR_ACTION_SYSTEM``; ``action``: E (execute), U (update) or D (delete);
* ``recorded`` (when), ``outcome`` (0 success, 4 minor, 8 serious, 12 major failure) and
  ``outcomeDesc`` (a short text without content);
* ``agent``: who, by the name of the API token (or local operator) as ``who.display``,
  ``altId`` and ``name``, its role, ``requestor`` true;
* ``source``: the gateway (observer) on this host (site);
* ``entity``: which messages, dead letters and jobs, as ``what.identifier`` under the systems
  in ``ENTITY_SYSTEMS``; ``Entity.detail`` carries what the operator supplied (a discard reason,
  a job's filter), never raw message content.

Read access is admin-only (gateway/api/fhir.py); search by ``subtype``, ``altid``, ``date``,
``outcome`` or ``entity-identifier`` (gateway/store/search_registry_admin.py).
"""

from __future__ import annotations

import enum
import getpass
import logging
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from gateway.store.fhir_dates import format_instant
from gateway.store.resources import Job, ResourceStore, delivery_error
from gateway.store.transaction import plan_changes

log = logging.getLogger(__name__)

#: The gateway's CodeSystem of operator actions (AuditEvent.subtype).
OPERATOR_ACTION_SYSTEM = "urn:hl7gw:operator-action"
#: The gateway's CodeSystem of API roles (AuditEvent.agent.role).
API_ROLE_SYSTEM = "urn:hl7gw:api-role"
#: Identifier systems of the things an action touches (AuditEvent.entity.what.identifier).
ENTITY_SYSTEMS = {
    "message": "urn:hl7gw:envelope",  # an envelope id: one received message, or one attempt at it
    "dead-letter": "urn:hl7gw:dead-letter",
    "job": "urn:hl7gw:job",
    "subscription": "urn:hl7gw:subscription",
}
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
#: Ids named in the log line; the AuditEvent holds all of them.
_LOGGED_IDS = 10


class OperatorAction(enum.StrEnum):
    """What an operator did; the value is the code in ``OPERATOR_ACTION_SYSTEM``."""

    replay = "replay"
    edit_replay = "edit-replay"
    discard = "discard"
    purge = "purge"
    reprocess = "reprocess"
    job_cancel = "job-cancel"
    batch_upload = "batch-upload"
    #: A Subscription written or removed: where patient data will be sent (docs/consumers.md).
    subscription_create = "subscription-create"
    subscription_update = "subscription-update"
    subscription_delete = "subscription-delete"


#: AuditEvent.action (R4 audit-event-action): a replay or reprocess executes; an edit, a discard or
#: a cancel updates what is kept; a purge deletes raw content; a batch upload creates messages.
_ACTION_CODE = {
    OperatorAction.replay: "E",
    OperatorAction.edit_replay: "U",
    OperatorAction.discard: "U",
    OperatorAction.purge: "D",
    OperatorAction.reprocess: "E",
    OperatorAction.job_cancel: "U",
    OperatorAction.batch_upload: "C",
    OperatorAction.subscription_create: "C",
    OperatorAction.subscription_update: "U",
    OperatorAction.subscription_delete: "D",
}
_DISPLAY = {
    OperatorAction.replay: "Replay of a dead letter",
    OperatorAction.edit_replay: "Replay of a dead letter with an edited message",
    OperatorAction.discard: "Discard of a dead letter",
    OperatorAction.purge: "Purge of dead letters' raw content",
    OperatorAction.reprocess: "Reprocess of archived messages",
    OperatorAction.job_cancel: "Cancel of a job",
    OperatorAction.batch_upload: "Upload of an HL7 v2 batch file (POST /hl7/batch)",
    OperatorAction.subscription_create: "Subscription created (notifications of patient data to its endpoint)",
    OperatorAction.subscription_update: "Subscription changed",
    OperatorAction.subscription_delete: "Subscription deleted",
}


class Outcome(enum.StrEnum):
    """AuditEvent.outcome (R4 audit-event-outcome)."""

    success = "0"
    minor_failure = "4"  # done in part: some of the messages failed
    serious_failure = "8"  # the action failed
    major_failure = "12"  # the gateway could not act at all


@dataclass(frozen=True, slots=True)
class Entity:
    """A thing an action touched, by id: ``kind`` is a key of ``ENTITY_SYSTEMS``."""

    kind: str
    id: str | int
    #: What the operator supplied about it (a reason, a filter): stored, never logged.
    detail: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ENTITY_SYSTEMS:
            raise ValueError(f"entity kind {self.kind!r} is not one of {', '.join(ENTITY_SYSTEMS)}")


def cli_operator() -> str:
    """The name of an operator using the hl7gw command on this machine: ``cli:<user>``, as dead letters record it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def record(
    store: ResourceStore | Engine,
    action: OperatorAction,
    who: str,
    outcome: Outcome,
    entities: Sequence[Entity],
    *,
    role: str | None = None,
    outcome_text: str | None = None,
    conn: Connection | None = None,
) -> str:
    """Store the AuditEvent of one operator action (in ``store``, or the store of an engine) and log it;
    return the AuditEvent's id.

    ``who`` is the token's name (``Principal.name``) or ``cli_operator()``, never a token.
    ``outcome_text`` is a short summary without message content ("3 of 5 replayed").

    Ordering: with ``conn`` (a write transaction from ``store.transaction()``), the event is written
    in the caller's transaction, so the action and its record commit together or not at all: use
    this when the action is a database change (discard, purge, a letter's status). Without it the
    event is committed at once: record after the action, with its real outcome, and record a
    failed action too. Either way a store that cannot write raises (StoreUnavailable for an
    outage, DeliveryError otherwise), and the caller must then report the action as failed. The
    log line is written once the event is committed (with ``conn``: when the caller commits).
    """
    if isinstance(store, Engine):
        store = ResourceStore(store)
    resource = audit_event(action, who, outcome, entities, role=role, outcome_text=outcome_text)
    event_id = str(resource["id"])
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{event_id}",
                "resource": resource,
                "request": {"method": "PUT", "url": f"AuditEvent/{event_id}"},
            }
        ],
    }
    line = _log_line(action, who, outcome, entities, event_id)
    if conn is None:
        store.apply_bundle(bundle)
        line()
    else:
        try:
            store.write(conn, [Job(plan_changes(bundle), None)])
        except SQLAlchemyError as exc:
            raise delivery_error(exc) from exc
        _when_committed(conn, line)
    return event_id


def _log_line(
    action: OperatorAction, who: str, outcome: Outcome, entities: Sequence[Entity], event_id: str
) -> Callable[[], None]:
    """The one log line of an action: what, who, outcome, ids (never details), to be written once recorded."""
    ids = [f"{entity.kind}={entity.id}" for entity in entities[:_LOGGED_IDS]]
    more = f" and {len(entities) - _LOGGED_IDS} more" if len(entities) > _LOGGED_IDS else ""
    text = ", ".join(ids) or "none"

    def write() -> None:
        log.info(
            "audit %s by %s: outcome %s, %d entities: %s%s (AuditEvent/%s)",
            *(action.value, who, outcome.name, len(entities), text, more, event_id),
        )

    return write


def _when_committed(conn: Connection, then: Callable[[], None]) -> None:
    """Call ``then`` once when ``conn``'s transaction commits; never if it rolls back first."""
    pending = [True]

    def on_commit(_conn: Connection) -> None:
        if pending:
            pending.clear()
            then()

    def on_rollback(_conn: Connection) -> None:
        pending.clear()

    sqlalchemy_event.listen(conn, "commit", on_commit)
    sqlalchemy_event.listen(conn, "rollback", on_rollback)


def audit_event(
    action: OperatorAction,
    who: str,
    outcome: Outcome,
    entities: Sequence[Entity],
    *,
    role: str | None = None,
    outcome_text: str | None = None,
    recorded: datetime | None = None,
) -> dict[str, Any]:
    """The AuditEvent resource ``record`` stores, with a fresh uuid4 id."""
    moment = (recorded or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": _AGENT_TYPE, "code": "humanuser", "display": "human user"}]},
        "who": {"display": who},
        "altId": who,
        "name": who,
        "requestor": True,
    }
    if role:
        agent["role"] = [{"coding": [{"system": API_ROLE_SYSTEM, "code": role}]}]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": {"system": _DCM, "code": "110100", "display": "Application Activity"},
        "subtype": [{"system": OPERATOR_ACTION_SYSTEM, "code": action.value, "display": _DISPLAY[action]}],
        "action": _ACTION_CODE[action],
        "recorded": format_instant(moment),
        "outcome": outcome.value,
    }
    if outcome_text:
        event["outcomeDesc"] = outcome_text
    event["agent"] = [agent]
    event["source"] = {
        "site": socket.gethostname() or "unknown",
        "observer": {"display": "hl7gw"},
        "type": [{"system": _SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }
    if entities:
        event["entity"] = [_entity(entity) for entity in entities]
    return event


def _entity(entity: Entity) -> dict[str, Any]:
    out: dict[str, Any] = {
        "what": {"identifier": {"system": ENTITY_SYSTEMS[entity.kind], "value": str(entity.id)}},
        "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
    }
    if entity.kind == "job":
        out["role"] = {"system": _OBJECT_ROLE, "code": "20", "display": "Job"}
    details = [{"type": key, "valueString": value} for key, value in entity.detail.items() if key and value]
    if details:
        out["detail"] = details
    return out
