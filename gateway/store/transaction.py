"""Check a FHIR transaction Bundle (http.html#transaction) and describe what applying it did.

``plan_changes`` turns a Bundle into a list of ``Change`` (one PUT or DELETE per entry), raising
DeliveryError naming the entry for anything the store cannot apply. ``gateway.store.writer``
applies the changes; ``ApplyResult`` says what each entry did.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway import fhirjson
from gateway.errors import DeliveryError

#: created / updated / deleted: the entry made a new version. unchanged: the store already held
#: that content (a redelivery). superseded: the stored data came from a newer message, so the
#: entry was skipped (gateway/store/ordering.py). moved: a version made by a Patient merge.
Outcome = Literal["created", "updated", "unchanged", "deleted", "superseded", "moved"]

# Bundle.entry.request.url of a PUT or DELETE: [type]/[id] (http.html#update, datatypes.html#id).
_REQUEST_URL = re.compile(r"/?([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})")


@dataclass(frozen=True, slots=True)
class AppliedEntry:
    type: str
    id: str
    #: Version after the entry was applied (for superseded: the version that stayed); 0 when a
    #: DELETE found nothing to delete.
    version_id: int
    outcome: Outcome
    #: For superseded: the archive id of the message whose newer data stayed.
    superseded_by: str | None = None


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What a transaction did, one item per Bundle entry, in entry order."""

    entries: tuple[AppliedEntry, ...]
    #: Versions of other resources that a Patient merge in this Bundle re-pointed to the survivor.
    moved: tuple[AppliedEntry, ...] = ()

    def __iter__(self) -> Iterator[AppliedEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def changed(self) -> bool:
        return bool(self.moved) or any(entry.outcome not in ("unchanged", "superseded") for entry in self.entries)

    @property
    def superseded(self) -> tuple[AppliedEntry, ...]:
        return tuple(entry for entry in self.entries if entry.outcome == "superseded")


@dataclass(frozen=True, slots=True)
class Change:
    """One checked Bundle entry."""

    position: int
    type: str
    id: str
    method: Literal["PUT", "DELETE"]
    resource: dict[str, Any] | None
    content_hash: str
    #: The resource as canonical JSON without the store's meta (b"" for a DELETE): what content_hash hashes.
    body: bytes = b""

    @property
    def key(self) -> tuple[str, str]:
        return self.type, self.id


#: What the store sets in ``meta`` (resource.html#Meta); the rest of meta (security labels, tags,
#: profiles) is content: a message that only changes a confidentiality label makes a new version.
_STORE_META = frozenset({"versionId", "lastUpdated"})


def canonical_json(resource: dict[str, Any]) -> bytes:
    """The resource without the store's ``meta.versionId``/``lastUpdated`` as JSON with sorted keys:
    equal content, equal bytes. (A resource whose meta holds nothing else hashes as it did when the
    whole meta was left out, so stored digests stay valid.)"""
    body = {key: value for key, value in resource.items() if key != "meta"}
    meta = resource.get("meta")
    if meta:
        kept = {key: value for key, value in meta.items() if key not in _STORE_META}
        if kept:
            body["meta"] = kept
    return fhirjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def content_hash(resource: dict[str, Any]) -> str:
    """sha256 of the resource as canonical JSON (sorted keys, without the store's meta): equal content, equal hash."""
    return hashlib.sha256(canonical_json(resource)).hexdigest()


def plan_changes(bundle: Any) -> list[Change]:
    """Check the Bundle and list its changes; every problem raises DeliveryError naming the entry."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise DeliveryError("not a FHIR Bundle")
    if bundle.get("type") != "transaction":
        raise DeliveryError(f"Bundle.type must be 'transaction', got {bundle.get('type')!r}")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise DeliveryError("Bundle.entry must be a list")
    changes: list[Change] = []
    seen: set[tuple[str, str]] = set()
    for position, entry in enumerate(entries):
        change = _check_entry(position, entry)
        if change.key in seen:
            # A transaction must not touch one resource twice (http.html#trules).
            raise DeliveryError(f"Bundle.entry[{position}]: {change.type}/{change.id} appears twice in the transaction")
        seen.add(change.key)
        changes.append(change)
    return changes


def _check_entry(position: int, entry: Any) -> Change:
    where = f"Bundle.entry[{position}]"
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict):
        raise DeliveryError(f"{where}: has no request")
    url, method = request.get("url"), request.get("method")
    match = _REQUEST_URL.fullmatch(url) if isinstance(url, str) else None
    if not match:
        raise DeliveryError(f"{where}: request.url {url!r} is not [type]/[id]")
    resource_type, resource_id = match.groups()
    if method == "DELETE":
        return Change(position, resource_type, resource_id, "DELETE", None, "")
    if method != "PUT":
        raise DeliveryError(f"{where}: request.method {method!r} is not supported (PUT or DELETE)")
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        raise DeliveryError(f"{where}: PUT without a resource")
    if resource.get("resourceType") != resource_type or resource.get("id") != resource_id:
        found = f"{resource.get('resourceType')}/{resource.get('id')}"
        raise DeliveryError(f"{where}: resource {found} does not match request.url {url}")
    try:
        body = canonical_json(resource)
    except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
        raise DeliveryError(f"{where}: resource is not JSON: {exc}") from None
    return Change(position, resource_type, resource_id, "PUT", resource, hashlib.sha256(body).hexdigest(), body)


def stamp(resource: dict[str, Any], version: int, last_updated: str) -> str:
    """The stored JSON: the resource with meta.versionId and meta.lastUpdated set (resource.html#Meta);
    ``last_updated`` comes formatted (a batch formats its one timestamp once)."""
    meta = {"versionId": str(version), "lastUpdated": last_updated}
    kept = resource.get("meta")
    if kept:
        meta.update((k, v) for k, v in kept.items() if k not in ("versionId", "lastUpdated"))
    out: dict[str, Any] = {"resourceType": resource["resourceType"], "id": resource["id"], "meta": meta}
    out.update(resource)
    out["meta"] = meta  # where the stored order puts it: after resourceType and id
    return fhirjson.dumps(out).decode()
