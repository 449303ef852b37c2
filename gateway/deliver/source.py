"""The source of a message's writes: who sent it, in which order, and when it happened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

from gateway.envelope import Envelope
from gateway.hl7.dtm import parse_dtm
from gateway.hl7.message import Message
from gateway.store.ordering import Source


def source_of(envelope: Envelope, message: Message, zone: tzinfo | None = None) -> Source:
    """The Source of ``message``: its timestamp is EVN-2 (recorded date/time, chapter 3.4.1.2),
    else MSH-7 (date/time of message, chapter 2.14.9.7), else when the gateway received it.
    A timestamp without an offset is in ``zone`` (the sender's, HL7GW_SENDER_TZ / HL7GW_DEFAULT_TZ)."""
    moment = None
    if message.segment("EVN") is not None:
        moment = dtm_to_utc(message.get("EVN-2.1"), zone)
    if moment is None:
        moment = dtm_to_utc(message.get("MSH-7.1"), zone)
    if moment is None:
        moment = datetime.fromtimestamp(envelope.received_at / 1000, UTC).replace(tzinfo=None)
    return Source(
        message_id=envelope.id,
        sender=envelope.sender or message.sender,
        control_id=envelope.control_id or message.control_id,
        seq=envelope.seq,
        time=moment,
    )


def dtm_to_utc(text: str, zone: tzinfo | None = None) -> datetime | None:
    """A DTM (chapter 2A.22) as naive UTC at its own precision; None if invalid. Without an offset
    it is read in ``zone``, else as UTC (the same for every message of a sender, so they compare)."""
    dtm = parse_dtm(text) if text else None
    if dtm is None:
        return None
    micros = int((dtm.fraction or ".0")[1:7].ljust(6, "0"))
    local = datetime(
        int(dtm.year),
        int(dtm.month or 1),
        int(dtm.day or 1),
        int(dtm.hour or 0),
        int(dtm.minute or 0),
        int(dtm.second or 0),
        micros,
    )
    if dtm.offset is None:
        if zone is None:
            return local
        return local.replace(tzinfo=zone).astimezone(UTC).replace(tzinfo=None)
    sign = -1 if dtm.offset[0] == "-" else 1
    offset = timedelta(hours=int(dtm.offset[1:3]), minutes=int(dtm.offset[4:6]))
    return local - sign * offset
