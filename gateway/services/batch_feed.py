"""The feeder: the batch reader's items through the same intake as MLLP traffic.

Each message read from a batch file is judged as the listener judges a frame (gateway/mllp/
profiles.py: the header-profile fast path, else ``Triage.decide``: same rejection rules, same AR/AE
codes, a rejected message kept as a dead letter) and handed to ``Intake.receive`` (same group
commit, same duplicate check on sender + MSH-10, same per-sender sequence numbers). Bytes the
reader could not read as a message (a RejectedPiece) are kept as a dead letter at stage intake,
as the listener keeps an unfinished frame, with the reader's reason and their byte offsets.

Many messages are in flight at once: up to ``window`` (and ``window_bytes`` of them) waiting for
their commit, the reader pausing when that many wait until half of them are committed. A
sender's messages all go on one intake lane, so they keep their file order in the queue (lane
order is commit order). The feeder tracks the committed prefix of
the file: the last message such that it and every item before it are committed; ``on_commit``
hears of it after every group commit that moves it (the resumable progress, importer.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from gateway import logcontext
from gateway.envelope import Kind
from gateway.hl7.ack import AckError
from gateway.hl7.batch_items import BatchEnd, BatchStart, FileEnd, FileStart, ReadMessage, RejectedPiece
from gateway.metrics import NullRecorder, recorder
from gateway.mllp.profiles import Profiled, Profiles
from gateway.mllp.triage import STORAGE_FAILED, Judgement, Verdict
from gateway.queue.entry import Received
from gateway.queue.intake import Intake, Receipt
from gateway.services.import_report import (
    ACCEPTED,
    ACK_KEPT,
    DUPLICATE,
    NOT_STORED,
    REJECTED,
    BatchReport,
    FeedReport,
    MessageResult,
)

log = logging.getLogger(__name__)
_REJECTED_LINE = {"outcome": "rejected"}
#: Batch reports kept in a report beyond which only mismatched ones are listed.
MAX_BATCHES_LISTED = 1000


class Committed:
    """The end of the committed prefix: the last item committed with every item before it."""

    __slots__ = ("end", "batch", "index", "count", "outcomes")

    def __init__(self, end: int = 0, batch: int = 0, index: int = 0, count: int = 0):
        self.end, self.batch, self.index, self.count = end, batch, index, count
        #: How many items of the prefix had each outcome (import_report.py ACCEPTED, ...).
        self.outcomes: dict[str, int] = {}


class _Slot:
    """One message or piece waiting for its commit; settled by the intake's callback."""

    __slots__ = ("feeder", "item", "judgement", "outcome")

    def __init__(self, feeder: BatchFeeder, item: ReadMessage | RejectedPiece, judgement: Judgement):
        self.feeder, self.item, self.judgement = feeder, item, judgement
        self.outcome = ""

    def __call__(self, receipt: Receipt | None, error: BaseException | None) -> None:
        self.feeder._settle(self, receipt, error)


