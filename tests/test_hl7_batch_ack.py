"""The batch acknowledgement: read back with the batch reader and gateway.hl7.message, it references
the incoming batch and file, lists exactly the messages not accepted, and counts them."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.hl7.ack import AckError
from gateway.hl7.batch import BatchEnd, BatchHeader, BatchStart, FileEnd, FileStart, Item, ReadMessage, read_batch
from gateway.hl7.batch_ack import MessageOutcome, all_accepted_ack, build_batch_ack, build_file_ack
from gateway.hl7.message import parse
from tests.support.batch_files import messages

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ENVELOPE_DIALECTS = [("|", "^~\\&"), ("#", "^~\\&"), ("!", "@%\\*"), ("|", "^~\\&#")]

outcomes = st.tuples(
    st.sampled_from(["AA", "CA", "AE", "AR", "CE", "CR"]),
    st.lists(
        st.builds(AckError, st.sampled_from(["100", "101", "207"]), st.text("abcdef xyz", min_size=1, max_size=20)),
        max_size=2,
    ),
)


def incoming_headers(sep: str, enc: str) -> tuple[BatchHeader, BatchHeader]:
    """The FHS and BHS of an incoming file written in the dialect ``sep``/``enc``, as the reader reads them."""
    fields = ["SENDAPP", "SENDFAC", "RECVAPP", "RECVFAC", "20240101", "", "", ""]
    fhs = sep.join(["FHS", enc, *fields, "FILE-11"])
    bhs = sep.join(["BHS", enc, *fields, "BATCH-11"])
    items = list(read_batch(io.BytesIO(f"{fhs}\r{bhs}\rBTS{sep}0\rFTS{sep}1\r".encode())))
    (file_start,) = [i for i in items if isinstance(i, FileStart)]
    (batch_start,) = [i for i in items if isinstance(i, BatchStart)]
    assert batch_start.header is not None
    return file_start.header, batch_start.header


def read_back(ack: bytes) -> tuple[list[str], list[Item]]:
    """The envelope segments (as text lines) and the items the reader finds in ``ack``."""
    envelope = [line.decode("utf-8") for line in ack.split(b"\r") if line[:3] in (b"FHS", b"BHS", b"BTS", b"FTS")]
    return envelope, list(read_batch(io.BytesIO(ack)))


@PROPERTY
@given(st.lists(st.tuples(messages(), outcomes), max_size=6), st.sampled_from(ENVELOPE_DIALECTS))
def test_the_ack_lists_each_message_not_accepted_and_references_the_batch(batch, dialect):
    file_header, header = incoming_headers(*dialect)
    results = [
        MessageOutcome(b"".join(s + b"\r" for s in segments), code, tuple(errors)) for segments, (code, errors) in batch
    ]
    ack = build_batch_ack(header, file_header, results, now=NOW)
    envelope, items = read_back(ack)
    sep, enc = dialect

    # FHS first, the envelope reads as one segment list in the FHS's separators
    fhs, bhs, bts, fts = parse("\r".join(envelope)).segments
    assert [s.name for s in (fhs, bhs, bts, fts)] == ["FHS", "BHS", "BTS", "FTS"]
    for segment, reference in ((fhs, "FILE-11"), (bhs, "BATCH-11")):
        assert segment.raw.startswith(segment.name + sep + enc + sep)  # the sender's separators
        assert [segment.get(n) for n in (3, 4, 5, 6)] == ["RECVAPP", "RECVFAC", "SENDAPP", "SENDFAC"]
        assert segment.get(12) == reference and segment.get(11) not in ("", reference)
    assert fhs.get(11) != bhs.get(11)

    not_accepted = [r for r in results if not r.accepted]
    acks = [parse(m.raw.decode("utf-8")) for m in items if isinstance(m, ReadMessage)]
    assert len(acks) == len(not_accepted)
    for ack_message, result in zip(acks, not_accepted):
        original = parse(result.raw.decode("utf-8"))
        assert ack_message.message_type[0] == "ACK"
        assert ack_message.separators == original.separators  # each ACK speaks its message's dialect
        assert ack_message.get("MSA-1") == result.ack_code
        assert ack_message.get("MSA-2") == original.control_id
        assert [e.get(8) for e in ack_message.all("ERR")] == [e.text for e in result.errors]
    (end,) = [i for i in items if isinstance(i, BatchEnd)]
    assert (end.declared, end.read, end.mismatch) == (len(not_accepted), len(not_accepted), False)
    assert bts.get(1) == str(len(not_accepted)) and fts.get(1) == "1"
    assert isinstance(items[-1], FileEnd) and (items[-1].declared, items[-1].batches) == (1, 1)


def test_all_accepted_is_an_empty_acknowledgement_batch() -> None:
    _, header = incoming_headers("|", "^~\\&")
    ack = all_accepted_ack(header, now=NOW)
    lines = ack.split(b"\r")
    assert lines[-1] == b"" and len(lines) == 3
    assert lines[0].startswith(b"BHS|^~\\&|RECVAPP|RECVFAC|SENDAPP|SENDFAC|20240506")
    assert lines[0].endswith(b"|BATCH-11") and lines[1] == b"BTS|0"
    accepted = MessageOutcome(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\r", "AA")
    assert build_batch_ack(header, None, [accepted], now=NOW).split(b"\r")[1] == b"BTS|0"


def test_a_file_of_batches_is_answered_batch_by_batch() -> None:
    file_header, header = incoming_headers("|", "^~\\&")
    bad = MessageOutcome(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|M7|P|2.4\r", "AR", (AckError("207", "store down"),))
    ack = build_file_ack(file_header, [(header, [bad]), (header, [])], now=NOW)
    envelope, items = read_back(ack)
    assert [line[:3] for line in envelope] == ["FHS", "BHS", "BTS", "BHS", "BTS", "FTS"]
    assert envelope[2] == "BTS|1" and envelope[4] == "BTS|0" and envelope[5] == "FTS|2"
    (message,) = [parse(m.raw.decode()) for m in items if isinstance(m, ReadMessage)]
    # v2.4: the error goes to ERR-1 and to MSA-3, as gateway.hl7.ack writes it for that version
    assert (message.get("MSA-1"), message.get("MSA-2"), message.get("MSA-3")) == ("AR", "M7", "store down")


def test_without_an_incoming_bhs_the_envelope_answers_the_first_message() -> None:
    bad = MessageOutcome(b"MSH#^~\\&#LAB#HOSP#GW#SITE#2024##ORU^R01#9#P#2.5\rPID#1\r", "AE")
    ack = build_batch_ack(None, None, [bad], now=NOW)
    bhs = parse(ack.split(b"\r")[0].decode()).segments[0]
    assert bhs.raw.startswith("BHS#^~\\&#GW#SITE#LAB#HOSP#") and bhs.get(12) == ""


def test_a_rejected_piece_without_a_header_still_gets_an_ack() -> None:
    junk = MessageOutcome(b"PID|1||orphan\r", "AR", (AckError("100", "segments before any MSH at byte 120"),))
    envelope, items = read_back(build_batch_ack(None, None, [junk], now=NOW))
    (message,) = [parse(m.raw.decode()) for m in items if isinstance(m, ReadMessage)]
    assert message.get("MSA-1") == "AR" and message.get("MSA-2") == ""
    assert message.get("ERR-8") == "segments before any MSH at byte 120"
    assert envelope[-1] == "BTS|1"


def test_each_ack_message_is_encoded_as_its_message_declares() -> None:
    latin = "MSH|^~\\&|CAFÉ|B|C|D|2024||ADT^A01|L1|P|2.5||||||8859/1\r".encode("latin-1")
    ack = build_batch_ack(None, None, [MessageOutcome(latin, "AE")], now=NOW)
    assert "BHS|^~\\&|C|D|CAFÉ|B|".encode("latin-1") in ack  # the envelope made from it too
    assert "MSH|^~\\&|C|D|CAFÉ|B|".encode("latin-1") in ack
    assert ack.split(b"\r")[1].endswith(b"|8859/1")
