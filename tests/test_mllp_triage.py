"""Intake decisions from the header alone: what is rejected (and with which table 0357 code),
what is accepted, what is an incoming ACK (HL7 v2 chapter 2.9)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.envelope import Kind
from gateway.hl7.ackmode import AckMode
from gateway.mllp.triage import IntakeRules, Triage
from tests.conftest import SAMPLES, sample

PROCESS, REJECTED, STORED_ACK = Kind.MESSAGE, Kind.REJECTED, Kind.ACK

SAMPLE_FILES = sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*.hl7"))
SUPPORTED = {("ADT", "A01"), ("ADT", "A04"), ("ORU", "R01")}
RULES = IntakeRules(supports=lambda c, t: (c, t) in SUPPORTED, known_codes=frozenset({"ADT", "ORU"}))


def msg(
    *, version: str = "2.5.1", pid: str = "P", mtype: str = "ADT^A01^ADT_A01", control: str = "C-1", extra: str = ""
) -> bytes:
    return f"MSH|^~\\&|App|Fac|GW|GWF|20240101||{mtype}|{control}|{pid}|{version}{extra}\rPID|1||42\r".encode()


def codes(verdict) -> list[tuple[str, str, int | None]]:  # type: ignore[no-untyped-def]
    return [(e.code, e.segment, e.field) for e in verdict.errors]


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_every_sample_is_accepted_when_every_type_is(name):
    verdict = Triage().decide(sample(name))
    assert verdict.kind == PROCESS and verdict.outcome == "AA" and not verdict.errors
    assert verdict.control_id and "|" in verdict.sender


def test_accepted_message():
    verdict = Triage(RULES).decide(msg())
    assert (verdict.kind, verdict.outcome, verdict.errors) == (PROCESS, "AA", ())
    assert (verdict.sender, verdict.control_id, verdict.message_type) == ("App|Fac", "C-1", "ADT^A01")
    assert verdict.mode == AckMode()


def test_unsupported_version_is_ar_203():
    verdict = Triage(RULES).decide(msg(version="2.9"))
    assert (verdict.kind, verdict.outcome, codes(verdict)) == (REJECTED, "AR", [("203", "MSH", 12)])
    assert Triage(IntakeRules(versions=frozenset({"2.9"}))).decide(msg(version="2.9")).kind == PROCESS


def test_processing_id_not_accepted_is_ar_202():
    verdict = Triage(RULES).decide(msg(pid="X"))
    assert (verdict.kind, verdict.outcome, codes(verdict)) == (REJECTED, "AR", [("202", "MSH", 11)])
    only_production = Triage(IntakeRules(processing_ids=frozenset({"P"})))
    assert codes(only_production.decide(msg(pid="T"))) == [("202", "MSH", 11)]
    assert only_production.decide(msg(pid="P^T")).kind == PROCESS  # MSH-11.2 processing mode ignored


def test_unsupported_type_is_ar_200_and_unsupported_event_ar_201():
    assert codes(Triage(RULES).decide(msg(mtype="MDM^T02"))) == [("200", "MSH", 9)]
    assert codes(Triage(RULES).decide(msg(mtype="ADT^A40^ADT_A39"))) == [("201", "MSH", 9)]


def test_unsupported_type_accepted_when_configured():
    rules = IntakeRules(supports=RULES.supports, known_codes=RULES.known_codes, reject_unsupported=False)
    verdict = Triage(rules).decide(msg(mtype="MDM^T02"))
    assert (verdict.kind, verdict.outcome) == (PROCESS, "AA")


def test_every_header_problem_is_reported():
    verdict = Triage(RULES).decide(msg(version="9.9", pid="Q", mtype="ZZZ^Z01", control=""))
    assert sorted(c for c, _, _ in codes(verdict)) == ["101", "200", "202", "203"]
    assert verdict.control_id == "" and verdict.outcome == "AR"
    assert "203 MSH-12" in verdict.reason and verdict.reason.startswith("AR: ")


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"PID|1||42\r", "100"),
        (b"garbage", "100"),
        (b"MSH|^~|App|Fac|GW|GWF|2024||ADT^A01|C-9|P|2.5\r", "102"),
        (b"MSH\x01^~\\&\x01App\r", "102"),
    ],
)
def test_unreadable_header_is_ar_100_or_102(raw, code):
    verdict = Triage(RULES).decide(raw)
    assert (verdict.kind, verdict.outcome, verdict.errors[0].code) == (REJECTED, "AR", code)


def test_unreadable_header_echoes_a_readable_control_id_and_only_then():
    assert Triage().decide(b"MSH|^~|App|Fac|GW|GWF|2024||ADT^A01|C-9|P|2.5\r").header.control_id == "C-9"
    assert Triage().decide(b"garbage").header.control_id == ""


def test_incoming_ack_is_stored_not_answered():
    raw = b"MSH|^~\\&|App|Fac|GW|GWF|2024||ACK^A01^ACK|A-1|P|2.5.1\rMSA|AA|C-1\r"
    verdict = Triage(RULES).decide(raw)
    assert verdict.kind == STORED_ACK and verdict.control_id == "A-1"
    # Even one that would fail every header check.
    assert Triage(RULES).decide(b"MSH|^~\\&|App|Fac|GW|GWF|2024||ACK|A-2|Z|1.0\rMSA|AA|C-1\r").kind == STORED_ACK


def test_bytes_invalid_in_the_declared_charset_are_ae():
    raw = msg(extra="||||||8859/1").replace(b"PID|1||42", b"PID|1||42||M\xfcller") + b"ZZZ|\xff\r"
    assert Triage(RULES).decide(raw).kind == PROCESS  # every byte is valid in 8859/1
    utf8 = msg(extra="||||||UNICODE UTF-8") + b"NTE|1||\xff\xfe\r"
    verdict = Triage(RULES).decide(utf8)
    assert (verdict.kind, verdict.outcome, codes(verdict)) == (REJECTED, "AE", [("102", "MSH", 18)])
    unknown = Triage(RULES).decide(msg(extra="||||||EBCDIC"))
    assert (unknown.outcome, codes(unknown)) == ("AE", [("103", "MSH", 18)])
    assert unknown.codec == "utf-8"  # the ACK is not written in a charset we cannot write


def test_content_errors_are_not_intake_errors():
    raw = msg() + b"PID|broken|||\rbad segment\rZZ1|x\r"
    assert Triage(RULES).decide(raw).kind == PROCESS


def test_batches_are_rejected():
    raw = b"FHS|^~\\&|App|Fac\rBHS|^~\\&|App|Fac\r" + msg() + b"BTS|1\rFTS|1\r"
    verdict = Triage(RULES).decide(raw)
    assert verdict.kind == REJECTED and verdict.errors[0].code == "200"


VERSIONS = ["2.1", "2.3", "2.3.1", "2.5", "2.5.1", "2.8.2", "2.9", "3.0", "", "x"]
PIDS = ["P", "T", "D", "X", "", "p"]
TYPES = ["ADT^A01", "ADT^A04^ADT_A01", "ADT^A02", "ORU^R01", "ORU^R30", "MDM^T02", "ACK^A01", "ADT", ""]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(VERSIONS),
    st.sampled_from(PIDS),
    st.sampled_from(TYPES),
    st.sampled_from(["C-1", "", "x" * 40]),
    st.booleans(),
)
def test_verdict_matches_the_rules(version, pid, mtype, control, reject_unsupported):
    rules = IntakeRules(supports=RULES.supports, known_codes=RULES.known_codes, reject_unsupported=reject_unsupported)
    verdict = Triage(rules).decide(msg(version=version, pid=pid, mtype=mtype, control=control))
    code, _, trigger = mtype.partition("^")
    trigger = trigger.split("^")[0]
    if code == "ACK":
        assert verdict.kind == STORED_ACK
        return
    expected = set()
    if not control:
        expected.add("101")
    if version not in rules.versions:
        expected.add("203")
    if pid.upper() not in rules.processing_ids:
        expected.add("202")
    if reject_unsupported and (code, trigger) not in SUPPORTED:
        expected.add("201" if code in {"ADT", "ORU"} else "200")
    assert {e.code for e in verdict.errors} == expected
    assert verdict.kind == (REJECTED if expected else PROCESS)
    assert verdict.outcome == ("AR" if expected else "AA")
    assert verdict.control_id == control


@pytest.mark.parametrize("part", [n for n in range(1, 16) if n != 12])
def test_every_8859_part_is_read_in_its_own_charset(part):
    text = bytes(range(0xA0, 0x100)).decode(f"iso8859-{part}", errors="ignore")
    raw = msg(extra=f"||||||8859/{part}").replace(b"PID|1||42", b"PID|1||42||" + text.encode(f"iso8859-{part}"))
    assert Triage(RULES).decide(raw).kind == PROCESS


@pytest.mark.parametrize(
    "charset, body, stage",
    [
        ("", "Zoë 日本".encode(), PROCESS),  # absent: read as UTF-8
        ("UNICODE UTF-8", "Zoë 日本".encode(), PROCESS),
        ("UNICODE UTF-8", "Zoë".encode("latin-1"), REJECTED),
        ("ASCII", b"plain", PROCESS),
        ("ASCII", "Zoë".encode("latin-1"), REJECTED),  # not ASCII, and not the UTF-8 senders mean by it
        ("8859/1", "Zoë".encode("latin-1"), PROCESS),
    ],
)
def test_declared_charset_decides_what_is_readable(charset, body, stage):
    raw = msg(extra=f"||||||{charset}").replace(b"PID|1||42", b"PID|1||42||" + body)
    verdict = Triage(RULES).decide(raw)
    assert verdict.kind == stage
    if stage == REJECTED:
        assert verdict.outcome == "AE" and codes(verdict) == [("102", "MSH", 18)]
