"""The Subscription resources: written through the API or from HL7GW_SUBSCRIPTIONS_FILE, read by
the dispatcher and the delivery, whose status the gateway keeps (docs/consumers.md, "Subscriptions").

Status: ``requested`` when written; ``active`` once the dispatcher takes it (from then on, changes
written at or after ``active_since`` match); ``error`` while its endpoint keeps failing (with the
reason), back to ``active`` when a notification goes through; ``off`` when its writer says so
(nothing matches, nothing is sent; what was queued stays queued until it is on again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection, Engine

from gateway import fhirjson
from gateway.db.schema import subscription, subscription_event
from gateway.store.subscription_resource import SubscriptionSpec, parse_subscription

API, CONFIG = "api", "config"


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    id: str
    version_id: int
    last_updated: datetime
    status: str
    error: str
    events: int
    origin: str
    content: dict[str, Any]
    active_since: datetime | None = None

    def resource(self) -> dict[str, Any]:
        """The Subscription as the API returns it: the gateway's status and error, and meta."""
        out = dict(self.content)
        out["meta"] = {"versionId": str(self.version_id), "lastUpdated": instant(self.last_updated)}
        out["status"] = self.status
        if self.error:
            out["error"] = self.error
        return out

    def spec(self) -> SubscriptionSpec:
        return _spec(self.id, self.content)


#: Specs by (id, content JSON): parsed once per content, whatever database it came from.
_specs: dict[tuple[str, bytes], SubscriptionSpec] = {}


def _spec(resource_id: str, content: dict[str, Any]) -> SubscriptionSpec:
    key = (resource_id, fhirjson.dumps(content))
    found = _specs.get(key)
    if found is None:
        found, _ = parse_subscription(content, resource_id)
        if len(_specs) > 4096:
            _specs.clear()
        _specs[key] = found
    return found


class SubscriptionStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def put(self, resource: Any, resource_id: str, origin: str = API) -> tuple[StoredSubscription, bool]:
        """Create or replace Subscription ``resource_id``; True when it was created. Raises
        SubscriptionInvalid. A running subscription (active, error) stays as it is unless asked off."""
        spec, kept = parse_subscription(resource, resource_id)
        now = _now()
        content = fhirjson.dumps(kept).decode()
        with self.engine.begin() as conn:
            row = conn.execute(select(subscription).where(subscription.c.id == resource_id)).first()
            if (
                row is not None
                and row.content == content
                and row.origin == origin
                and (row.status == "off") == (spec.wanted == "off")
            ):
                return _stored(row), False  # the same again (each worker loads the file at start)
            if spec.wanted == "off":
                status = "off"
            elif row is not None and row.status in ("active", "error"):
                status = row.status
            else:
                status = "requested"
            values = {
                "last_updated": now,
                "content": content,
                "status": status,
                "error": row.error if row is not None and status == "error" else "",
                "resource_type": spec.criteria.resource_type,
                "origin": origin,
                "updated_at": _ms(),
            }
            if row is None:
                conn.execute(subscription.insert().values(id=resource_id, version_id=1, events=0, **values))
            else:
                conn.execute(
                    update(subscription)
                    .where(subscription.c.id == resource_id)
                    .values(version_id=subscription.c.version_id + 1, **values)
                )
            stored = _read(conn, resource_id)
        assert stored is not None
        return stored, row is None

    def get(self, resource_id: str) -> StoredSubscription | None:
        with self.engine.connect() as conn:
            return _read(conn, resource_id)

    def all(self) -> list[StoredSubscription]:
        with self.engine.connect() as conn:
            return [_stored(row) for row in conn.execute(select(subscription).order_by(subscription.c.id))]

    def delete(self, resource_id: str) -> bool:
        """Remove the Subscription and the notifications still queued for it; False when unknown."""
        with self.engine.begin() as conn:
            gone = conn.execute(delete(subscription).where(subscription.c.id == resource_id)).rowcount
            conn.execute(delete(subscription_event).where(subscription_event.c.subscription_id == resource_id))
        return bool(gone)

    def turn_off_missing(self, keep: set[str], origin: str = CONFIG) -> list[str]:
        """Set ``off`` every subscription of ``origin`` not in ``keep`` (a configuration file's
        subscription that was removed from it); returns their ids."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(subscription.c.id).where(subscription.c.origin == origin, subscription.c.status != "off")
            ).all()
            gone = [row.id for row in rows if row.id not in keep]
            if gone:
                conn.execute(
                    update(subscription)
                    .where(subscription.c.id.in_(gone))
                    .values(status="off", error="", updated_at=_ms())
                )
        return gone

    # -- the dispatcher's and the delivery's ---------------------------------------------------
    def requested(self, conn: Connection) -> bool:
        """Whether some subscription waits to become active."""
        stmt = select(subscription.c.id).where(subscription.c.status == "requested").limit(1)
        return conn.execute(stmt).first() is not None

    def activate_requested(self, conn: Connection, now: datetime) -> list[str]:
        """``requested`` -> ``active``, matching changes written from ``now`` on; returns their ids."""
        rows = conn.execute(select(subscription.c.id).where(subscription.c.status == "requested")).all()
        ids = [row.id for row in rows]
        if ids:
            conn.execute(
                update(subscription)
                .where(subscription.c.id.in_(ids), subscription.c.status == "requested")
                .values(status="active", active_since=now, error="", updated_at=_ms())
            )
        return ids

    def running(self, conn: Connection | None = None) -> list[StoredSubscription]:
        """The subscriptions that match and send: active, or in error (their endpoint failing)."""
        stmt = select(subscription).where(subscription.c.status.in_(("active", "error"))).order_by(subscription.c.id)
        if conn is not None:
            return [_stored(row) for row in conn.execute(stmt)]
        with self.engine.connect() as own:
            return [_stored(row) for row in own.execute(stmt)]

    def set_error(self, resource_id: str, error: str) -> bool:
        """``active`` -> ``error`` with why (a running subscription only); True when it changed."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(subscription)
                .where(subscription.c.id == resource_id, subscription.c.status.in_(("active", "error")))
                .where(subscription.c.error != error[:2000])
                .values(status="error", error=error[:2000], updated_at=_ms())
            ).rowcount
        return bool(done)

    def set_recovered(self, resource_id: str) -> bool:
        """``error`` -> ``active``: a notification went through; True when it changed."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(subscription)
                .where(subscription.c.id == resource_id, subscription.c.status == "error")
                .values(status="active", error="", updated_at=_ms())
            ).rowcount
        return bool(done)


def _read(conn: Connection, resource_id: str) -> StoredSubscription | None:
    row = conn.execute(select(subscription).where(subscription.c.id == resource_id)).first()
    return _stored(row) if row is not None else None


def _stored(row: Any) -> StoredSubscription:
    return StoredSubscription(
        row.id,
        row.version_id,
        row.last_updated,
        row.status,
        row.error,
        int(row.events),
        row.origin,
        fhirjson.loads(row.content),
        row.active_since,
    )


def instant(moment: datetime) -> str:
    """A naive-UTC time as a FHIR instant with milliseconds."""
    return moment.replace(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now() -> datetime:
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _ms() -> int:
    return int(time.time() * 1000)