class BatchFeeder:
    def __init__(
        self,
        intake: Intake,
        profiles: Profiles,
        *,
        peer: str,
        window: int = 8192,
        window_bytes: int = 8 << 20,
        max_problems: int = 100_000,
        on_commit: Callable[[Committed, FeedReport], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        metrics: NullRecorder | None = None,
    ):
        self.intake, self.profiles, self.peer = intake, profiles, peer
        self.window = window
        #: Message bytes in flight at most: the encoded entries are about twice as large.
        self.window_bytes = window_bytes
        self.max_problems = max_problems
        self.on_commit = on_commit
        self.on_progress = on_progress
        self.metrics = metrics or recorder()
        self.report = FeedReport()
        #: Where the committed prefix ends (``start`` of a resumed read: where it began).
        self.committed = Committed()
        self._waiting: deque[_Slot] = deque()
        self._outstanding = 0
        self._outstanding_bytes = 0
        self._drained = asyncio.Event()
        self._stopped = False
        self._batch: BatchReport | None = None
        self._unrecorded: dict[str, int] = {}

    async def feed(self, items: Iterable[ReadMessage | RejectedPiece | object]) -> FeedReport:
        """Read every item and commit every message; returns once each is committed (or the queue
        failed: then ``report.error`` says so and the items after the failure are not read)."""
        report, window = self.report, self.window
        count, next_tick = 0, 0.0
        for item in items:
            if self._stopped:
                break
            kind = type(item)
            if kind is ReadMessage:
                self._message(item)  # type: ignore[arg-type]
            elif kind is RejectedPiece:
                self._piece(item)  # type: ignore[arg-type]
            else:
                self._envelope(item)
            count += 1
            if self._outstanding >= window or self._outstanding_bytes >= self.window_bytes:
                self._drained.clear()
                await self._drained.wait()
            elif count % 256 == 0:
                await asyncio.sleep(0)  # let the lanes send what is waiting
            if count % 1024 == 0 and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + 0.2
                self._record_metrics()
                if self.on_progress is not None:
                    self.on_progress(report.bytes_read, report.read + report.pieces)
        while self._outstanding:
            self._drained.clear()
            await self._drained.wait()
        self._record_metrics()
        if self.on_progress is not None:
            self.on_progress(report.bytes_read, report.read + report.pieces)
        return report

    # -- items --------------------------------------------------------------------------------
    def _message(self, item: ReadMessage) -> None:
        self.report.read += 1
        self.report.bytes_read = item.end
        judgement = self.profiles.judge(item.raw)
        received = judgement.received(item.raw, self.peer)
        if judgement.kind == Kind.REJECTED:
            received.meta = {**(received.meta or {}), "reason": f"{judgement.reason} ({_where(item)})"}
        self._commit(_Slot(self, item, judgement), received)

    def _piece(self, item: RejectedPiece) -> None:
        """Unreadable bytes: kept for operators as the listener keeps an unfinished frame."""
        self.report.pieces += 1
        self.report.bytes_read = item.end
        verdict = self.profiles.triage.kept(item.raw, AckError("100", item.reason))
        received = verdict.received(item.raw, self.peer)
        received.meta = {"reason": f"{verdict.reason} ({_where(item)})", "message_type": ""}
        self._commit(_Slot(self, item, verdict), received)

    def _commit(self, slot: _Slot, received: Received) -> None:
        self._waiting.append(slot)
        self._outstanding += 1
        self._outstanding_bytes += len(received.raw)
        lane = hash(received.sender) % self.intake.lanes  # one lane per sender: its file order kept
        self.intake.receive(received, slot, lane)

    def _envelope(self, item: object) -> None:
        report = self.report
        if isinstance(item, BatchStart):
            header = item.header
            self._batch = BatchReport(item.batch, header.control_id if header else "", header)
            report.batches.append(self._batch)
        elif isinstance(item, BatchEnd):
            batch = self._batch if self._batch is not None and self._batch.batch == item.batch else None
            if batch is None:
                batch = BatchReport(item.batch, item.header.control_id if item.header else "", item.header)
                report.batches.append(batch)
            batch.declared, batch.read, batch.mismatch = item.declared, item.read, item.mismatch
            batch.trailer_missing = item.trailer_missing
            if batch.mismatch:
                self.metrics.import_batch_mismatched()
                log.warning(
                    "batch %d (BHS-11 %r): BTS-1 says %s message(s), %d read",
                    batch.batch,
                    batch.control_id,
                    batch.declared,
                    batch.read,
                )
            elif len(report.batches) > MAX_BATCHES_LISTED:
                report.batches.remove(batch)
            self._batch = None
        elif isinstance(item, FileStart):
            report.file_header, report.file_control_id = item.header, item.header.control_id
        elif isinstance(item, FileEnd):
            report.file_declared, report.file_batches, report.file_mismatch = item.declared, item.batches, item.mismatch
            if item.mismatch:
                log.warning("file: FTS-1 says %s batch(es), %d read", item.declared, item.batches)

    # -- commits ------------------------------------------------------------------------------
    def _settle(self, slot: _Slot, receipt: Receipt | None, error: BaseException | None) -> None:
        report, judgement, item = self.report, slot.judgement, slot.item
        self._outstanding -= 1
        self._outstanding_bytes -= len(item.raw)
        if error is not None:
            slot.outcome = NOT_STORED
            report.not_stored += 1
            if not self._stopped:
                self._stopped = True
                report.error = f"the queue did not take a message: {error}"
            self._problem(slot, "AR", (AckError(STORAGE_FAILED, "message not stored"), *_errors(judgement)))
        elif judgement.kind == Kind.MESSAGE:
            if receipt is not None and receipt.duplicate:
                slot.outcome = DUPLICATE
                report.duplicates += 1
            else:
                slot.outcome = ACCEPTED
                report.accepted += 1
                if receipt is not None and receipt.control_id_reused:
                    report.control_id_reused += 1
        elif judgement.kind == Kind.ACK:
            slot.outcome = ACK_KEPT
            report.acks += 1
        else:
            slot.outcome = REJECTED
            report.rejected += 1
            verdict = judgement if isinstance(judgement, Verdict) else None
            code = verdict.outcome if verdict is not None else "AR"
            self._problem(slot, code, _errors(judgement))
            with logcontext.message_context("", judgement.sender, judgement.control_id):
                log.info("rejected %s: %s", _where(item), judgement.reason, extra=_REJECTED_LINE)
        self._unrecorded[slot.outcome] = self._unrecorded.get(slot.outcome, 0) + 1
        self._advance()
        if self._outstanding <= self.window // 2 and self._outstanding_bytes <= self.window_bytes // 2:
            self._drained.set()

    def _advance(self) -> None:
        """Move the committed prefix over every settled item at its head (not over a failed one)."""
        waiting, committed = self._waiting, self.committed
        moved = False
        outcomes = committed.outcomes
        while waiting and waiting[0].outcome and waiting[0].outcome != NOT_STORED:
            slot = waiting.popleft()
            item = slot.item
            committed.end = item.end
            if item.index:  # an uncounted piece (text that is not HL7) leaves the count where it was
                committed.batch, committed.index = item.batch, item.index
            committed.count += 1
            outcomes[slot.outcome] = outcomes.get(slot.outcome, 0) + 1
            moved = True
        if moved and self.on_commit is not None:
            self.on_commit(committed, self.report)

    def _problem(self, slot: _Slot, ack_code: str, errors: tuple[AckError, ...]) -> None:
        report, item = self.report, slot.item
        if len(report.problems) >= self.max_problems:
            report.problems_omitted += 1
            return
        control_id = slot.judgement.control_id
        report.problems.append(
            MessageResult(
                item.offset, item.end, item.batch, item.index, control_id, slot.outcome, ack_code, errors, item.raw
            )
        )

    def _record_metrics(self) -> None:
        for outcome, count in self._unrecorded.items():
            self.metrics.imported(outcome, count)
        self._unrecorded.clear()


def _errors(judgement: Judgement) -> tuple[AckError, ...]:
    if isinstance(judgement, Verdict):
        return judgement.errors
    if isinstance(judgement, Profiled):
        return judgement.profile.verdict.errors
    return ()


def _where(item: ReadMessage | RejectedPiece) -> str:
    """Where in the file, by position only (no content)."""
    return f"bytes {item.offset}-{item.end} of the imported file, batch {item.batch} #{item.index}"
