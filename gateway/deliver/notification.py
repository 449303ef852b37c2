"""The notification a Subscription's endpoint receives, in the shape of the Subscriptions R5
Backport IG for R4 (http://hl7.org/fhir/uv/subscriptions-backport/, profiles
backport-subscription-notification-r4 and backport-subscription-status-r4).

A ``history`` Bundle whose first entry is a ``Parameters`` (the SubscriptionStatus): the
subscription, its status, type ``event-notification``, ``events-since-subscription-start``, and
one ``notification-event`` per event (``event-number``, ``timestamp``: when the change was
written, ``focus``: the version it wrote). For a full-resource payload each event's resource
follows as an entry of its own (a deletion: the DELETE request, no resource); for id-only,
nothing follows. No ``topic``: an R4 criteria-based subscription has no SubscriptionTopic, and a
made-up canonical would claim one (the IG makes ``topic`` optional).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from gateway.store.subscription_outbox import Event
from gateway.store.subscription_resource import Payload

STATUS_PROFILE = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
NOTIFICATION_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4"
)


def notification_bundle(
    base_url: str,
    subscription_id: str,
    status: str,
    events_since_start: int,
    events: list[Event],
    payload: Payload,
    resources: dict[tuple[str, str, int], dict[str, Any]],
) -> dict[str, Any]:
    """The notification of ``events`` (in event-number order); ``resources``: the content of each
    event's version, by (type, id, version), for a full-resource payload."""
    status_id = str(uuid.uuid4())
    parameters: dict[str, Any] = {
        "resourceType": "Parameters",
        "id": status_id,
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": f"{base_url}/Subscription/{subscription_id}"}},
            {"name": "status", "valueCode": status},
            {"name": "type", "valueCode": "event-notification"},
            {"name": "events-since-subscription-start", "valueString": str(events_since_start)},
            *(_event_parameter(base_url, event) for event in events),
        ],
    }
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{status_id}",
            "resource": parameters,
            "request": {"method": "GET", "url": f"{base_url}/Subscription/{subscription_id}/$status"},
            "response": {"status": "200"},
        }
    ]
    if payload == "full-resource":
        entries += [_resource_entry(base_url, event, resources) for event in events]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": _instant(datetime.now(UTC)),
        "entry": entries,
    }


def focus_reference(base_url: str, event: Event) -> str:
    """The version an event wrote: ``[base]/[type]/[id]/_history/[version]``."""
    return f"{base_url}/{event.resource_type}/{event.resource_id}/_history/{event.version_id}"


def _event_parameter(base_url: str, event: Event) -> dict[str, Any]:
    return {
        "name": "notification-event",
        "part": [
            {"name": "event-number", "valueString": str(event.event_number)},
            {"name": "timestamp", "valueInstant": _instant(event.occurred_at.replace(tzinfo=UTC))},
            {"name": "focus", "valueReference": {"reference": focus_reference(base_url, event)}},
        ],
    }


def _resource_entry(
    base_url: str, event: Event, resources: dict[tuple[str, str, int], dict[str, Any]]
) -> dict[str, Any]:
    url = f"{event.resource_type}/{event.resource_id}"
    content = resources.get((event.resource_type, event.resource_id, event.version_id))
    if event.deleted or content is None:
        return {
            "fullUrl": f"{base_url}/{url}",
            "request": {"method": "DELETE", "url": url},
            "response": {"status": "204"},
        }
    return {
        "fullUrl": f"{base_url}/{url}",
        "resource": content,
        "request": {"method": "PUT", "url": url},
        "response": {"status": "201" if event.version_id == 1 else "200", "etag": f'W/"{event.version_id}"'},
    }


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
