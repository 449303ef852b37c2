"""The acknowledgement of a batch (HL7 v2 chapter 2.10.3.3; FHS/BHS/BTS/FTS chapter 2.15).

An acknowledgement batch answers a batch: its BHS has sender and receiver swapped and a new
batch control id (BHS-11), and BHS-12 (reference batch control id) is the incoming BHS-11. It
holds one ACK message for each message that was NOT accepted (MSA-1 AE/AR or CE/CR, MSA-2 its
MSH-10, ERR as gateway.hl7.ack writes them); accepted messages are not listed, so a batch whose
messages were all accepted is answered by an empty acknowledgement batch (BHS, BTS with BTS-1 0).
BTS-1 is the number of ACK messages in the batch. A file (FHS) is answered by a file: FHS-12 is
the incoming FHS-11, FTS-1 the number of batches.

The envelope speaks the sender's dialect (its separators and encoding characters, from the
incoming FHS/BHS or, without one, from the first message); each ACK message speaks that of its
own message (gateway.hl7.ack) and is encoded in the character set its MSH-18 names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.errors import CharsetError
from gateway.hl7.ack import AckError, AckHeader, new_control_id, render_ack, salvage_header, timestamp
from gateway.hl7.batch_items import BatchHeader
from gateway.hl7.charset import ack_codec, decode_message
from gateway.hl7.escape import Separators

#: Table 0008 codes that say "accepted": such messages are left out of the acknowledgement.
ACCEPTED_CODES = frozenset({"AA", "CA"})
SEGMENT_END = b"\r"


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """What became of one message of the batch: ``raw`` as read (ReadMessage.raw, or a
    RejectedPiece's raw), ``ack_code`` from table 0008, ``errors`` for its ERR segments."""

    raw: bytes
    ack_code: str
    errors: Sequence[AckError] = ()

    @property
    def accepted(self) -> bool:
        return self.ack_code in ACCEPTED_CODES


def build_batch_ack(
    header: BatchHeader | None,
    file_header: BatchHeader | None,
    results: Iterable[MessageOutcome],
    *,
    now: datetime | None = None,
) -> bytes:
    """The acknowledgement of one batch (``header``: its BHS, None when it had none), inside a file
    envelope when ``file_header`` (the incoming FHS) is given; ``results``: its messages' outcomes."""
    return build_file_ack(file_header, [(header, results)], now=now, file_envelope=file_header is not None)


def all_accepted_ack(
    header: BatchHeader | None, file_header: BatchHeader | None = None, *, now: datetime | None = None
) -> bytes:
    """The acknowledgement of a batch whose messages were all accepted: BHS then BTS|0."""
    return build_batch_ack(header, file_header, (), now=now)


def build_file_ack(
    file_header: BatchHeader | None,
    batches: Iterable[tuple[BatchHeader | None, Iterable[MessageOutcome]]],
    *,
    now: datetime | None = None,
    file_envelope: bool = True,
) -> bytes:
    """The acknowledgement of a file of batches: FHS, one acknowledgement batch per batch, FTS
    (FTS-1 the number of batches); without ``file_envelope``, the batches alone."""
    parts: list[bytes] = []
    count = 0
    envelope_seps: Separators | None = None
    for header, results in batches:
        rejected = [r for r in results if not r.accepted]
        acks = [_ack_message(r, now) for r in rejected]
        seps, encoding = _dialect(header or file_header, acks)
        envelope_seps = envelope_seps or seps
        fallback = acks[0][0] if acks else None
        parts.append(_envelope("BHS", header, fallback, seps, encoding, now))
        parts.extend(text for _, text in acks)
        parts.append(_trailer("BTS", len(acks), seps))
        count += 1
    if not file_envelope:
        return b"".join(parts)
    seps, encoding = _dialect(file_header, [])
    if file_header is None and envelope_seps is not None:
        seps = envelope_seps
        encoding = seps.encoding_characters
    head = _envelope("FHS", file_header, None, seps, encoding, now)
    return head + b"".join(parts) + _trailer("FTS", count, seps)


def _ack_message(outcome: MessageOutcome, now: datetime | None) -> tuple[AckHeader, bytes]:
    """The ACK of one message not accepted, encoded as its MSH-18 says (salvage_header never raises)."""
    try:
        text = decode_message(outcome.raw)
    except CharsetError:
        text = outcome.raw.decode("utf-8", errors="replace")
    header = salvage_header(text)
    ack = render_ack(header, outcome.ack_code, errors=outcome.errors, now=now)
    return header, ack.encode(ack_codec(header.charset), errors="replace")


def _dialect(header: BatchHeader | None, acks: list[tuple[AckHeader, bytes]]) -> tuple[Separators, str]:
    """Separators and encoding characters of the envelope: the incoming FHS/BHS's, else the first
    message's, else the defaults."""
    if header is not None:
        return header.separators, header.encoding_characters or header.separators.encoding_characters
    if acks:
        first = acks[0][0]
        return first.seps, first.encoding_characters
    seps = Separators()
    return seps, seps.encoding_characters


def _envelope(
    name: str,
    incoming: BatchHeader | None,
    message: AckHeader | None,
    seps: Separators,
    encoding: str,
    now: datetime | None,
) -> bytes:
    """FHS or BHS answering ``incoming`` (or, when there was none, the first answered message,
    whose character set it is then written in; else UTF-8, as the reader decoded the header)."""
    codec = "utf-8"
    if incoming is not None:
        ours = (incoming.receiving_application, incoming.receiving_facility)
        theirs = (incoming.sending_application, incoming.sending_facility)
        reference = incoming.control_id
    elif message is not None:
        ours = (message.receiving_application, message.receiving_facility)
        theirs = (message.sending_application, message.sending_facility)
        reference = ""
        codec = ack_codec(message.charset)
    else:
        ours = theirs = ("", "")
        reference = ""
    fields = [
        name,
        encoding,
        *ours,  # -3, -4: we send it
        *theirs,  # -5, -6: to them
        timestamp(now, seps),  # -7
        "",  # -8 security
        "",  # -9 name/id/type
        "",  # -10 comment
        new_control_id(),  # -11 our control id
        reference,  # -12 the control id of what is answered
    ]
    while fields and not fields[-1]:
        fields.pop()
    return seps.field.join(fields).encode(codec, errors="replace") + SEGMENT_END


def _trailer(name: str, count: int, seps: Separators) -> bytes:
    return f"{name}{seps.field}{count}".encode() + SEGMENT_END
