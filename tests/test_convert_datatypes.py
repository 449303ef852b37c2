"""Datatype conversions, tested on generated input: timestamps, escaped text, numbers, grouping."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import fhirjson
from gateway.convert.functions import to_decimal
from gateway.convert.functions.builders import structured_numeric
from gateway.convert.functions.builders_values import composite_quantity, encapsulated_attachment, tm_to_time
from gateway.convert.model.context import Context
from gateway.convert.model.elements import CachedElement
from gateway.convert.model.mapping_errors import PathError
from gateway.convert.model.paths import compile_writer, parse_target
from gateway.convert.model.structure import build_slot, group_segments
from gateway.errors import MappingError
from gateway.hl7 import dtm
from gateway.hl7.escape import DEFAULT_SEPARATORS, escape
from gateway.hl7.message import Element, parse
from gateway.validate import validate_bundle
from tests.support.convert import MSH_ADT, PV1, converter, message, only, segment

# The FHIR R4 primitive patterns (http://hl7.org/fhir/R4/datatypes.html).
FHIR_DATE = re.compile(
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$"
)
FHIR_DATETIME = re.compile(
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?)?)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)?)?)?$"
)
FHIR_INSTANT = re.compile(
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$"
)

EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def dtms(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid DTM and its parts; every precision from year to fraction, with or without offset."""
    parts: dict[str, Any] = {"year": draw(st.integers(1, 9999))}
    depth = draw(st.integers(0, 6))
    text = f"{parts['year']:04d}"
    if depth >= 1:
        parts["month"] = draw(st.integers(1, 12))
        text += f"{parts['month']:02d}"
    if depth >= 2:
        parts["day"] = draw(st.integers(1, 28))
        text += f"{parts['day']:02d}"
    for name, limit, level in (("hour", 23, 3), ("minute", 59, 4), ("second", 59, 5)):
        if depth >= level:
            parts[name] = draw(st.integers(0, limit))
            text += f"{parts[name]:02d}"
    if depth >= 6:
        parts["fraction"] = draw(st.from_regex(r"\A[0-9]{1,4}\Z"))
        text += "." + parts["fraction"]
    if draw(st.booleans()):
        hours, minutes = draw(st.integers(0, 13)), draw(st.sampled_from([0, 15, 30, 45]))
        sign = draw(st.sampled_from("+-"))
        parts["offset"] = f"{sign}{hours:02d}:{minutes:02d}"
        text += f"{sign}{hours:02d}{minutes:02d}"
    return text, parts


@EXAMPLES
@given(dtms())
def test_dtm_to_fhir_keeps_what_fhir_can_hold(case: tuple[str, dict[str, Any]]) -> None:
    text, parts = case
    date = dtm.to_date(text)
    assert date is not None and FHIR_DATE.match(date)
    assert date == "-".join(f"{parts[k]:0{4 if k == 'year' else 2}d}" for k in ("year", "month", "day") if k in parts)
    value = dtm.to_datetime(text)
    assert value is not None and FHIR_DATETIME.match(value)
    if "hour" in parts and "offset" in parts:
        # The time survives with its zone, minutes and seconds padded, the fraction kept.
        assert value.startswith(f"{date}T{parts['hour']:02d}:{parts.get('minute', 0):02d}:{parts.get('second', 0):02d}")
        assert value.endswith(parts["offset"])
        if "fraction" in parts:
            assert f".{parts['fraction']}" in value
    else:
        assert value == date  # no zone: the date alone (docs/mappings.md)
    instant = dtm.to_instant(text)
    if "day" in parts and "offset" in parts:
        assert instant is not None and FHIR_INSTANT.match(instant)
    else:
        assert instant is None
    utc = dtm.to_instant_assume_utc(text)
    assert (utc is None) == ("day" not in parts)
    assert utc is None or FHIR_INSTANT.match(utc)


@EXAMPLES
@given(st.text(max_size=30))
def test_dtm_garbage_is_none_or_valid(text: str) -> None:
    for fn, pattern in ((dtm.to_date, FHIR_DATE), (dtm.to_datetime, FHIR_DATETIME), (dtm.to_instant, FHIR_INSTANT)):
        value = fn(text)
        assert value is None or pattern.match(value)


def test_dtm_edges() -> None:
    assert dtm.to_date("20230229") is None  # not a leap year
    assert dtm.to_date("20240229") == "2024-02-29"
    assert dtm.to_datetime("202401011230+1500") is None  # offset beyond +14:00
    assert dtm.to_datetime("2024010112+0000") == "2024-01-01T12:00:00+00:00"
    assert dtm.to_datetime("20240101123045.1234-0500") == "2024-01-01T12:30:45.1234-05:00"
    assert dtm.to_datetime("202401") == "2024-01"
    assert dtm.to_datetime_with_time("20240101") is None
    assert dtm.to_date("0000") is None and dtm.to_date("2024-01-01") is None


