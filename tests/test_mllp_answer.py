"""The bytes answered for a frame: right ACK code for the mode and the commit outcome, addressed
back to the sender, parseable by python-hl7 (HL7 v2 chapter 2.9, 2.14.1; MLLP release 2)."""

from __future__ import annotations

import hl7
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.hl7.message import parse
from gateway.mllp.framing import FrameDecoder
from gateway.mllp.triage import IntakeRules, Triage

TRIAGE = Triage(IntakeRules(supports=lambda c, t: (c, t) == ("ADT", "A01"), known_codes=frozenset({"ADT"})))
ENHANCED_CODE = {"AA": "CA", "AE": "CE", "AR": "CR"}

hd = st.text(alphabet="ABCXYZabc0123.-_ ", min_size=0, max_size=12)
components = st.lists(hd, min_size=1, max_size=3).map("^".join)


def error_codes(ack) -> list[str]:  # type: ignore[no-untyped-def]
    """Table 0357 codes in ERR: ERR-3 from v2.5 on, ERR-1.4.1 (ELD, repeating) before."""
    codes = []
    for err in ack.all("ERR"):
        if err.field_raw(3):
            codes.append(err.get(3, 1))
        else:
            codes += [rep[4][1].value for rep in err.repetitions(1)]
    return codes


def frames(data: bytes) -> list[bytes]:
    decoder = FrameDecoder()
    out = decoder.feed(data)
    assert not decoder.in_frame and decoder.discarded_bytes == 0
    return out


@settings(max_examples=200, deadline=None)
@given(
    sender=st.tuples(components, components),
    receiver=st.tuples(components, components),
    control=st.text(alphabet="ABC0123-.", min_size=1, max_size=20),
    trigger=st.sampled_from(["A01", "A08", "R01"]),
    version=st.sampled_from(["2.3.1", "2.4", "2.5", "2.5.1", "2.7", "2.8.2", "2.9"]),
    processing=st.sampled_from(["P", "T", "D", "X"]),
    msh15=st.sampled_from(["", "AL", "NE", "ER", "SU"]),
    msh16=st.sampled_from(["", "AL", "NE"]),
    stored=st.booleans(),
    commit_acks=st.booleans(),
)
def test_answer(sender, receiver, control, trigger, version, processing, msh15, msh16, stored, commit_acks):
    raw = (
        f"MSH|^~\\&|{sender[0]}|{sender[1]}|{receiver[0]}|{receiver[1]}|20240101||ADT^{trigger}^ADT_A01|"
        f"{control}|{processing}|{version}|||{msh15}|{msh16}\rPID|1||42\r"
    ).encode()
    verdict = TRIAGE.decide(raw)
    reply = frames(verdict.reply(stored=stored, commit_acks=commit_acks, storage_problem="redis down"))
    if commit_acks:
        assert reply[0] == (b"\x06" if stored else b"\x15")  # MLLP release 2 commit ACK / NAK
        reply = reply[1:]

    outcome = verdict.outcome if stored else "AR"
    enhanced = bool(msh15 or msh16)
    wanted = (
        not enhanced
        or msh15 in ("", "AL")
        or (msh15 == "ER" and outcome != "AA")
        or (msh15 == "SU" and outcome == "AA")
    )
    if not wanted:
        assert reply == []
        return
    (ack_bytes,) = reply
    ack = parse(ack_bytes.decode())
    msh, inc = ack.msh, parse(raw.decode()).msh
    assert ack.get("MSA-1") == (ENHANCED_CODE[outcome] if enhanced else outcome)
    assert ack.segment("MSA").field_raw(2) == control  # type: ignore[union-attr]
    assert [msh.field_raw(n) for n in (3, 4, 5, 6)] == [inc.field_raw(n) for n in (5, 6, 3, 4)]
    assert msh.field_raw(9) == f"ACK^{trigger}^ACK"
    assert msh.field_raw(10) and msh.field_raw(10) != control
    assert msh.field_raw(11) == processing and msh.field_raw(12) == version
    errors = error_codes(ack)
    if not stored:
        assert errors[0] == "207"  # storage failed: nothing is claimed as accepted
    assert errors[int(not stored) :] == [e.code for e in verdict.errors]
    assert str(hl7.parse(ack_bytes.decode()).segment("MSA")[2]) == control


def test_incoming_ack_gets_nothing_back():
    verdict = TRIAGE.decide(b"MSH|^~\\&|A|B|C|D|2024||ACK^A01^ACK|K1|P|2.5\rMSA|AA|X\r")
    assert verdict.reply(stored=True) == b"" and verdict.reply(stored=False) == b""
    assert verdict.reply(stored=True, commit_acks=True) == b"\x0b\x06\x1c\r"


def test_unreadable_message_gets_ar_with_empty_msa2():
    (ack,) = frames(TRIAGE.decide(b"not hl7 at all").reply(stored=True))
    parsed = parse(ack.decode())
    assert parsed.get("MSA-1") == "AR" and parsed.get("MSA-2") == "" and parsed.get("ERR-3.1") == "100"
