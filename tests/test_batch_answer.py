"""The batch acknowledgement of a batch taken in whole (gateway/services/batch_answer.py): from the
feeder's report, and, when the queue failed in the middle, every message not stored listed AR 207."""

from __future__ import annotations

import io

from gateway.hl7.ack import AckError
from gateway.hl7.batch import BatchStart, ReadMessage, read_batch
from gateway.hl7.message import parse
from gateway.services.batch_answer import batch_acknowledgement
from gateway.services.import_report import BatchReport, FeedReport, MessageResult
from tests.support.mllp import adt


def _payload(*ids: str, bhs: bool = True) -> bytes:
    body = b"".join(adt(i) for i in ids)
    if not bhs:
        return body
    return b"BHS|^~\\&|LAB|LABF|GW|GWF|20240101||||B-9\r" + body + f"BTS|{len(ids)}\r".encode()


def _listed(ack: bytes) -> list[tuple[str, str, str]]:
    items = list(read_batch(io.BytesIO(ack)))
    out = []
    for item in items:
        if isinstance(item, ReadMessage):
            message = parse(item.raw.decode())
            out.append((message.get("MSA-1"), message.get("MSA-2"), message.get("ERR-3").split("^")[0]))
    return out


def _read(payload: bytes) -> list[ReadMessage]:
    return [item for item in read_batch(io.BytesIO(payload)) if isinstance(item, ReadMessage)]


def test_messages_after_a_queue_failure_are_listed_not_stored() -> None:
    payload = _payload("M-1", "M-2", "M-3")
    first, second, _ = _read(payload)
    header = next(i for i in read_batch(io.BytesIO(payload)) if isinstance(i, BatchStart)).header
    report = FeedReport(read=2, accepted=1, not_stored=1, bytes_read=second.end, error="the queue did not take it")
    report.batches.append(BatchReport(1, "B-9", header))
    report.problems.append(
        MessageResult(second.offset, second.end, 1, 2, "M-2", "not-stored", "AR", (AckError("207", "x"),), second.raw)
    )
    ack = batch_acknowledgement(report, read_batch(io.BytesIO(payload)))
    assert _listed(ack) == [("AR", "M-2", "207"), ("AR", "M-3", "207")]
    assert b"BTS|2" in ack and b"|B-9\r" in ack.split(b"\r", 1)[0] + b"\r"
    assert first.raw not in ack  # the stored one is not listed


def test_without_a_failure_the_rest_is_not_read_and_nothing_is_added() -> None:
    payload = _payload("M-1", "M-2")
    report = FeedReport(read=2, accepted=2, bytes_read=len(payload))
    report.batches.append(BatchReport(1, "B-9", None))
    ack = batch_acknowledgement(report, read_batch(io.BytesIO(payload)))
    assert _listed(ack) == [] and b"BTS|0" in ack


def test_messages_with_no_envelope_are_answered_in_one_acknowledgement_batch() -> None:
    payload = _payload("M-1", "M-2", bhs=False)
    _, second = _read(payload)
    report = FeedReport(read=2, accepted=1, rejected=1, bytes_read=len(payload))
    report.batches.append(BatchReport(0))
    report.problems.append(
        MessageResult(second.offset, second.end, 0, 2, "M-2", "rejected", "AR", (AckError("203", "v"),), second.raw)
    )
    ack = batch_acknowledgement(report)
    assert ack.startswith(b"BHS|") and ack.count(b"BHS|") == 1
    assert _listed(ack) == [("AR", "M-2", "203")]
