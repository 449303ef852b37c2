"""Deterministic resource ids: RFC 4122 UUIDv5 of the resource type and a business key.

The same business identifiers always give the same id, so a resent or updated message writes
(``PUT``) the same resources instead of creating new ones. Message files name the key function a
resource uses (``id: patient``); each function returns the business key, or None when the segment
does not carry one (the engine then raises MappingError naming the rule).
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from gateway import fhirjson
from gateway.convert.functions import text_of
from gateway.convert.model.elements import CachedElement, cached
from gateway.convert.model.paths import SourcePath
from gateway.hl7.message import Element, Message, Segment

#: Our namespace for UUIDv5 resource ids. Never change it: every stored id depends on it.
NAMESPACE = uuid.UUID("e2358645-5bb8-4d1d-8236-b3839736ea11")


#: Keys up to this long are cached; a longer one (a junk identifier of a bad message) is not kept.
_CACHED_KEY_CHARS = 256


def resource_id(resource_type: str, key: str) -> str:
    """The UUIDv5 of ``"<type>/<key>"`` (cached: feeds name the same patients and providers again)."""
    if len(key) > _CACHED_KEY_CHARS:
        return _uuid5(resource_type, key)
    return _cached_id(resource_type, key)


def _uuid5(resource_type: str, key: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{resource_type}/{key}"))


_cached_id = functools.lru_cache(maxsize=65536)(_uuid5)


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
#: The fields each key function reads (for the unused-field report).
ID_KEY_FIELDS: dict[str, tuple[str, ...]] = {}


def id_key(*fields: str) -> Callable[[KeyFunction], KeyFunction]:
    """Register a key function under its name; ``fields`` are the fields it reads ("PID-3")."""

    def register(fn: KeyFunction) -> KeyFunction:
        ID_KEYS[fn.__name__] = fn
        ID_KEY_FIELDS[fn.__name__] = fields
        return fn

    return register


def _repetitions(segment: Segment, field: int, message: Message) -> list[Element]:
    """The repetitions of a field, each splitting itself once (the keys read several components)."""
    raw = segment.field_raw(field)
    if not raw:
        return []
    seps = message.separators
    if field <= 2 and segment.name in ("MSH", "FHS", "BHS"):
        return [cached(segment.field(field), seps)]
    return [CachedElement(rep, seps, 0) for rep in raw.split(seps.repetition)]


def _field(segment: Segment, field: int, message: Message) -> Element:
    """The first repetition of a field (empty when absent)."""
    reps = _repetitions(segment, field, message)
    return reps[0] if reps else CachedElement("", message.separators, 0)


def _authority(hd: Element) -> str:
    """An assigning authority or namespace (HD): its namespace id, else its universal id."""
    return text_of(hd[1]) or text_of(hd[2])


def _cx_key(cx: Element) -> str:
    return f"{_authority(cx[4])}|{text_of(cx[1])}"


def normalized_message(message: Message) -> str:
    """The message text with insignificant differences removed (trailing empty fields, spaces)."""
    sep = message.separators.field
    return "\r".join(seg.raw.rstrip().rstrip(sep) for seg in message.segments)


@id_key("PID-2", "PID-3")
def patient(scope: IdScope) -> str | None:
    """PID-3 (chapter 3.4.2.3): the MR-type identifier if any, else the first; key "authority|id".
    v2.3 senders that leave PID-3 empty but fill PID-2 (external id) are keyed on PID-2."""
    pid = scope.segment
    for field in (3, 2):
        reps = [r for r in _repetitions(pid, field, scope.message) if text_of(r[1])]
        if reps:
            chosen = next((r for r in reps if text_of(r[5]) == "MR"), reps[0])
            return _cx_key(chosen)
    return None


@id_key("PV1-19", "PV1-44")
def encounter(scope: IdScope) -> str | None:
    """PV1-19 visit number with its authority; else the patient and PV1-44 admit time; else the
    patient and the PV1 segment's content."""
    pv1 = scope.segment
    visit = _field(pv1, 19, scope.message)
    if text_of(visit[1]):
        return "visit|" + _cx_key(visit)
    patient_id = scope.nearest_id("Patient") or ""
    admitted = text_of(_field(pv1, 44, scope.message))
    if admitted:
        return f"admit|{patient_id}|{admitted}"
    digest = hashlib.sha256(pv1.raw.rstrip().encode()).hexdigest()[:16]
    return f"pv1|{patient_id}|{digest}"


def _ei_key(ei: Element) -> str:
    return f"{text_of(ei[2]) or text_of(ei[3])}|{text_of(ei[1])}"


