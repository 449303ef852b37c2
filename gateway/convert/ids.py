"""Deterministic resource ids: RFC 4122 UUIDv5 of the resource type and a business key.

The same business identifiers always give the same id, so a resent or updated message writes
(``PUT``) the same resources instead of creating new ones. Message files name the key function a
resource uses (``id: patient``); each function returns the business key, or None when the segment
does not carry one (the engine then raises MappingError naming the rule).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Callable, Protocol

from gateway.convert.functions import text_of
from gateway.hl7.message import Element, Message, Segment

#: Our namespace for UUIDv5 resource ids. Never change it: every stored id depends on it.
NAMESPACE = uuid.UUID("e2358645-5bb8-4d1d-8236-b3839736ea11")


def resource_id(resource_type: str, key: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{resource_type}/{key}"))


class IdScope(Protocol):
    """What a key function may look at."""

    message: Message
    segment: Segment
    #: 1-based position of this resource among those the same rule made in this message.
    position: int
    #: The group the segment sits in (e.g. OBSERVATION, SPECIMEN_OBSERVATION).
    group_name: str

    def other_segment(self, name: str) -> Segment | None: ...

    def nearest_id(self, resource_type: str) -> str | None:
        """The id of the nearest resource of that type (same group, then enclosing groups)."""
        ...


KeyFunction = Callable[[IdScope], "str | None"]
ID_KEYS: dict[str, KeyFunction] = {}


def id_key(fn: KeyFunction) -> KeyFunction:
    ID_KEYS[fn.__name__] = fn
    return fn


def _authority(hd: Element) -> str:
    """An assigning authority or namespace (HD): its namespace id, else its universal id."""
    return text_of(hd[1]) or text_of(hd[2])


def _cx_key(cx: Element) -> str:
    return f"{_authority(cx[4])}|{text_of(cx[1])}"


def normalized_message(message: Message) -> str:
    """The message text with insignificant differences removed (trailing empty fields, spaces)."""
    sep = message.separators.field
    return "\r".join(seg.raw.rstrip().rstrip(sep) for seg in message.segments)


@id_key
def patient(scope: IdScope) -> str | None:
    """PID-3 (chapter 3.4.2.3): the MR-type identifier if any, else the first; key "authority|id".
    v2.3 senders that leave PID-3 empty but fill PID-2 (external id) are keyed on PID-2."""
    pid = scope.segment
    for field in (3, 2):
        reps = [r for r in pid.repetitions(field) if text_of(r[1])]
        if reps:
            chosen = next((r for r in reps if text_of(r[5]) == "MR"), reps[0])
            return _cx_key(chosen)
    return None


@id_key
def encounter(scope: IdScope) -> str | None:
    """PV1-19 visit number with its authority; else the patient and PV1-44 admit time; else the
    patient and the PV1 segment's content."""
    pv1 = scope.segment
    visit = pv1.field(19)
    if text_of(visit[1]):
        return "visit|" + _cx_key(visit)
    patient_id = scope.nearest_id("Patient") or ""
    admitted = text_of(pv1.field(44))
    if admitted:
        return f"admit|{patient_id}|{admitted}"
    digest = hashlib.sha256(pv1.raw.rstrip().encode()).hexdigest()[:16]
    return f"pv1|{patient_id}|{digest}"


def _ei_key(ei: Element) -> str:
    return f"{text_of(ei[2]) or text_of(ei[3])}|{text_of(ei[1])}"


@id_key
def order(scope: IdScope) -> str | None:
    """The filler order number (ORC-3, else OBR-3) with its namespace, else the placer order number
    (ORC-2, else OBR-2); else the patient, the service code OBR-4 and the position."""
    seg = scope.segment
    orc = scope.other_segment("ORC")
    for kind, field in (("filler", 3), ("placer", 2)):
        for source in (orc, seg):
            if source is not None and text_of(source.field(field)[1]):
                return f"{kind}|{_ei_key(source.field(field))}"
    patient_id = scope.nearest_id("Patient") or ""
    return f"order|{patient_id}|{text_of(seg.field(4)[1])}|{scope.position}"


@id_key
def observation(scope: IdScope) -> str | None:
    """The report (else encounter, else patient) id and the OBX's group, with OBX-1 set id and OBX-4
    sub-id; without a set id, the OBX's position."""
    obx = scope.segment
    context = (
        scope.nearest_id("DiagnosticReport") or scope.nearest_id("Encounter") or scope.nearest_id("Patient") or ""
    )
    place = f"{context}|{scope.group_name}"
    set_id = text_of(obx.field(1))
    if set_id:
        return f"{place}|{set_id}|{obx.field(4).value.strip()}"
    return f"{place}|#{scope.position}"


@id_key
def provenance(scope: IdScope) -> str | None:
    """The sender, MSH-10 control id and a digest of the normalized message."""
    message = scope.message
    digest = hashlib.sha256(normalized_message(message).encode()).hexdigest()[:32]
    return f"{message.sender}|{message.control_id}|{digest}"
