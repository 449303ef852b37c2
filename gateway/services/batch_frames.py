"""MLLP frames that hold a batch (FHS/BHS first): every message through the listener's own
triage and intake, one batch acknowledgement back (docs/batch.md, Batches over MLLP).

The listener (gateway/mllp/server.py) takes this as its ``batches`` answer; the mllp unit may not
use the services, so the process wires it in (gateway/services/listener.py). The messages go
through the feeder of ``hl7gw import`` (gateway/services/batch_feed.py) on the listener's intake:
the live queue, the same group commit, the same duplicate check and rejection rules as single
frames. The connection commits the frames before a batch frame first and holds those after it
until it is answered, so a sender's messages keep their arrival order.
"""

from __future__ import annotations

import io
import logging
import sys

from gateway.hl7.batch import read_batch
from gateway.mllp.profiles import Profiles
from gateway.queue.intake import Intake
from gateway.services.batch_answer import batch_acknowledgement, not_accepted
from gateway.services.batch_feed import BatchFeeder

log = logging.getLogger(__name__)


class BatchFrames:
    """Answers a batch frame: ``await frames(payload, peer)`` is its batch ACK (unframed)."""

    def __init__(self, intake: Intake, profiles: Profiles, *, max_message_bytes: int):
        self.intake, self.profiles, self.max_message_bytes = intake, profiles, max_message_bytes

    async def __call__(self, payload: bytes, peer: str) -> bytes:
        # The frame is in memory already (HL7GW_MLLP_MAX_MESSAGE_BYTES at most): no window limit
        # beyond it, and every message not accepted listed in the answer.
        feeder = BatchFeeder(
            self.intake,
            self.profiles,
            peer=peer,
            window_bytes=2 * len(payload) + 1,
            max_problems=sys.maxsize,
        )
        report = await feeder.feed(read_batch(io.BytesIO(payload), max_message_bytes=self.max_message_bytes))
        rest = read_batch(io.BytesIO(payload), max_message_bytes=self.max_message_bytes) if report.error else ()
        ack = batch_acknowledgement(report, rest)
        log.log(
            logging.WARNING if report.error or report.mismatch else logging.INFO,
            "batch frame of %d bytes from %s: %d message(s) read, %d accepted, %d duplicate(s), "
            "%d not accepted%s%s; answered with a batch ACK",
            len(payload),
            peer,
            report.read + report.pieces,
            report.accepted,
            report.duplicates,
            not_accepted(report),
            "; BTS-1/FTS-1 count mismatch" if report.mismatch else "",
            f"; {report.error}" if report.error else "",
            extra={"outcome": "batch"},
        )
        return ack