ZONES = st.sampled_from(["Europe/Berlin", "America/Chicago", "Asia/Kolkata", "Pacific/Chatham", "UTC"])


@EXAMPLES
@given(dtms(), ZONES)
def test_dtm_in_a_sender_time_zone(case: tuple[str, dict[str, Any]], zone: str) -> None:
    """With HL7GW_DEFAULT_TZ: a time without offset gets the zone's offset at that local time; an
    offset sent is kept; a date stays a date."""
    text, parts = case
    tz = ZoneInfo(zone)
    value = dtm.to_datetime(text, tz)
    assert value is not None and FHIR_DATETIME.match(value)
    if "hour" not in parts or "day" not in parts:
        assert "T" not in value
        return
    if "offset" in parts:
        assert value.endswith(parts["offset"])
        return
    local = datetime(
        parts["year"], parts["month"], parts["day"], parts["hour"], parts.get("minute", 0), parts.get("second", 0)
    )
    offset = tz.utcoffset(local)
    assert offset is not None
    minutes = int(offset.total_seconds()) // 60
    assert value.endswith(f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}")
    instant = dtm.to_instant(text, tz)
    assert instant is not None and FHIR_INSTANT.match(instant) and instant[-6:] == value[-6:]


@EXAMPLES
@given(
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.from_regex(r"\A(\.[0-9]{1,4})?\Z"),
    st.sampled_from(["", "+0100", "-0500"]),
)
def test_tm_to_fhir_time(hour: int, minute: int, second: int, fraction: str, offset: str) -> None:
    value = tm_to_time(f"{hour:02d}{minute:02d}{second:02d}{fraction}{offset}")
    assert value == f"{hour:02d}:{minute:02d}:{second:02d}{fraction}"  # FHIR time has no zone
    assert tm_to_time(f"{hour:02d}") == f"{hour:02d}:00:00"
    assert tm_to_time("2460") is None and tm_to_time("noon") is None


@EXAMPLES
@given(st.binary(max_size=64), st.sampled_from(["Base64", "Hex", "A"]))
def test_encapsulated_data_becomes_base64(data: bytes, encoding: str) -> None:
    """ED (chapter 2A.24) data in any of its encodings becomes the Attachment's base64 data."""
    if encoding == "Base64":
        raw = base64.b64encode(data).decode()
    elif encoding == "Hex":
        raw = data.hex().upper()
    else:
        data = data.decode("latin-1").encode("utf-8")
        raw = data.decode("utf-8")
    esc = escape(raw, DEFAULT_SEPARATORS)
    element = CachedElement(f"^AP^PDF^{encoding}^{esc}", DEFAULT_SEPARATORS, 0)
    ctx = Context(parse("MSH|^~\\&|A"), converter().mappings.systems)
    attachment = encapsulated_attachment(element, ctx, None)
    if not data:
        assert attachment == {"contentType": "application/pdf"}
        return
    assert attachment is not None and attachment["contentType"] == "application/pdf"
    assert base64.b64decode(attachment["data"]) == data


def test_encapsulated_data_that_is_not_what_it_says_is_left_out() -> None:
    ctx = Context(parse("MSH|^~\\&|A"), converter().mappings.systems)
    attachment = encapsulated_attachment(
        CachedElement("^AP^PDF^Base64^<Base64 encoded>", DEFAULT_SEPARATORS, 0), ctx, None
    )
    assert attachment == {"contentType": "application/pdf"}
    assert ctx.notes and "could not be read" in ctx.notes[0]


def test_composite_quantity_and_z_segments() -> None:
    ctx = Context(parse("MSH|^~\\&|A"), converter().mappings.systems)
    cq = composite_quantity(CachedElement("2^mL&milliliter&UCUM", DEFAULT_SEPARATORS, 0), ctx, None)
    assert cq == {"value": 2, "unit": "milliliter", "system": "http://unitsofmeasure.org", "code": "mL"}
    # A Z-segment joins the group of the segment before it (chapter 2.8), so a site map can include it.
    msg = parse("\r".join(["MSH|^~\\&|A", "PID|1", "OBR|1", "ZBR|x", "OBX|1", "ZBX|y"]))
    root, unplaced = group_segments(STRUCTURE, msg.segments)
    assert not unplaced
    assert [(seg.name, group.name) for seg, group in root.walk()][-3:] == [
        ("ZBR", "ORDER"),
        ("OBX", "OBS"),
        ("ZBX", "OBS"),
    ]


# --- text that needs escaping never crashes the converter nor yields empty strings -----------------

ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("|^~\\&#"), max_size=20)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


