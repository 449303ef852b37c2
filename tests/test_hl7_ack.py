"""ACK building: readable by three parsers, swapped addressing, version-appropriate error reporting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import hl7
import pytest
from hl7apy.parser import parse_message as hl7apy_parse
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import CharsetError, ParseError
from gateway.hl7.ack import AckError, build_ack, build_reject_for_unreadable, is_ack
from gateway.hl7.charset import decode_message
from gateway.hl7.message import Message, parse
from tests.conftest import SAMPLES, sample

SAMPLE_FILES = sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*.hl7"))
FIXED_NOW = datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=1)))


def load(name: str) -> Message:
    return parse(decode_message(sample(name)))


def version_of(message: Message) -> tuple[int, ...]:
    return tuple(int(p) for p in message.version.split("."))


def message_with(version: str, *, msh3: str = "SndApp^1.2.3^ISO") -> Message:
    return parse(f"MSH|^~\\&|{msh3}|SndFac|RcvApp|RcvFac|20240101||ORU^R01^ORU_R01|CTRL-9|T|{version}\rPID|1\r")


def check_with_hl7apy(ack: str) -> None:
    """hl7apy accepts the truncation character only from v2.7; drop it for older versions."""
    msg = parse(ack)
    if msg.separators.truncation and version_of(msg) < (2, 7):
        ack = ack.replace(msg.msh.field_raw(2), msg.msh.field_raw(2)[:4], 1)
    parsed = hl7apy_parse(ack, find_groups=False)
    assert parsed.msh.msh_9.to_er7().startswith("ACK")
    assert parsed.msa.msa_1.to_er7() in {"AA", "AE", "AR"}


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_ack_for_every_sample(name):
    incoming = load(name)
    text = build_ack(incoming, "AA", now=FIXED_NOW)
    ack = parse(text)
    msh, inc = ack.msh, incoming.msh
    assert is_ack(ack) and not is_ack(incoming)
    assert text.endswith("\r") and [s.name for s in ack.segments] == ["MSH", "MSA"]
    assert msh.field_raw(1) == inc.field_raw(1) and msh.field_raw(2) == inc.field_raw(2)
    assert [msh.field_raw(n) for n in (3, 4, 5, 6)] == [inc.field_raw(n) for n in (5, 6, 3, 4)]
    assert msh.field_raw(7) == "20240102030405.1234+0100"
    trigger = incoming.message_type[1]
    expected_type = f"ACK^{trigger}^ACK" if version_of(incoming) >= (2, 3, 1) else f"ACK^{trigger}"
    assert msh.field_raw(9) == expected_type
    assert msh.field_raw(11) == inc.field_raw(11) and msh.field_raw(12) == inc.field_raw(12)
    assert msh.field_raw(18) == inc.field_raw(18)
    assert ack.control_id and len(ack.control_id) <= 20 and ack.control_id != incoming.control_id
    assert ack.get("MSA-1") == "AA" and ack.segment("MSA").field_raw(2) == inc.field_raw(10)  # type: ignore[union-attr]
    check_with_hl7apy(text)
    assert str(hl7.parse(text).segment("MSA")[2]) == inc.field_raw(10)


def test_control_ids_are_unique_and_can_be_given():
    incoming = load("v2-to-fhir-ig/ADT_A01.hl7")
    ids = {parse(build_ack(incoming, "AA")).control_id for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) <= 20 for i in ids)
    assert parse(build_ack(incoming, "CA", control_id="MINE-1")).control_id == "MINE-1"


def test_default_timestamp_is_now_with_offset():
    stamp = parse(build_ack(load("v2-to-fhir-ig/ADT_A01.hl7"), "AA")).msh.field_raw(7)
    assert len(stamp) == 24 and stamp[14] == "." and stamp[19] in "+-"
    taken = datetime.strptime(stamp[:14] + stamp[19:], "%Y%m%d%H%M%S%z")
    assert abs((datetime.now(UTC) - taken).total_seconds()) < 60


def test_errors_for_v25_and_later():
    incoming = message_with("2.5.1")
    errors = [
        AckError("101", "PID-3 is required | none sent", "PID", 3),
        AckError("207", "store busy\rretry", severity="W"),
    ]
    text = build_ack(incoming, "AE", errors=errors, text="see ERR")
    ack = parse(text)
    assert ack.get("MSA-1") == "AE" and ack.get("MSA-2") == "CTRL-9" and ack.get("MSA-3") == "see ERR"
    first, second = ack.all("ERR")
    assert first.field_raw(1) == ""
    assert first.field_raw(2) == "PID^1^3"
    assert first.field_raw(3) == "101^Required field missing^HL70357"
    assert first.get(4) == "E" and first.get(8) == "PID-3 is required | none sent"
    assert second.field_raw(2) == "" and second.field_raw(3) == "207^Application internal error^HL70357"
    assert second.get(4) == "W" and second.get(8) == "store busy\rretry"
    check_with_hl7apy(text)
    errs = hl7.parse(text).segments("ERR")
    assert str(errs[0][3][0][0]) == "101" and len(errs) == 2


def test_errors_before_v25_use_err1():
    incoming = message_with("2.3")
    errors = [AckError("102", "bad date", "PID", 7), AckError("100", "ZZZ unexpected", "ZZZ")]
    text = build_ack(incoming, "AR", errors=errors)
    ack = parse(text)
    assert ack.msh.field_raw(9) == "ACK^R01"
    assert ack.get("MSA-3") == "bad date"  # v2.3/2.4 carry the text in MSA-3
    (err,) = ack.all("ERR")  # a single ERR whose ERR-1 repeats (v2.3 ACK allows one ERR)
    assert [r.raw for r in err.repetitions(1)] == [
        "PID^^7^102&Data type error&HL70357",
        "ZZZ^^^100&Segment sequence error&HL70357",
    ]
    assert len(err) == 1
    check_with_hl7apy(text)


def test_msa3_is_not_written_from_v27():
    ack = parse(build_ack(message_with("2.8"), "AA", text="thanks"))
    assert len(ack.segment("MSA")) == 2  # type: ignore[arg-type]


def test_five_encoding_characters_are_kept_and_used_for_escaping():
    incoming = parse("MSH|^~\\&#|A|B|C|D|20240101||ADT^A01^ADT_A01|X1|P|2.7\rPID|1\r")
    ack = parse(build_ack(incoming, "AR", errors=[AckError("102", "a#b^c")]))
    assert ack.msh.field_raw(2) == "^~\\&#"
    assert ack.segment("ERR").field_raw(8) == "a\\P\\b\\S\\c"  # type: ignore[union-attr]
    assert ack.get("ERR-8") == "a#b^c"


def test_control_characters_in_echoed_fields_are_dropped():
    incoming = message_with("2.5", msh3="Snd\x0bApp\x1c")
    text = build_ack(incoming, "AE", errors=[AckError("207", "bad \x0b\x1c bytes")])
    assert "\x0b" not in text and "\x1c" not in text
    assert parse(text).get("MSH-5") == "SndApp" and parse(text).get("ERR-8") == "bad \x0b\x1c bytes"


def test_invalid_codes_are_programming_errors():
    with pytest.raises(ValueError):
        build_ack(message_with("2.5"), "OK")
    with pytest.raises(ValueError):
        AckError("100", "x", severity="X")


def test_ack_error_from_exception():
    assert AckError.from_exception(ParseError("no PID", segment="PID", field=3, code="101")) == AckError(
        "101", "no PID", "PID", 3
    )
    assert AckError.from_exception(RuntimeError("boom")) == AckError("207", "boom")


def test_reject_salvages_a_readable_header():
    raw = b"MSH|^~\\&|SndApp|SndFac|RcvApp|RcvFac|20240101||ADT^A01^ADT_A01|CTRL-7|P|2.5.1\rPID^1\r"
    with pytest.raises(ParseError) as caught:
        parse(raw.decode())
    ack = parse(build_reject_for_unreadable(raw, caught.value, now=FIXED_NOW))
    assert ack.get("MSA-1") == "AR" and ack.get("MSA-2") == "CTRL-7"
    assert [ack.msh.field_raw(n) for n in (3, 4, 5, 6)] == ["RcvApp", "RcvFac", "SndApp", "SndFac"]
    assert ack.msh.field_raw(9) == "ACK^A01^ACK" and ack.version == "2.5.1"
    assert ack.get("ERR-3.1") == "100" and ack.get("ERR-4") == "E"


def test_reject_for_a_charset_error_keeps_its_location_but_not_the_unknown_charset():
    raw = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|C1|P|2.4||||||EBCDIC\rPID|1\r"
    with pytest.raises(CharsetError) as caught:
        decode_message(raw)
    text = build_reject_for_unreadable(raw, caught.value)
    ack = parse(text)
    assert ack.msh.field_raw(18) == "" and ack.msh.field_raw(9) == "ACK^A01^ACK"
    assert ack.segment("ERR").field_raw(1).startswith("MSH^^18^103&Table value not found")  # type: ignore[union-attr]


def test_reject_with_broken_encoding_characters_uses_the_defaults():
    ack = parse(build_reject_for_unreadable(b"MSH|^~|A|B|C|D|x||ADT^A01|C2|P|2.5", ParseError("bad MSH-2")))
    assert ack.msh.field_raw(2) == "^~\\&" and ack.get("MSA-2") == "C2" and ack.get("MSH-5") == "A"


def test_reject_of_garbage():
    text = build_reject_for_unreadable(b"\x00\xffnot hl7", ParseError("message does not start with an MSH segment"))
    ack = parse(text)
    assert ack.get("MSA-1") == "AR" and ack.get("MSA-2") == "" and ack.version == "2.5.1"
    assert ack.get("ERR-8") == "message does not start with an MSH segment"
    check_with_hl7apy(text)


headers = st.sampled_from(
    [b"", b"MSH|^~\\&|", b"MSH|^~\\&#|A|B|C|D|x||ADT^A01|ID|P|2.3|", b"MSH", b"\xef\xbb\xbfMSH!@$%*!", b"MSH|^~"]
)


@settings(max_examples=200, deadline=None)
@given(headers, st.binary(max_size=300) | st.text(max_size=300).map(str.encode), st.booleans())
def test_reject_never_raises_and_always_parses(header, body, as_text):
    raw: bytes | str = header + body
    if as_text:
        raw = raw.decode("utf-8", errors="replace")
    text = build_reject_for_unreadable(raw, ParseError("unreadable"))
    assert "\x0b" not in text and "\x1c" not in text
    ack = parse(text)
    assert is_ack(ack) and ack.get("MSA-1") == "AR" and ack.all("ERR")
    assert str(hl7.parse(text).segment("MSA")[1]) == "AR"


def test_generated_values_never_collide_with_unusual_delimiters():
    ack = parse(build_reject_for_unreadable(b"MSH+^.\\&+A+B", ParseError("bad"), now=FIXED_NOW))
    assert ack.separators.field == "+" and ack.separators.repetition == "."
    assert ack.msh.field_raw(7) == "20240102030405" and ack.version == "2.5.1"
    assert is_ack(ack) and ack.get("MSH-5") == "A"


# -- acknowledgement modes (chapter 2.9) -------------------------------------------------------

from gateway.hl7.ackmode import ORIGINAL, AckMode  # noqa: E402


def mode_of(msh15: str, msh16: str) -> AckMode:
    return AckMode.of(parse(f"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5|||{msh15}|{msh16}\r").msh)


@pytest.mark.parametrize("msh15, msh16", [("", ""), (" ", ""), ('""', '""')])
def test_both_fields_empty_is_original_mode(msh15, msh16):
    mode = mode_of(msh15, msh16)
    assert mode == ORIGINAL and not mode.enhanced
    assert [mode.code(o) for o in ("AA", "AE", "AR")] == ["AA", "AE", "AR"]
    assert all(mode.wants(o) for o in ("AA", "AE", "AR"))  # original mode: always exactly one ACK


@pytest.mark.parametrize(
    "msh15, sent_for",
    [
        ("AL", {"AA", "AE", "AR"}),
        ("NE", set()),
        ("ER", {"AE", "AR"}),
        ("SU", {"AA"}),
        ("", {"AA", "AE", "AR"}),  # MSH-16 alone makes it enhanced; empty MSH-15 answers always
        ("XX", {"AA", "AE", "AR"}),  # not in table 0155
        ("su", {"AA"}),
    ],
)
def test_enhanced_mode_accept_ack_follows_msh15(msh15, sent_for):
    mode = mode_of(msh15, "AL" if msh15 in ("", "XX") else "NE")
    assert mode.enhanced
    assert {o for o in ("AA", "AE", "AR") if mode.wants(o)} == sent_for
    assert [mode.code(o) for o in ("AA", "AE", "AR")] == ["CA", "CE", "CR"]


def test_msh16_alone_or_msh15_alone_is_enhanced():
    assert mode_of("", "AL").enhanced and mode_of("NE", "").enhanced


# -- bounded size: an ACK never grows with the message -------------------------------------------

from gateway.hl7.ack import MAX_ERROR_TEXT, MAX_QUOTED, header_from_fields, render_ack  # noqa: E402

_HUGE = 1 << 20


def test_the_ack_for_a_message_with_a_1_mb_msh_field_is_small_and_valid():
    """A 1 MB MSH-11 (and MSH-10, MSH-3) is quoted cut to MAX_QUOTED with a marker; the error
    naming it is cut too: the ACK is a few hundred bytes and parses."""
    raw = f"MSH|^~\\&|{'A' * _HUGE}|F|R|RF|20240101||ADT^A01^ADT_A01|{'C' * _HUGE}|{'P' * _HUGE}|2.5.1\rPID|1\r"
    message = parse(raw)
    error = AckError("202", f"processing id {message.msh.field_raw(11)!r} is not accepted", "MSH", 11)
    text = build_ack(message, "AR", errors=[error], now=FIXED_NOW)
    assert len(text) < 2_000
    ack = parse(text)
    assert ack.get("MSA-1") == "AR" and ack.get("MSA-2") == "C" * (MAX_QUOTED - 3) + "..."
    assert ack.msh.field_raw(11) == "P" * (MAX_QUOTED - 3) + "..." and ack.msh.field_raw(5) == "A" * 197 + "..."
    assert len(ack.get("ERR-8")) == MAX_ERROR_TEXT and ack.get("ERR-8").endswith("...")
    check_with_hl7apy(text)
    # The same message unreadable (its PID broken): the salvaged header is cut the same way.
    reject = build_reject_for_unreadable(raw.replace("PID|1", "PID^1"), ParseError("bad segment"))
    assert len(reject) < 2_000 and parse(reject).msh.field_raw(5) == "A" * (MAX_QUOTED - 3) + "..."


@settings(max_examples=150, deadline=None)
@given(
    value=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=0, max_size=3 * MAX_QUOTED),
    field=st.sampled_from([3, 4, 5, 6, 10, 11, 12]),
    version=st.sampled_from(["2.3", "2.4", "2.5.1", "2.7"]),
    text_length=st.integers(0, 3 * MAX_ERROR_TEXT),
)
def test_every_echoed_value_is_bounded_and_the_ack_parses(value, field, version, text_length):
    """Whatever a header field holds (escape sequences cut included), the ACK quotes at most
    MAX_QUOTED characters of it and stays a message three parsers read."""
    fields = ["", "|", "^~\\&", "App", "Fac", "Rcv", "RFac", "20240101", "", "ADT^A01", "C1", "P", version]
    fields[field] = "".join(c for c in value if c not in "|\r\n")
    header = header_from_fields(fields, parse("MSH|^~\\&|A\r").separators)
    errors = [AckError("207", "x" * text_length, "MSH", field)]
    text = render_ack(header, "AE", errors=errors, now=FIXED_NOW)
    assert len(text) < 8 * MAX_ERROR_TEXT + 12 * MAX_QUOTED
    ack = parse(text)
    assert is_ack(ack) and ack.get("MSA-1") == "AE"
    assert all(len(ack.msh.field_raw(n)) <= MAX_QUOTED for n in range(3, 13))
    assert str(hl7.parse(text).segment("MSA")[1]) == "AE"
