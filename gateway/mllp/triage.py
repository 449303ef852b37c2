"""What the listener does with one received frame, decided from its header before anything is stored.

A receiver rejects at intake only what it cannot take at all (HL7 v2 chapter 2.9.2/2.9.3 and
table 0357): a header it cannot read (100/102), a message type it has no use for (200/201), a
processing id (202) or version (203) it does not accept. Bytes the declared character set cannot
read get AE (chapter 2.14.9.18). Everything else is accepted: content errors are the pipeline's
business and end in the dead-letter store, not in the ACK. An incoming ACK is never answered.

Every verdict names the kind of envelope it becomes (gateway/envelope.py Kind): a message to
process, a rejected one kept raw for operators (a dead letter), or an incoming ACK kept in the archive.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.envelope import Kind
from gateway.errors import CharsetError, ParseError
from gateway.hl7.ack import AckError, AckHeader, header_from_fields, render_ack, salvage_header
from gateway.hl7.ackmode import ORIGINAL, AckMode
from gateway.hl7.charset import ack_codec, decode_message
from gateway.hl7.escape import Separators, unescape
from gateway.hl7.message import read_separators
from gateway.mllp.framing import COMMIT_ACK, COMMIT_NAK, encode_frame
from gateway.queue.entry import Received

#: Every published HL7 v2 version up to 2.8.2 (MSH-12.1).
DEFAULT_VERSIONS = frozenset("2.1 2.2 2.3 2.3.1 2.4 2.5 2.5.1 2.6 2.7 2.7.1 2.8 2.8.1 2.8.2".split())
#: Table 0103: production, training, debugging.
DEFAULT_PROCESSING_IDS = frozenset({"P", "T", "D"})

_LINE_END = re.compile(r"[\r\n]")


@dataclass(frozen=True, slots=True)
class IntakeRules:
    """What the receiver accepts; ``supports(code, trigger)`` None means every message type."""

    versions: frozenset[str] = DEFAULT_VERSIONS
    processing_ids: frozenset[str] = DEFAULT_PROCESSING_IDS
    supports: Callable[[str, str], bool] | None = None
    #: Message codes (MSH-9.1) with at least one supported trigger: tells 200 from 201.
    known_codes: frozenset[str] = frozenset()
    #: False: an unsupported type is accepted (AA) and becomes a dead letter at conversion.
    reject_unsupported: bool = True
    #: False: answer every message in original mode (AA/AE/AR) whatever MSH-15/16 ask, for senders
    #: that fill those fields from a template but only understand original-mode ACKs.
    honour_enhanced_mode: bool = True


#: HL7 table 0357 code 207: application internal error (our storage is unavailable).
STORAGE_FAILED = "207"


class Judgement(Protocol):
    """What the listener decided about one frame, by either path: the full triage (Verdict) or
    the header profile's fast path (gateway/mllp/profiles.py Profiled)."""

    @property
    def kind(self) -> Kind: ...

    @property
    def sender(self) -> str: ...

    @property
    def control_id(self) -> str: ...

    @property
    def message_type(self) -> str: ...

    @property
    def reason(self) -> str: ...

    def received(self, raw: bytes, peer: str) -> Received:
        """What the intake commits for the frame."""
        ...

    def reply(self, *, stored: bool, commit_acks: bool = False, storage_problem: str = "") -> bytes:
        """The framed answer once the commit is known; b"" when nothing is to be sent.

        Commit before ACK (chapter 2.9): AA/CA only when the message is stored. When storing
        failed the answer is AR/CR with ERR 207 first, whatever the verdict was: nothing is
        claimed as accepted, and the sender keeps the message and sends it again. An incoming
        ACK gets no HL7 answer at all. With MLLP release 2 commit acknowledgements on, the
        commit ACK (or NAK) block goes first."""
        ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one frame, and what its acknowledgement is built from."""

    kind: Kind
    #: Original-mode outcome, AA, AE or AR; ``mode`` turns it into CA/CE/CR or suppresses it.
    outcome: str
    header: AckHeader
    mode: AckMode = ORIGINAL
    #: Codec the ACK is written in: the message's own MSH-18.
    codec: str = "utf-8"
    errors: tuple[AckError, ...] = ()
    #: "application|facility" (MSH-3.1, MSH-4.1) and MSH-10, "" when unreadable.
    sender: str = ""
    control_id: str = ""
    message_type: str = ""

    @property
    def reason(self) -> str:
        """One line for operators: the outcome and every error with its location."""
        if not self.errors:
            return self.outcome
        return f"{self.outcome}: " + "; ".join(_describe(e) for e in self.errors)

    def received(self, raw: bytes, peer: str) -> Received:
        meta = None if self.kind == Kind.MESSAGE else {"reason": self.reason, "message_type": self.message_type}
        return Received(raw, self.sender, self.control_id, peer, self.kind, meta)

    def reply(self, *, stored: bool, commit_acks: bool = False, storage_problem: str = "") -> bytes:
        """See ``Judgement.reply``."""
        reply = encode_frame(COMMIT_ACK if stored else COMMIT_NAK) if commit_acks else b""
        if self.kind == Kind.ACK:
            return reply
        outcome, errors = self.outcome, self.errors
        if not stored:
            problem = AckError(
                STORAGE_FAILED, f"message not stored, send it again later: {storage_problem}".rstrip(": ")
            )
            outcome, errors = "AR", (problem, *errors)
        if not self.mode.wants(outcome):
            return reply
        text = render_ack(self.header, self.mode.code(outcome), errors=errors)
        return reply + encode_frame(text.encode(self.codec, errors="replace"))


class Triage:
    def __init__(self, rules: IntakeRules | None = None):
        self.rules = rules or IntakeRules()

    def decide(self, frame: bytes) -> Verdict:
        """The verdict for one MLLP payload. Never raises."""
        try:
            return self._decide(frame)
        except Exception as exc:  # noqa: BLE001 - a bug here must still produce an answer
            return self.kept(frame, AckError("207", f"internal error reading the message: {type(exc).__name__}"))

    def kept(self, raw: bytes, error: AckError) -> Verdict:
        """A rejected verdict for bytes that are not a whole readable message (unreadable,
        oversized, unfinished): AR with ``error``, echoing whatever of the header is readable."""
        header = salvage_header(raw)
        component = header.seps.component
        sender = ""
        if header.sending_application or header.sending_facility:
            app = header.sending_application.split(component, 1)[0]
            sender = f"{app}|{header.sending_facility.split(component, 1)[0]}"
        return Verdict(
            Kind.REJECTED,
            "AR",
            header,
            codec=ack_codec(header.charset),
            errors=(error,),
            sender=sender,
            control_id=header.control_id,
        )

    def _decide(self, frame: bytes) -> Verdict:
        charset_error: CharsetError | None = None
        try:
            text = decode_message(frame)
        except CharsetError as exc:
            charset_error = exc
            text = frame.decode("utf-8", errors="replace")
        stripped = text.lstrip("\ufeff\r\n\t \x0b")
        found = _LINE_END.search(stripped)
        line = stripped if found is None else stripped[: found.start()]
        try:
            seps = _separators(line[:10])  # MSH, the field separator and up to 5 encoding characters
        except ParseError:
            try:
                seps = read_separators(line)
            except ParseError as exc:
                return self.kept(frame, AckError.from_exception(exc))
        if not line.startswith("MSH"):  # FHS/BHS: an HL7 batch (chapter 2.10.3)
            problem = AckError("200", "batches (FHS/BHS) are not accepted; send one message per frame", "MSH")
            return self.kept(frame, problem)
        fields = ["", seps.field, *line[4:].split(seps.field)]  # fields[n] is MSH-n (chapter 2.14.9)
        fields += [""] * (19 - len(fields))
        code, trigger = _components(fields[9], seps, 2)
        control_id = _component(fields[10], seps)
        verdict = Verdict(
            Kind.MESSAGE,
            "AA",
            header_from_fields(fields, seps),
            mode=_mode(fields[15], fields[16], seps) if self.rules.honour_enhanced_mode else ORIGINAL,
            codec=ack_codec(fields[18].split(seps.repetition, 1)[0]),
            sender=f"{_component(fields[3], seps)}|{_component(fields[4], seps)}",
            control_id=control_id,
            message_type=f"{code}^{trigger}" if trigger else code,
        )
        if code == "ACK":  # chapter 2.9: an acknowledgement is never acknowledged
            return replace(verdict, kind=Kind.ACK)
        errors = self._header_errors(fields, seps, code, trigger, control_id)
        if errors:
            return replace(verdict, kind=Kind.REJECTED, outcome="AR", errors=tuple(errors))
        if charset_error is not None:
            return replace(verdict, kind=Kind.REJECTED, outcome="AE", errors=(AckError.from_exception(charset_error),))
        return verdict

    def _header_errors(
        self, fields: list[str], seps: Separators, code: str, trigger: str, control_id: str
    ) -> list[AckError]:
        rules = self.rules
        errors: list[AckError] = []
        if not control_id:
            errors.append(AckError("101", "MSH-10 (message control id) is empty", "MSH", 10))
        version = _component(fields[12], seps)
        if version not in rules.versions:
            accepted = ", ".join(sorted(rules.versions))
            errors.append(AckError("203", f"version {version!r} is not accepted (accepted: {accepted})", "MSH", 12))
        processing_id = _component(fields[11], seps)
        if processing_id.upper() not in rules.processing_ids:
            accepted = ", ".join(sorted(rules.processing_ids))
            errors.append(
                AckError("202", f"processing id {processing_id!r} is not accepted (accepted: {accepted})", "MSH", 11)
            )
        if rules.reject_unsupported and rules.supports is not None and not rules.supports(code, trigger):
            if code in rules.known_codes:
                errors.append(AckError("201", f"event {trigger!r} of {code} has no mapping", "MSH", 9))
            else:
                errors.append(AckError("200", f"message type {code!r} has no mapping", "MSH", 9))
        return errors


_separators = functools.lru_cache(maxsize=64)(read_separators)


def _component(raw: str, seps: Separators) -> str:
    """First component of the first repetition of a raw field, unescaped and stripped."""
    value = raw.split(seps.repetition, 1)[0].split(seps.component, 1)[0]
    return (unescape(value, seps) if seps.escape in value else value).strip()


def _mode(msh15: str, msh16: str, seps: Separators) -> AckMode:
    if not msh15 and not msh16:
        return ORIGINAL
    first = [unescape(f.split(seps.repetition, 1)[0], seps) for f in (msh15, msh16)]
    return AckMode.from_fields(*first)


def _components(raw: str, seps: Separators, count: int) -> list[str]:
    """The first ``count`` components of the first repetition of a raw field, unescaped and stripped."""
    parts = raw.split(seps.repetition, 1)[0].split(seps.component, count)[:count]
    parts += [""] * (count - len(parts))
    return [(unescape(p, seps) if seps.escape in p else p).strip() for p in parts]


def _describe(error: AckError) -> str:
    where = error.segment + (f"-{error.field}" if error.field else "")
    return f"{error.code} {where} {error.text}" if where else f"{error.code} {error.text}"
