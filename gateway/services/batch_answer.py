"""The HL7 batch acknowledgement of a batch taken in whole (an MLLP frame, an HTTP upload), from
what the feeder made of it (gateway/services/batch_feed.py FeedReport).

Chapter 2.10.3: the acknowledgement batch lists only the messages that were not accepted, each
with its ERR (gateway/hl7/batch_ack.py). A batch of batches (an FHS, or several BHS) is answered
by as many acknowledgement batches, inside an FHS/FTS when the incoming file had one.

When the queue failed in the middle (``report.error``: the feeder stopped reading), the messages
after the failure were never committed: ``rest`` (the same bytes read again) lists them, each
answered AR with ERR 207, so that no message is implicitly accepted that was not stored.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.hl7.ack import AckError
from gateway.hl7.batch_ack import MessageOutcome, build_batch_ack, build_file_ack
from gateway.hl7.batch_items import BatchHeader, BatchStart, FileStart, Item, ReadMessage, RejectedPiece
from gateway.mllp.triage import STORAGE_FAILED
from gateway.services.import_report import FeedReport

NOT_STORED = AckError(STORAGE_FAILED, "message not stored: the queue is unavailable; send it again")


def batch_acknowledgement(report: FeedReport, rest: Iterable[Item] = ()) -> bytes:
    """The batch acknowledgement of everything ``report`` read (and of ``rest``, the items read
    again after a failure: those past ``report.bytes_read`` are answered AR 207)."""
    headers: dict[int, BatchHeader | None] = {batch.batch: batch.header for batch in report.batches}
    outcomes: dict[int, list[MessageOutcome]] = {batch.batch: [] for batch in report.batches}
    for problem in report.problems:
        outcomes.setdefault(problem.batch, []).append(MessageOutcome(problem.raw, problem.ack_code, problem.errors))
    file_header = report.file_header
    for item in rest if report.error else ():
        if isinstance(item, FileStart) and file_header is None:
            file_header = item.header
        elif isinstance(item, BatchStart):
            headers.setdefault(item.batch, item.header)
            outcomes.setdefault(item.batch, [])
        elif isinstance(item, (ReadMessage, RejectedPiece)) and item.offset >= report.bytes_read:
            outcomes.setdefault(item.batch, []).append(MessageOutcome(item.raw, "AR", (NOT_STORED,)))
    if not outcomes:
        outcomes[0] = []
    batches = [(headers.get(number), outcomes[number]) for number in sorted(outcomes)]
    if file_header is None and len(batches) == 1:
        return build_batch_ack(batches[0][0], None, batches[0][1])
    return build_file_ack(file_header, batches, file_envelope=file_header is not None)


def not_accepted(report: FeedReport) -> int:
    """How many messages (and unreadable pieces) the acknowledgement lists: not accepted."""
    return report.rejected + report.not_stored