def _order_key(scope: IdScope, kinds: tuple[tuple[str, int], ...]) -> str | None:
    """The first order number of ``kinds`` (ORC before OBR for each) with its namespace; else the
    patient, the service code OBR-4 and the position."""
    seg = scope.segment
    orc = scope.other_segment("ORC")
    for kind, field in kinds:
        for source in (orc, seg):
            if source is not None:
                number = _field(source, field, scope.message)
                if text_of(number[1]):
                    return f"{kind}|{_ei_key(number)}"
    patient_id = scope.nearest_id("Patient") or ""
    return f"order|{patient_id}|{text_of(_field(seg, 4, scope.message)[1])}|{scope.position}"


@id_key("ORC-2", "ORC-3", "OBR-2", "OBR-3", "OBR-4")
def order(scope: IdScope) -> str | None:
    """The filler order number (ORC-3, else OBR-3) with its namespace, else the placer order number
    (ORC-2, else OBR-2); else the patient, the service code OBR-4 and the position (the filler's
    report: its results always carry the filler's number)."""
    return _order_key(scope, (("filler", 3), ("placer", 2)))


@id_key("ORC-2", "ORC-3", "OBR-2", "OBR-3", "OBR-4")
def request(scope: IdScope) -> str | None:
    """The placer order number (ORC-2, else OBR-2) with its namespace, else the filler order number
    (ORC-3, else OBR-3); else as ``order``: the order an ORM placed with its placer number only is
    the one the ORU answering it (placer and filler numbers) names."""
    return _order_key(scope, (("placer", 2), ("filler", 3)))


@id_key("OBX-1", "OBX-4")
def observation(scope: IdScope) -> str | None:
    """The report (else encounter, else patient) id and the OBX's group, with OBX-1 set id and OBX-4
    sub-id; without a set id, the OBX's position."""
    obx = scope.segment
    context = scope.nearest_id("DiagnosticReport") or scope.nearest_id("Encounter") or scope.nearest_id("Patient") or ""
    place = f"{context}|{scope.group_name}"
    set_id = text_of(_field(obx, 1, scope.message))
    if set_id:
        return f"{place}|{set_id}|{_field(obx, 4, scope.message).value.strip()}"
    return f"{place}|#{scope.position}"


@id_key("MRG-1")
def merged_patient(scope: IdScope) -> str | None:
    """MRG-1 prior patient identifier list (chapter 3.4.9.1), keyed like PID-3: the Patient the
    merge retires is the one an earlier message made from that identifier."""
    mrg = scope.segment
    reps = [r for r in _repetitions(mrg, 1, scope.message) if text_of(r[1])]
    if not reps:
        return None
    chosen = next((r for r in reps if text_of(r[5]) == "MR"), reps[0])
    return _cx_key(chosen)


@id_key()
def care_team(scope: IdScope) -> str | None:
    """The patient's care team (the practitioners its PRT or ROL segments name): one per patient,
    however many segments name members, and the same in every message about the patient."""
    patient_id = scope.nearest_id("Patient")
    return f"care-team|{patient_id}" if patient_id else None


@id_key("MSH-10")
def provenance(scope: IdScope) -> str | None:
    """The sender, MSH-10 control id and a digest of the normalized message."""
    message = scope.message
    digest = hashlib.sha256(normalized_message(message).encode()).hexdigest()[:32]
    return f"{message.sender}|{message.control_id}|{digest}"


@id_key()
def order_specimen(scope: IdScope) -> str | None:
    """The specimen an OBR describes (OBR-15, no SPM): one per order, keyed on the id of the order's
    ServiceRequest (so it follows whatever keys the order)."""
    order_id = scope.nearest_id("ServiceRequest")
    return f"obr|{order_id}" if order_id else None


class _OnSegment:
    """An IdScope for another segment than the resource's own: the OBR of an OBX, or a parent order
    written as an OBR (``alone``: it has no ORC or other segments beside it)."""

    def __init__(self, scope: IdScope, segment: Segment, alone: bool = False):
        self.message, self.segment, self.position = scope.message, segment, scope.position
        self.group_name = scope.group_name
        self._scope, self._alone = scope, alone

    def other_segment(self, name: str) -> Segment | None:
        if name == self.segment.name:
            return self.segment
        return None if self._alone else self._scope.other_segment(name)

    def nearest_id(self, resource_type: str) -> str | None:
        return self._scope.nearest_id(resource_type)


def _result_order_key(scope: IdScope, obr: Segment) -> str | None:
    """The key the results' order function (``order``, filler first: the DiagnosticReport's id) gives
    that OBR; a child's OBR-29 and its parent are matched on it."""
    return ID_KEYS["order"](_OnSegment(scope, obr))


def _parent_order_key(scope: IdScope, obr: Segment) -> str | None:
    """The key of the parent order OBR-29 names (EIP: placer EI ^ filler EI; chapter 4.5.3.29),
    computed by the order's own id function on the parent's numbers, as the parent keys itself."""
    parent = _field(obr, 29, scope.message)
    placer, filler = parent[1], parent[2]
    if not text_of(placer[1]) and not text_of(filler[1]):
        return None
    seps = scope.message.separators
    as_ei = [rep.value.replace(seps.subcomponent, seps.component) for rep in (placer, filler)]
    virtual = Segment(seps.field.join(["OBR", "", *as_ei]), seps)
    return ID_KEYS["order"](_OnSegment(scope, virtual, alone=True))