@EXAMPLES
@given(ANY_TEXT, ANY_TEXT, ANY_TEXT, ANY_TEXT)
def test_escaped_identifiers_and_names_survive(value: str, authority: str, family: str, given_name: str) -> None:
    esc = lambda text: escape(text, DEFAULT_SEPARATORS)  # noqa: E731
    cx = f"{esc(value)}^^^{esc(authority)}^MR"
    pid = segment("PID", {3: cx, 5: f"{esc(family)}^{esc(given_name)}", 8: "F"})
    try:
        bundle = converter().convert(message(MSH_ADT, pid, PV1))
    except MappingError as exc:
        assert value.strip() in ("", '""') and "no business identifier" in str(exc)
        return
    assert all(s.strip() for s in _strings(bundle))
    validate_bundle(bundle)
    patient = only(bundle, "Patient")
    assert patient["identifier"][0]["value"] == value.strip()
    name = patient.get("name", [{}])[0]
    # A component that is exactly "" is HL7's explicit null (chapter 2.5.3): no value, not the text.
    assert name.get("family", "") == ("" if family.strip() == '""' else family.strip())
    assert name.get("given", [""])[0] == ("" if given_name.strip() == '""' else given_name.strip())


@EXAMPLES
@given(st.text(alphabet="|^~\\&ABC 12.<>=-:/+", max_size=40))
def test_raw_field_content_never_crashes(raw: str) -> None:
    """Whatever a sender puts in the fields the maps read, the answer is a bundle or MappingError."""
    oru = "MSH|^~\\&|Lab|LabFac|A|B|20240101120000+0100||ORU^R01^ORU_R01|9|P|2.5.1"
    lines = [oru, f"PID|1||{raw}^^^H^MR~1^^^H^MR||{raw}", f"OBR|1|{raw}|{raw}|X^x", f"OBX|1|SN|Y^y||{raw}|{raw}|{raw}"]
    try:
        bundle = converter().convert(message(*lines))
    except MappingError:
        return
    assert all(s.strip() for s in _strings(bundle))
    validate_bundle(bundle)


# --- numbers -------------------------------------------------------------------------------------


def _context() -> Context:
    return Context(parse(MSH_ADT), converter().mappings.systems)


def _sn(text: str) -> Any:
    return structured_numeric(Element(text, DEFAULT_SEPARATORS, 0), _context(), None)


@EXAMPLES
@given(st.sampled_from(["", "<", ">", "<=", ">=", "="]), st.decimals(allow_nan=False, allow_infinity=False, places=3))
def test_sn_quantity_with_comparator(comparator: str, number: Any) -> None:
    kind, quantity = _sn(f"{comparator}^{number}")
    assert kind == "Quantity"
    assert quantity["value"] == to_decimal(str(number))
    assert quantity.get("comparator", "") == ("" if comparator in ("", "=") else comparator)


def test_sn_forms() -> None:
    assert _sn("<0.10") == ("Quantity", {"value": Decimal("0.10"), "comparator": "<"})  # one component, digits kept
    assert _sn("^1^-^5") == ("Range", {"low": {"value": 1}, "high": {"value": 5}})
    assert _sn("^1^:^128") == ("Ratio", {"numerator": {"value": 1}, "denominator": {"value": 128}})
    assert _sn("<^1^/^2") == ("Ratio", {"numerator": {"value": 1, "comparator": "<"}, "denominator": {"value": 2}})
    assert _sn("<>^1^+") == ("String", "<> 1 +")
    assert _sn("^abc") == ("String", "abc")
    assert _sn("") is None


def test_decimal_text() -> None:
    assert to_decimal("190") == 190 and isinstance(to_decimal("190"), int)
    assert to_decimal("-0.5") == -0.5 and to_decimal(".5") == 0.5 and to_decimal("+3.") == 3.0
    # A fraction keeps its digits (FHIR decimal precision is significant): 0.90 is not 0.9.
    assert str(to_decimal("0.90")) == "0.90" and str(to_decimal("+1.500")) == "1.500"
    for bad in ("", "1e5", "nan", "1,5", "--1", "1.2.3"):
        assert to_decimal(bad) is None


def test_an_integer_beyond_64_bits_converts_validates_and_serializes_with_its_digits() -> None:
    """orjson writes 64-bit ints only and int() reads 4,300 digits at most: a longer NM was a
    TypeError in serialization (a convert dead letter whose reason read like a bug)."""
    for digits in ("9" * 19, "1" + "0" * 399, "7" * 5000):
        value = to_decimal(digits)
        assert isinstance(value, Decimal) and format(value, "f") == digits
        oru = "MSH|^~\\&|Lab|LabFac|A|B|20240101120000+0100||ORU^R01^ORU_R01|9|P|2.5.1"
        bundle = converter().convert(message(oru, "PID|1||1^^^H^MR", "OBR|1|2|3|X^x", f"OBX|1|NM|Y^y||{digits}"))
        validate_bundle(bundle)
        observation = only(bundle, "Observation")
        assert f'"value":{digits}'.encode() in fhirjson.dumps(observation)
    assert isinstance(to_decimal("9" * 18), int)


