"""The bytes written back for one received frame, once its commit is known.

Commit before ACK (chapter 2.9): AA/CA only when the message is stored. When storing failed the
answer is AR/CR with ERR 207 first, whatever the verdict was: nothing is claimed as accepted, and
the sender keeps the message and sends it again. An incoming ACK gets no HL7 answer at all.
With MLLP release 2 commit acknowledgements on, the commit ACK (or NAK) block goes first.
"""

from __future__ import annotations

from gateway.envelope import Kind
from gateway.hl7.ack import AckError, render_ack
from gateway.mllp.framing import COMMIT_ACK, COMMIT_NAK, encode_frame
from gateway.mllp.triage import Verdict

#: HL7 table 0357 code 207: application internal error (our storage is unavailable).
STORAGE_FAILED = "207"


def answer(verdict: Verdict, *, stored: bool, commit_acks: bool = False, storage_problem: str = "") -> bytes:
    """Framed reply for a frame judged ``verdict``; b"" when nothing is to be sent."""
    reply = encode_frame(COMMIT_ACK if stored else COMMIT_NAK) if commit_acks else b""
    if verdict.kind == Kind.ACK:
        return reply
    outcome, errors = verdict.outcome, verdict.errors
    if not stored:
        problem = AckError(STORAGE_FAILED, f"message not stored, send it again later: {storage_problem}".rstrip(": "))
        outcome, errors = "AR", (problem, *errors)
    if not verdict.mode.wants(outcome):
        return reply
    text = render_ack(verdict.header, verdict.mode.code(outcome), errors=errors)
    return reply + encode_frame(text.encode(verdict.codec, errors="replace"))
