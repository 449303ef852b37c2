"""Patient merges (ADT A40, chapter 3.3.40): references to a merged-away Patient follow it to the survivor.

A Patient whose content links ``replaced-by`` another Patient (patient.html#links: "The patient
resource containing this link must no longer be used") is merged away. The store keeps a row per
merged-away Patient naming the survivor, and then:

* when the merge is written, every stored resource that references the old Patient gets a new
  version pointing at the survivor, in the same transaction (found through the search index, so a
  reference no search parameter indexes is not moved);
* every later write, including a late message that was sent before the merge, has its references
  to the old Patient re-pointed before it is stored, so every arrival order ends in the same state.

References in Provenance, AuditEvent and MessageHeader (what a converted message was about) are
records of the past and are left alone, and so is ``Patient.link`` (it must keep naming the Patient
it links to).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from gateway.db.schema import fhir_search_reference, patient_merge
from gateway.store.search_registry import can_refer_to, indexed_parameters, supported_types

_LOAD = select(patient_merge.c.old_id, patient_merge.c.new_id).where(
    patient_merge.c.old_id.in_(bindparam("ids", expanding=True))
)

#: Types whose references record the past; a merge does not rewrite them.
HISTORICAL_TYPES = frozenset({"Provenance", "AuditEvent", "MessageHeader"})
_MAX_CHAIN = 16
# A relative Patient reference in canonical JSON (orjson writes no spaces).
_PATIENT_REFERENCE = re.compile(rb'"reference":"Patient/([A-Za-z0-9\-.]{1,64})"')


def referenced_patients(body: bytes) -> set[str]:
    """Ids of Patients referenced (relative ``Patient/id``) in a resource's JSON."""
    if b'"reference":"Patient/' not in body:  # most resources: no regex needed
        return set()
    return {match.decode() for match in _PATIENT_REFERENCE.findall(body)}


def merge_target(patient: dict[str, Any]) -> str | None:
    """The survivor a Patient says it was replaced by (Patient.link type replaced-by), or None."""
    for link in patient.get("link") or ():
        if isinstance(link, dict) and link.get("type") == "replaced-by":
            reference = (link.get("other") or {}).get("reference")
            if isinstance(reference, str) and reference.startswith("Patient/"):
                return reference.removeprefix("Patient/")
    return None


class MergeMap:
    """Merged-away Patient id -> surviving id, resolved through chains (A into B, B into C)."""

    def __init__(self, direct: dict[str, str] | None = None):
        self.direct: dict[str, str] = dict(direct or {})

    def load(self, conn: Connection, ids: Iterable[str]) -> None:
        """Read the merges of ``ids`` (and of their survivors, along chains) from the database."""
        wanted = {i for i in ids if i not in self.direct}
        for _ in range(_MAX_CHAIN):
            if not wanted:
                return
            found = {row.old_id: row.new_id for row in conn.execute(_LOAD, {"ids": sorted(wanted)})}
            self.direct.update(found)
            wanted = {new for new in found.values() if new not in self.direct}

    def survivor(self, patient_id: str) -> str | None:
        """Where references to ``patient_id`` must point, or None when it was not merged away."""
        current, seen = patient_id, {patient_id}
        while current in self.direct:
            current = self.direct[current]
            if current in seen:  # a cycle (A into B, B into A): leave references alone
                return None
            seen.add(current)
        return None if current == patient_id else current

    def rewrite(self, resource_type: str, resource: dict[str, Any], referenced: set[str]) -> dict[str, Any] | None:
        """A copy of ``resource`` with references to merged-away Patients re-pointed, or None if none."""
        targets = {old: new for old in referenced if (new := self.survivor(old))}
        if not targets or resource_type in HISTORICAL_TYPES:
            return None
        skip = "link" if resource_type == "Patient" else None
        changed = [False]
        copy = {key: (value if key == skip else _rewrite(value, targets, changed)) for key, value in resource.items()}
        return copy if changed[0] else None


def _rewrite(node: Any, targets: dict[str, str], changed: list[bool]) -> Any:
    if isinstance(node, list):
        return [_rewrite(item, targets, changed) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _rewrite(value, targets, changed) for key, value in node.items()}
    reference = out.get("reference")
    if isinstance(reference, str) and reference.startswith("Patient/"):
        new = targets.get(reference.removeprefix("Patient/"))
        if new is not None:
            out["reference"] = f"Patient/{new}"
            changed[0] = True
    return out


def save(conn: Connection, merged: dict[str, tuple[str, str | None]], unmerged: Iterable[str]) -> None:
    """Record merges (old id -> (survivor, message id)) and forget Patients no longer merged away."""
    gone = sorted(set(unmerged) - set(merged))
    if gone:
        conn.execute(delete(patient_merge).where(patient_merge.c.old_id.in_(gone)))
    if merged:
        dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = dialect_insert(patient_merge)
        stmt = stmt.on_conflict_do_update(
            index_elements=[patient_merge.c.old_id],
            set_={"new_id": stmt.excluded.new_id, "message_id": stmt.excluded.message_id},
        )
        rows = [{"old_id": old, "new_id": new, "message_id": message} for old, (new, message) in sorted(merged.items())]
        conn.execute(stmt, rows)


def referrers(conn: Connection, patient_id: str) -> list[tuple[str, str]]:
    """(type, id) of stored resources whose indexed references point at ``Patient/patient_id``."""
    table, found = fhir_search_reference, set[tuple[str, str]]()
    for resource_type, params in _patient_reference_params():
        stmt = select(table.c.id).where(
            table.c.type == resource_type,
            table.c.param.in_(params),
            table.c.target_id == patient_id,
            table.c.target_type == "Patient",
        )
        found.update((resource_type, row.id) for row in conn.execute(stmt))
    return sorted(found)


def _patient_reference_params() -> list[tuple[str, list[str]]]:
    out = []
    for resource_type in supported_types():
        if resource_type in HISTORICAL_TYPES:
            continue
        names = [
            p.name for p in indexed_parameters(resource_type) if p.kind == "reference" and can_refer_to(p, "Patient")
        ]
        if names:
            out.append((resource_type, names))
    return out