# --- target paths and grouping ----------------------------------------------------------------------


def test_target_paths() -> None:
    out: dict = {}
    compile_writer(parse_target("extension[+url=http://x.org/a.b].valueString"))(out, "one")
    compile_writer(parse_target("extension[url=http://x.org/a.b].valueCode"))(out, "two")
    compile_writer(parse_target("identifier[]"))(out, {"value": "1"})
    compile_writer(parse_target("value[x]"))(out, ("Quantity", {"value": 1}))
    compile_writer(parse_target("value[x]"))(out, ("String", "ignored: first write wins"))
    assert out == {
        "extension": [{"url": "http://x.org/a.b", "valueString": "one", "valueCode": "two"}],
        "identifier": [{"value": "1"}],
        "valueQuantity": {"value": 1},
    }
    for bad in ("", "a..b", "a[", "a[x].b", "a[url]", "1a", "a b"):
        try:
            parse_target(bad)
        except PathError:
            continue
        raise AssertionError(f"{bad!r} parsed")


STRUCTURE = build_slot(
    "M",
    False,
    False,
    [
        build_slot("MSH", False, False, None),
        build_slot("PID", False, False, None),
        build_slot(
            "ORDER",
            False,
            True,
            [
                build_slot("ORC", True, False, None),
                build_slot("OBR", False, False, None),
                build_slot("NTE", True, True, None),
                build_slot(
                    "OBS", True, True, [build_slot("OBX", False, False, None), build_slot("NTE", True, True, None)]
                ),
            ],
        ),
    ],
)


@EXAMPLES
@given(st.lists(st.sampled_from(["PID", "ORC", "OBR", "NTE", "OBX", "ZZZ", "QQQ"]), max_size=25))
def test_grouping_keeps_every_segment_once_in_order(names: list[str]) -> None:
    msg = parse("\r".join(["MSH|^~\\&|A"] + [f"{n}|{i}" for i, n in enumerate(names)]))
    root, unplaced = group_segments(STRUCTURE, msg.segments)
    placed = [seg for seg, _ in root.walk()]
    assert sorted(map(id, placed + unplaced)) == sorted(map(id, msg.segments))
    # Each group instance holds its segments in message order (a segment sent after its place
    # joins a group that is earlier in the tree, so the whole walk need not be in message order).
    position = {id(seg): n for n, seg in enumerate(msg.segments)}
    groups: dict[int, list[int]] = {}
    for seg, group in root.walk():
        groups.setdefault(id(group), []).append(position[id(seg)])
    assert all(order == sorted(order) for order in groups.values())
    # A segment the structure does not know is unplaced; a Z-segment joins the one before it.
    assert "ZZZ" not in {s.name for s in unplaced} and all(s in unplaced for s in msg.segments if s.name == "QQQ")
    where = {id(seg): group for seg, group in root.walk()}
    for before, seg in zip(msg.segments, msg.segments[1:]):
        if seg.name == "ZZZ" and before.name != "QQQ" and id(before) in where:
            assert where[id(seg)] is where[id(before)] or where[id(seg)] in list(where[id(before)].ancestors())
    for seg, group in root.walk():
        if seg.name == "OBX":
            assert group.name == "OBS"
        if seg.name in ("ORC", "OBR"):
            assert group.name == "ORDER"


def test_grouping_notes_follow_their_segment() -> None:
    msg = parse(
        "\r".join(
            [
                "MSH|^~\\&|A",
                "PID|1",
                "OBR|1",
                "NTE|r1",
                "OBX|1",
                "NTE|o1",
                "NTE|o2",
                "OBX|2",
                "ORC|2",
                "OBR|2",
                "NTE|r2",
            ]
        )
    )
    root, unplaced = group_segments(STRUCTURE, msg.segments)
    assert not unplaced
    where = [(seg.raw, group.name) for seg, group in root.walk()]
    assert where == [
        ("MSH|^~\\&|A", "M"),
        ("PID|1", "M"),
        ("OBR|1", "ORDER"),
        ("NTE|r1", "ORDER"),
        ("OBX|1", "OBS"),
        ("NTE|o1", "OBS"),
        ("NTE|o2", "OBS"),
        ("OBX|2", "OBS"),
        ("ORC|2", "ORDER"),
        ("OBR|2", "ORDER"),
        ("NTE|r2", "ORDER"),
    ]
    orders = [item for item in root.items if not hasattr(item, "raw")]
    assert len(orders) == 2 and len([i for i in orders[0].items if not hasattr(i, "raw")]) == 2
