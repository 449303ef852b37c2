"""Named builders: functions that make a FHIR value from a v2 element (``function: name`` in a rule,
or a datatype map implemented in Python, e.g. ``CWE[CodeableConcept]``). Each has the signature
``(element, context, table) -> value | None`` and is registered by the ``@builder`` decorator.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from gateway.convert.functions.registry import builder
from gateway.convert.functions.text import oid_to_urn, text_of, to_decimal, uri, uuid_to_urn
from gateway.convert.model.context import Context
from gateway.convert.model.tables import Table
from gateway.hl7.message import Element, Segment


def as_code(text: str) -> str:
    """A FHIR ``code``: no leading, trailing or repeated whitespace (R4 datatypes, code)."""
    return " ".join(text.split())


def _coding(code: str, display: str, system: str | None, version: str = "") -> dict[str, str] | None:
    code = as_code(code)
    if not code:
        return None
    coding: dict[str, str] = {}
    if system:
        coding["system"] = system
        if version:  # a version means nothing without the system it versions
            coding["version"] = version
    coding["code"] = code
    if display:
        coding["display"] = display
    return coding


def _cwe_codings(element: Element, ctx: Context, table: Table | None) -> list[dict[str, str]]:
    """The codings a CWE/CE/CNE carries (chapter 2A.13): triplets 1-3, 4-6, 10-12; a table's FHIR
    coding comes first when the primary code is in it."""
    codings: list[dict[str, str]] = []
    for code_at, version_at in ((1, 7), (4, 8), (10, 13)):
        code = text_of(element[code_at])
        if not code:
            continue
        name = text_of(element[code_at + 2])
        system = ctx.systems.system(name)
        if system is None and not name and table is not None:
            system = table.v2_system  # the field's table when the sender named none
        if table is not None and code_at == 1:
            mapped = table.lookup(code)
            if mapped is not None:
                codings.append(dict(mapped))
            elif name:
                ctx.note(f"code {code!r} ({name}) is not in table {table.name}; kept as sent")
        coding = _coding(code, text_of(element[code_at + 1]), system, text_of(element[version_at]))
        if coding is not None and not any(
            c.get("system") == coding.get("system") and c["code"] == coding["code"] for c in codings
        ):
            codings.append(coding)
    return codings


@builder
def codeable_concept(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """CWE/CE/CNE/CF/IS/ID -> CodeableConcept (IG CWE[CodeableConcept]); text from CWE.9, or the
    display when nothing else names the concept."""
    if not element:
        return None
    concept: dict[str, Any] = {}
    codings = _cwe_codings(element, ctx, table)
    if codings:
        concept["coding"] = codings
    text = text_of(element[9])
    if not text and not codings:
        text = text_of(element[2])
    if text:
        concept["text"] = text
    return concept or None


#: "No known allergies" as senders write it in AL1-3 (code or text) -> the SNOMED CT situation.
_NO_KNOWN_ALLERGY = {
    "NKA": ("716186003", "No known allergy"),
    "NOKNOWNALLERGIES": ("716186003", "No known allergy"),
    "NKDA": ("409137002", "No known drug allergy"),
    "NOKNOWNDRUGALLERGIES": ("409137002", "No known drug allergy"),
    "NKFA": ("429625007", "No known food allergy"),
}


@builder
def allergen(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """AL1-3 -> AllergyIntolerance.code (IG CWE[CodeableConcept]); "no known allergies" (NKA, NKDA,
    as the code or only as the text) is the SNOMED CT no-known-allergy situation, with what was
    sent, not an allergy to a substance called "NKA"."""
    concept: dict[str, Any] | None = codeable_concept(element, ctx, table)
    if concept is None or element is None:
        return concept
    said = (text_of(element[1]) or text_of(element[2])).upper().replace(" ", "")
    known = _NO_KNOWN_ALLERGY.get(said)
    if known is None:
        return concept
    code, display = known
    snomed = {"system": "http://snomed.info/sct", "code": code, "display": display}
    return {**concept, "coding": [snomed, *concept.get("coding", [])], "text": concept.get("text") or display}


@builder
def identifier_system(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """An assigning authority (HD) as Identifier.system (IG CX[Identifier] CX.4): its universal id
    (HD.2 of type ISO, UUID or URI) as the canonical URI ``table`` knows for it (the SSN's OID is
    http://hl7.org/fhir/sid/us-ssn), else as urn:oid/urn:uuid/the URI; else its namespace id
    (HD.1) as ``table`` maps it (a site's local namespaces), as sent when it is a URI, else under
    the base URI the table's ``*`` line gives (the namespace percent-encoded): an identifier whose
    sender names its namespace never lacks a system."""
    if not element:
        return None
    universal, kind, namespace = text_of(element[2]), text_of(element[3]), text_of(element[1])

    def known(key: str) -> dict[str, str] | None:
        return table.lookup(key) if table is not None else None

    if universal and kind in ("ISO", "UUID", "URI"):
        mapped = known(universal)
        if mapped is not None:
            return mapped["code"]
        as_uri: str | None = {"ISO": oid_to_urn, "UUID": uuid_to_urn, "URI": uri}[kind](universal)
        if as_uri is not None:
            return as_uri
    if namespace:
        mapped = known(namespace)
        if mapped is not None:
            return mapped["code"]
        as_sent: str | None = uri(namespace)
        if as_sent is not None:
            return as_sent
        base = known("*")
        return base["code"] + quote(namespace, safe="") if base is not None else None
    return None


@builder
def coding(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """CWE -> Coding (IG CWE[Coding]): the table's FHIR coding, else the code as sent."""
    if not element:
        return None
    codings = _cwe_codings(element, ctx, table)
    return codings[0] if codings else None


@builder
def code(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """CWE/ID -> code (IG CWE[code]). A required-binding code cannot carry a foreign system, so an
    unmapped code is dropped (and noted) rather than replaced by an invented one."""
    value = text_of(element[1]) if element else ""
    if not value and element:
        value = text_of(element[4])
    value = as_code(value)
    if not value:
        return None
    if table is None:
        return value
    mapped = table.lookup(value)
    if mapped is None:
        ctx.note(f"code {value!r} is not in table {table.name}; element left out")
        return None
    return mapped["code"]


@builder
def boolean(element: Element | None, ctx: Context, table: Table | None) -> bool | None:
    """ID -> boolean through a yes/no table (IG ID[boolean], table 0136)."""
    value = code(element, ctx, table)
    return {"true": True, "false": False}.get(value or "")


@builder
def text(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """ST/TX/FT -> string: the whole value as written (separators a sender failed to escape are
    kept as text), escape sequences decoded, ``\\.br\\`` as a line break."""
    value = element.value.strip() if element else ""
    return value or None


_SN_COMPARATORS = {"<": "<", ">": ">", "<=": "<=", ">=": ">="}
_SN_LEADING = re.compile(r"^(<=|>=|<|>|=)\s*(.*)$")


@builder
def structured_numeric(element: Element | None, ctx: Context, table: Table | None) -> tuple[str, Any] | None:
    """SN (chapter 2A.71) -> Quantity with comparator, Range (``-``), Ratio (``:`` or ``/``), or a
    string for what FHIR cannot hold (``<>``, ``+``), per IG OBX[Observation] OBX-5 rows."""
    if not element:
        return None
    comparator, num1, separator, num2 = (text_of(element[i]) for i in (1, 2, 3, 4))
    if comparator and not num1 and not separator:
        # Sent as "<0.10" in one component: read the comparator off the front.
        m = _SN_LEADING.match(comparator)
        if m and to_decimal(m.group(2)) is not None:
            comparator, num1 = m.group(1), m.group(2)
        elif to_decimal(comparator) is not None:
            comparator, num1 = "", comparator
    first, second = to_decimal(num1), to_decimal(num2)
    written = " ".join(p for p in (comparator, num1, separator, num2) if p)
    if comparator == "<>" or separator == "+" or (num1 and first is None) or (num2 and second is None):
        return ("String", written) if written else None
    if separator in (":", "/"):
        if first is None or second is None:
            return ("String", written) if written else None
        numerator: dict[str, Any] = {"value": first}
        if comparator in _SN_COMPARATORS:
            numerator["comparator"] = _SN_COMPARATORS[comparator]
        return "Ratio", {"numerator": numerator, "denominator": {"value": second}}
    if separator == "-":
        low_high = {k: {"value": v} for k, v in (("low", first), ("high", second)) if v is not None}
        return ("Range", low_high) if low_high else None
    if separator or first is None:
        return ("String", written) if written else None
    quantity: dict[str, Any] = {"value": first}
    if comparator in _SN_COMPARATORS:
        quantity["comparator"] = _SN_COMPARATORS[comparator]
    return "Quantity", quantity


@builder
def numeric_value(element: Element | None, ctx: Context, table: Table | None) -> tuple[str, Any] | None:
    """NM (chapter 2A.47) as a Quantity; a leading comparator, as senders write it (``>60``,
    ``<=0.5``), becomes the Quantity's comparator. Anything else is no number: None (the caller
    keeps the text and notes it)."""
    text = text_of(element)
    m = _SN_LEADING.match(text)
    comparator, number = (m.group(1), m.group(2)) if m else ("", text)
    value = to_decimal(number)
    if value is None:
        return None
    quantity: dict[str, Any] = {"value": value}
    if comparator in _SN_COMPARATORS:
        quantity["comparator"] = _SN_COMPARATORS[comparator]
    return "Quantity", quantity


@builder
def telecom_value(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """ContactPoint.value from an XTN (IG XTN[ContactPoint] XTN.1/4/5/6/7/8/12 rows)."""
    if not element:
        return None
    equipment = text_of(element[3])
    email = text_of(element[4])
    if equipment in ("Internet", "X.400"):
        return email or None
    unformatted = text_of(element[12])
    if unformatted:
        return unformatted
    local = text_of(element[7])
    if local:
        country, area, extension = text_of(element[5]), text_of(element[6]), text_of(element[8])
        number = " ".join(p for p in (f"+{country}" if country else "", area, local) if p)
        return number + (f" X{extension}" if extension else "")
    return text_of(element[1]) or email or None


def _name_text(element: Element | None, first: int) -> str | None:
    if not element:
        return None
    parts = [text_of(element[first + i]) for i in (4, 1, 2, 0, 3)]  # prefix given middle family suffix
    return " ".join(p for p in parts if p) or None


@builder
def person_name_text(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """A display name from an XPN (family at XPN.1)."""
    return _name_text(element, 1)


@builder
def practitioner_name_text(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """A display name from an XCN (the name starts at XCN.2; XCN.1 is the person's id)."""
    return _name_text(element, 2)


@builder(reads="segment", fields=("OBX-6",))
def reference_range(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """OBX-7 -> Observation.referenceRange: the text as sent (IG), plus low/high for ``a-b`` or
    ``>a``/``<b`` with OBX-6's unit."""
    raw = element.value.strip() if element else ""
    if not raw:
        return None
    ranged: dict[str, Any] = {}
    unit = _unit(ctx)
    m = re.fullmatch(r"\s*([+-]?[\d.]+)\s*-\s*([+-]?[\d.]+)\s*", raw)
    bounds: list[tuple[str, str]] = []
    if m:
        bounds = [("low", m.group(1)), ("high", m.group(2))]
    elif raw[:1] in "<>" and not raw.startswith(("<=", ">=")):
        bounds = [("high" if raw[0] == "<" else "low", raw[1:].strip())]
    for name, number in bounds:
        value = to_decimal(number)
        if value is not None:
            ranged[name] = {"value": value, **unit}
    ranged["text"] = raw
    return ranged


def _unit(ctx: Context) -> dict[str, str]:
    obx = ctx.segment
    if obx is None or obx.name != "OBX":
        return {}
    return quantity_unit(obx.field(6), ctx, None) or {}


@builder
def quantity_unit(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """CWE units -> Quantity unit/system/code (IG CWE[Quantity]); UCUM when CWE.3 says so."""
    if not element:
        return None
    code_, display, name = text_of(element[1]), text_of(element[2]), text_of(element[3])
    unit: dict[str, str] = {}
    if display or code_:
        unit["unit"] = display or code_
    system = ctx.systems.system(name) if name else None
    if code_ and system:
        unit["system"] = system
        unit["code"] = as_code(code_)
    return unit or None


# --- the source message (Provenance, IG MSH[Provenance-Source] and MSH[Provenance-Transformation]) --

#: entity.what.identifier.system of the Provenance naming the v2 message; value "<sender>|<MSH-10>".
MESSAGE_SYSTEM = "urn:hl7gw:message"
_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_V2_TO_FHIR_ACTIVITY = "http://hl7.org/fhir/uv/v2mappings/CodeSystem/provenance-activity-type-v2-to-fhir"


def _header(ctx: Context) -> Segment | None:
    """The MSH being mapped: these builders read only it, so the MSH map can be memoized."""
    seg = ctx.segment
    return seg if seg is not None and seg.name == "MSH" else None


def _message_type(msh: Segment) -> str:
    msg = msh.field(9)
    return "^".join(p for p in (msg[1].value, msg[2].value, msg[3].value) if p)


def _sender(msh: Segment) -> str:
    # The same "application|facility" as Message.sender and Envelope.sender.
    return f"{msh.field(3)[1].value}|{msh.field(4)[1].value}"


@builder(reads="segment", fields=("MSH-3", "MSH-4", "MSH-9", "MSH-10"))
def source_message_entity(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """Provenance.entity: the v2 message (role source), named by sender and MSH-10 control id."""
    msh = _header(ctx)
    if msh is None:
        return None
    sender, control_id = _sender(msh), msh.get(10)
    value = f"{sender}|{control_id}"
    display = f"HL7 v2 message {_message_type(msh)} {control_id} from {sender}"
    return {"role": "source", "what": {"identifier": {"system": MESSAGE_SYSTEM, "value": value}, "display": display}}


@builder(reads="segment", fields=("MSH-3", "MSH-4", "MSH-9", "MSH-10"))
def sender_agent(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """Provenance.agent: the sending facility MSH-4 (else application MSH-3) as author."""
    msh = _header(ctx)
    if msh is None:
        return None
    hd = msh.field(4) if msh.field(4) else msh.field(3)
    name, universal_id, id_type = text_of(hd[1]), text_of(hd[2]), text_of(hd[3])
    who: dict[str, Any] = {}
    if universal_id and id_type in ("ISO", "UUID"):
        urn = oid_to_urn(universal_id) if id_type == "ISO" else uuid_to_urn(universal_id)
        if urn:
            who["identifier"] = {"system": "urn:ietf:rfc:3986", "value": urn}
    who["display"] = name or universal_id or "unknown sender"
    agent_type = {"coding": [{"system": _PARTICIPANT_TYPE, "code": "author", "display": "Author"}]}
    return {"type": agent_type, "who": who}


@builder(reads="segment", fields=("MSH-3", "MSH-4", "MSH-9", "MSH-10"))
def message_activity(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """Provenance.activity: a v2-to-FHIR transformation of the message type in MSH-9."""
    msh = _header(ctx)
    if msh is None:
        return None
    coding = {"system": _V2_TO_FHIR_ACTIVITY, "code": "v2-fhir-transformation", "display": "v2 to FHIR transformation"}
    return {"coding": [coding], "text": f"message - {_message_type(msh)}"}


@builder
def coded_text(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """CWE -> string (IG CWE[string]): the original text CWE.9, else the text CWE.2, else the code."""
    if not element:
        return None
    return text_of(element[9]) or text_of(element[2]) or text_of(element[1]) or None


@builder
def coded_identifier(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """CWE -> Identifier (IG CWE[Identifier]): the code as value, its coding system as system."""
    if not element:
        return None
    value = text_of(element[1])
    if not value:
        return None
    identifier: dict[str, Any] = {}
    system = ctx.systems.system(text_of(element[3]))
    if system:
        identifier["system"] = system
    identifier["value"] = value
    return identifier