@id_key("OBR-29")
def parent_order(scope: IdScope) -> str | None:
    """(For a reference by key) the key of the parent order an OBR names in OBR-29."""
    return _parent_order_key(scope, scope.segment)


@id_key("OBR-26", "OBR-29")
def parent_result(scope: IdScope) -> str | None:
    """(For a reference by key, on an OBX) the parent result its OBR names: the parent order
    (OBR-29) with OBR-26's observation identifier and sub-id (PRL.1.1, PRL.2)."""
    obr = scope.other_segment("OBR")
    if obr is None:
        return None
    parent = _parent_order_key(scope, obr)
    result = _field(obr, 26, scope.message)
    code = text_of(result[1][1])
    if parent is None or not code:
        return None
    return f"{parent}|{code}|{text_of(result[2])}"


@id_key("OBX-3", "OBX-4")
def result_code(scope: IdScope) -> str | None:
    """(For a reference by key, on an OBX) its order's key with OBX-3's code and OBX-4 sub-id: what
    a child order's OBR-26 and OBR-29 name."""
    obr = scope.other_segment("OBR")
    code = text_of(_field(scope.segment, 3, scope.message)[1])
    order_key = _result_order_key(scope, obr) if obr is not None else None
    if order_key is None or not code:
        return None
    return f"{order_key}|{code}|{text_of(_field(scope.segment, 4, scope.message))}"


@id_key("MSH-10")
def message(scope: IdScope) -> str | None:
    """The message's own resources besides the Provenance (its MessageHeader): the Provenance's key."""
    return provenance(scope)


@id_key("MSH-10", "ORC-2", "ORC-3")
def order_provenance(scope: IdScope) -> str | None:
    """The Provenance of an order in a message (IG ORC[Provenance]): the message's Provenance key
    with the ORC's order number (placer, else filler), else the ORC's position in the message."""
    orc = scope.segment
    for kind, field in (("placer", 2), ("filler", 3)):
        number = _field(orc, field, scope.message)
        if text_of(number[1]):
            return f"{provenance(scope)}|{kind}|{_ei_key(number)}"
    return f"{provenance(scope)}|#{scope.position}"


def identifier_key(element: Element) -> str:
    """The key of a business identifier (CX, EI): its first four components, which hold the id and
    who assigned it (CX.4 authority; EI.2-4 namespace, universal id and its type)."""
    if not text_of(element[1]):
        return ""
    return "|".join(element[n].value.strip() for n in (1, 2, 3, 4)).rstrip("|")


def declared_key(
    identifiers: tuple[SourcePath, ...], within: tuple[str, ...], fields: tuple[SourcePath, ...]
) -> KeyFunction:
    """A key declared in a message map (``id: {identifier: [...], within: [Encounter, Patient],
    fields: [...]}``): the first valued business identifier; else the id of the nearest resource of
    the first ``within`` type found, with the text of ``fields`` (the resource's natural key); else
    that id and the position."""

    def key(scope: IdScope) -> str | None:
        for path in identifiers:
            seg = scope.other_segment(path.segment or "")
            if seg is None:
                continue
            for rep in _repetitions(seg, path.field, scope.message):
                found = identifier_key(path.pick(rep) if path.positions else rep)
                if found:
                    return f"id|{found}"
        context = next((found for found in map(scope.nearest_id, within) if found), "")
        parts = []
        for path in fields:
            seg = scope.other_segment(path.segment or "")
            parts.append(path.pick(_field(seg, path.field, scope.message)).value.strip() if seg is not None else "")
        if any(parts):
            return f"{context}|{scope.group_name}|" + "|".join(parts)
        return f"{context}|{scope.group_name}|#{scope.position}"

    return key


# --- ids of resources the datatype maps make (a Practitioner from an XCN) --------------------------

MadeKey = Callable[[dict[str, Any]], str]
MADE_KEYS: dict[str, MadeKey] = {}


def _content_key(resource: dict[str, Any]) -> str:
    return (
        "content|"
        + hashlib.sha256(orjson.dumps(resource, default=fhirjson.as_float, option=orjson.OPT_SORT_KEYS)).hexdigest()[
            :32
        ]
    )


def _identifier_key(resource: dict[str, Any]) -> str:
    """The first identifier with a value ("system|value"), else the content."""
    for identifier in resource.get("identifier") or ():
        if identifier.get("value"):
            return f"identifier|{identifier.get('system', '')}|{identifier['value']}"
    return _content_key(resource)


MADE_KEYS["identifier"] = _identifier_key
MADE_KEYS["content"] = _content_key
