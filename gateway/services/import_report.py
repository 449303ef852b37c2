"""What an import of one batch file came to: counts, each batch's BTS-1 check, the file's FTS-1
check, and the messages that were not accepted (what a batch acknowledgement lists).

Nothing here holds PHI except ``MessageResult.raw`` (kept for the batch acknowledgement, never
written to logs, the job record or the ``--json`` summary): the report's data form names messages
by byte offset, batch position, MSH-10 and ERR codes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.hl7.ack import AckError
from gateway.hl7.batch_ack import MessageOutcome
from gateway.hl7.batch_items import BatchHeader

#: Per-message outcomes (``MessageResult.outcome``); "accepted" and "duplicate" are answered AA.
ACCEPTED, DUPLICATE, REJECTED, ACK_KEPT, NOT_STORED = "accepted", "duplicate", "rejected", "ack-kept", "not-stored"


@dataclass(frozen=True, slots=True)
class MessageResult:
    """One message (or unreadable piece) of the file that was not simply accepted: what the batch
    acknowledgement (gateway/hl7/batch_ack.py MessageOutcome) needs, and where it was."""

    offset: int
    end: int
    batch: int
    index: int
    control_id: str
    outcome: str
    #: Table 0008: AR or AE for a rejected message (AR with ERR 207 when it was not stored).
    ack_code: str
    errors: tuple[AckError, ...]
    #: The bytes as read (for the acknowledgement's MSH echo); never in logs or the data form.
    raw: bytes = b""

    def as_data(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "end": self.end,
            "batch": self.batch,
            "index": self.index,
            "control_id": self.control_id,
            "outcome": self.outcome,
            "ack_code": self.ack_code,
            "errors": [error.code for error in self.errors],
        }


@dataclass(slots=True)
class BatchReport:
    """One batch (BHS ... BTS, or a run of messages outside any BHS: ``batch`` 0)."""

    batch: int
    control_id: str = ""
    header: BatchHeader | None = None
    declared: int | None = None
    read: int = 0
    mismatch: bool = False
    trailer_missing: bool = False

    def as_data(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "control_id": self.control_id,
            "declared": self.declared,
            "read": self.read,
            "mismatch": self.mismatch,
            "trailer_missing": self.trailer_missing,
        }


@dataclass(slots=True)
class FeedReport:
    """The counts of one pass over a file (or of the whole import, resumed passes summed)."""

    #: Messages read (ReadMessage) and unreadable pieces read (RejectedPiece).
    read: int = 0
    pieces: int = 0
    accepted: int = 0
    duplicates: int = 0
    #: Accepted messages whose sender and MSH-10 came before with other content.
    control_id_reused: int = 0
    #: Refused by the intake rules (AR/AE) or unreadable: each kept as a dead letter at stage intake.
    rejected: int = 0
    #: Incoming acknowledgements found in the file: archived, never converted.
    acks: int = 0
    #: Messages the queue did not take (Redis unavailable): the import stopped; run it again.
    not_stored: int = 0
    bytes_read: int = 0
    file_header: BatchHeader | None = None
    file_control_id: str = ""
    file_declared: int | None = None
    file_batches: int = 0
    file_mismatch: bool = False
    batches: list[BatchReport] = field(default_factory=list)
    #: The messages not accepted, in file order, up to ``max_problems`` (``problems_omitted`` beyond).
    problems: list[MessageResult] = field(default_factory=list)
    problems_omitted: int = 0
    error: str = ""

    @property
    def mismatched_batches(self) -> list[BatchReport]:
        return [batch for batch in self.batches if batch.mismatch]

    @property
    def mismatch(self) -> bool:
        return self.file_mismatch or any(batch.mismatch for batch in self.batches)

    def outcomes(self, batch: int) -> list[MessageOutcome]:
        """The messages of batch number ``batch`` that were not accepted, as the batch
        acknowledgement (gateway/hl7/batch_ack.py ``build_batch_ack``) takes them."""
        return [MessageOutcome(p.raw, p.ack_code, p.errors) for p in self.problems if p.batch == batch]

    def counts(self) -> dict[str, int]:
        return {
            "read": self.read,
            "pieces": self.pieces,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "control_id_reused": self.control_id_reused,
            "rejected": self.rejected,
            "acks": self.acks,
            "not_stored": self.not_stored,
        }

    def as_data(self, *, detail: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            **self.counts(),
            "bytes": self.bytes_read,
            "mismatch": self.mismatch,
            "file": {
                "control_id": self.file_control_id,
                "declared": self.file_declared,
                "batches": self.file_batches,
                "mismatch": self.file_mismatch,
            },
            "batches": [batch.as_data() for batch in self.batches],
        }
        if detail:
            data["problems"] = [problem.as_data() for problem in self.problems]
            data["problems_omitted"] = self.problems_omitted
        if self.error:
            data["error"] = self.error
        return data
