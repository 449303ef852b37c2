"""Acknowledgements (HL7 v2 chapter 2.9: original and enhanced mode; ACK message chapter 2.14.1).

The ACK speaks the sender's dialect: its separators, version (MSH-12) and character set (MSH-18),
with sender and receiver swapped (chapter 2.9.2). Error reporting follows the version: ERR-1
(ELD) before v2.5, ERR-2..8 from v2.5 on (chapter 2.15.5); MSA-3 exists only before v2.7.

An ACK never grows with the message: each value it echoes of the message is cut to ``MAX_QUOTED``
characters and each error text to ``MAX_ERROR_TEXT``, a cut one ending in ``...`` (a 1 MB MSH-11
gets an ACK of a few hundred bytes, not of 2 MB).
"""

from __future__ import annotations

import functools
import itertools
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.errors import ParseError
from gateway.hl7.charset import codec_for
from gateway.hl7.escape import DEFAULT_SEPARATORS, Separators, escape
from gateway.hl7.message import Message, Segment, read_separators

#: Table 0008: original mode (AA accept, AE error, AR reject), enhanced mode commit (CA, CE, CR).
ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
#: Table 0516 error severity (F fatal since v2.7).
SEVERITIES = frozenset({"E", "W", "I", "F"})
#: Table 0357 message error condition codes.
ERROR_CONDITIONS = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
#: Version written in an ACK when the incoming one cannot be read.
DEFAULT_VERSION = "2.5.1"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LINE_END = re.compile(r"[\r\n]")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
#: Longest value of the message an ACK echoes (MSH-10 is at most 199 long in v2.7+; an HD in MSH-3..6
#: fits too), the cut marker included.
MAX_QUOTED = 200
#: Longest error text (ERR-8, ERR-1's text) an ACK carries, before escaping, the cut marker included.
MAX_ERROR_TEXT = 400
CUT_MARKER = "..."
_MSA3_LENGTH = 80  # ST length of MSA-3 in v2.3-2.6


@dataclass(frozen=True, slots=True)
class AckError:
    """One problem to report: ``code`` from table 0357, ``severity`` from table 0516."""

    code: str
    text: str
    segment: str = ""
    field: int | None = None
    severity: str = "E"

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not in HL7 table 0516 (E, W, I, F)")

    @classmethod
    def from_exception(cls, exc: BaseException) -> AckError:
        """An error for ``exc``; a ParseError keeps its code and location, anything else is 207."""
        if isinstance(exc, ParseError):
            field = exc.field if isinstance(exc.field, int) else None
            return cls(str(exc.code), str(exc), str(exc.segment or ""), field)
        return cls("207", str(exc) or type(exc).__name__)


@dataclass(frozen=True, slots=True)
class AckHeader:
    """The incoming MSH fields an ACK echoes, raw (still escaped) in ``seps``."""

    seps: Separators = DEFAULT_SEPARATORS
    encoding_characters: str = DEFAULT_SEPARATORS.encoding_characters
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    trigger: str = ""
    control_id: str = ""
    processing_id: str = ""
    version: str = ""
    charset: str = ""


def is_ack(message: Message) -> bool:
    return message.message_type[0] == "ACK"


def build_ack(
    message: Message,
    ack_code: str,
    *,
    errors: Sequence[AckError] = (),
    text: str = "",
    now: datetime | None = None,
    control_id: str | None = None,
) -> str:
    """The ACK for ``message`` as ER7 text, every segment terminated by CR.

    ``text`` goes to MSA-3 (versions before 2.7 only); explain errors with ``errors`` instead.
    Encode the result with ``charset.codec_for(message.msh.get(18))``: MSH-18 is copied.
    """
    header = header_of(message.msh, message.separators)
    return render_ack(header, ack_code, errors=errors, text=text, now=now, control_id=control_id)


def header_of(msh: Segment, seps: Separators) -> AckHeader:
    """What an ACK echoes of a parsed MSH segment written with ``seps``."""
    return header_from_fields([msh.field_raw(n) for n in range(19)], seps)


def header_from_fields(fields: Sequence[str], seps: Separators) -> AckHeader:
    """What an ACK echoes of an MSH split into raw fields, ``fields[n]`` being MSH-n."""

    def at(n: int) -> str:
        return quoted(_clean(fields[n]), seps) if n < len(fields) else ""

    return AckHeader(
        seps=seps,
        encoding_characters=fields[2][:MAX_QUOTED] if len(fields) > 2 else seps.encoding_characters,
        sending_application=at(3),
        sending_facility=at(4),
        receiving_application=at(5),
        receiving_facility=at(6),
        trigger=_second_component(at(9), seps),
        control_id=at(10),
        processing_id=at(11),
        version=at(12),
        charset=at(18),
    )


def _second_component(raw: str, seps: Separators) -> str:
    """MSH-9.2 (the trigger event) of a raw MSH-9."""
    parts = raw.split(seps.repetition, 1)[0].split(seps.component, 2)
    return parts[1] if len(parts) > 1 else ""


def render_ack(
    header: AckHeader,
    ack_code: str,
    *,
    errors: Sequence[AckError] = (),
    text: str = "",
    now: datetime | None = None,
    control_id: str | None = None,
) -> str:
    """The ACK answering the message ``header`` was read from, as ER7 text (see ``build_ack``)."""
    if errors or text:
        return _render(header, ack_code, errors, text, now, control_id)
    # The common case, an ACK without errors, differs from the last one for this header only in
    # MSH-7 and MSH-10: render it once, then fill those in.
    before, between, after = ack_template(header, ack_code)
    stamp = timestamp(now, header.seps)
    return f"{before}{stamp}{between}{control_id if control_id is not None else new_control_id()}{after}"


_STAMP, _ID = "\x00stamp\x00", "\x00id\x00"


@functools.lru_cache(maxsize=1024)
def ack_template(header: AckHeader, ack_code: str) -> tuple[str, str, str]:
    """``render_ack`` without errors, cut where MSH-7 (``timestamp``) and MSH-10 (``new_control_id``)
    go: ``before + timestamp + between + control id + after`` is the ACK."""
    text = _render(header, ack_code, (), "", None, _ID, stamp=_STAMP)
    before, rest = text.split(_STAMP, 1)
    between, after = rest.split(_ID, 1)
    return before, between, after


def build_reject_for_unreadable(raw: bytes | str, error: BaseException, *, now: datetime | None = None) -> str:
    """An AR for a message whose MSH cannot be parsed, echoing whatever of the header is readable.

    Never raises: this is the answer of last resort.
    """
    try:
        problem = AckError.from_exception(error)
    except Exception:
        problem = AckError("207", "unreadable message")
    header = salvage_header(raw)
    try:
        return _render(header, "AR", [problem], "", now, None)
    except Exception:
        return _render(AckHeader(), "AR", [AckError("207", "unreadable message")], "", None, None)


def new_control_id() -> str:
    """20 hex digits, unique in practice and within MSH-10's ST(20) of v2.3-2.6: 8 random ones
    drawn once per process, then a counter (cheaper than 20 random digits per ACK)."""
    return f"{_CONTROL_PREFIX}{next(_control_numbers) & _CONTROL_MASK:012x}"


_CONTROL_PREFIX = secrets.token_hex(4)
_CONTROL_MASK = (1 << 48) - 1
_control_numbers = itertools.count(secrets.randbelow(1 << 40))


def _render(
    header: AckHeader,
    ack_code: str,
    errors: Sequence[AckError],
    text: str,
    now: datetime | None,
    control_id: str | None,
    stamp: str | None = None,
) -> str:
    if ack_code not in ACK_CODES:
        raise ValueError(f"acknowledgment code {ack_code!r} is not in HL7 table 0008")
    seps = header.seps
    version = _version_tuple(header.version, seps)
    c = seps.component
    message_type = f"ACK{c}{header.trigger}" if version < (2, 3, 1) else f"ACK{c}{header.trigger}{c}ACK"
    msh = [
        "MSH",
        header.encoding_characters,
        header.receiving_application,  # MSH-3..6: sender and receiver swapped (chapter 2.9.2)
        header.receiving_facility,
        header.sending_application,
        header.sending_facility,
        stamp if stamp is not None else timestamp(now, seps),
        "",
        message_type,
        control_id if control_id is not None else new_control_id(),
        header.processing_id or "P",
        header.version or escape(DEFAULT_VERSION, seps),
    ]
    if header.charset:
        msh += [""] * 5 + [header.charset]  # MSH-13..17 empty, MSH-18
    msa = ["MSA", ack_code, header.control_id]
    if version < (2, 7):  # MSA-3 withdrawn in v2.7
        message_text = text or (errors[0].text if errors and version < (2, 5) else "")
        if message_text:
            msa.append(escape(message_text[:_MSA3_LENGTH], seps))
    segments = [msh, msa]
    if errors and version < (2, 5):
        # v2.3/2.4: one ERR whose ERR-1 (ELD) repeats; the ACK structure allows a single ERR.
        segments.append(["ERR", seps.repetition.join(_error_location_and_code(e, seps) for e in errors)])
    else:
        segments.extend(_err_segment(e, seps) for e in errors)
    return "".join(seps.field.join(_trim(s)) + "\r" for s in segments)


def _trim(fields: list[str]) -> list[str]:
    """Drop trailing empty fields (an absent field and an empty one are the same in ER7)."""
    end = len(fields)
    while end > 1 and not fields[end - 1]:
        end -= 1
    return fields[:end]


def _err_segment(error: AckError, seps: Separators) -> list[str]:
    """ERR for v2.5+: ERR-2 location (ERL), ERR-3 code (CWE, table 0357), ERR-4 severity, ERR-8 text."""
    c = seps.component
    location = ""
    if error.segment:
        location = f"{escape(error.segment[:MAX_QUOTED], seps)}{c}1"
        if error.field is not None:
            location += f"{c}{error.field}"
    code = escape(error.code[:MAX_QUOTED], seps)
    condition = f"{code}{c}{ERROR_CONDITIONS.get(error.code, '')}{c}HL70357"
    return ["ERR", "", location, condition, error.severity, "", "", "", escape(_error_text(error.text), seps)]


def _error_location_and_code(error: AckError, seps: Separators) -> str:
    """ERR-1 (ELD) for v2.3/2.4: segment^sequence^field^code&text&HL70357."""
    c, s = seps.component, seps.subcomponent
    position = "" if error.field is None else str(error.field)
    code = escape(error.code[:MAX_QUOTED], seps)
    return c.join(
        [
            escape(error.segment[:MAX_QUOTED], seps),
            "",
            position,
            f"{code}{s}{ERROR_CONDITIONS.get(error.code, '')}{s}HL70357",
        ]
    )


def salvage_header(raw: bytes | str) -> AckHeader:
    """What is readable of a broken MSH (separators, MSH-3..6, 9.2, 10, 11, 12 and 18), for an
    answer to a message that cannot be parsed; the default header when nothing is. Never raises."""
    try:
        return _salvage_header(raw)
    except Exception:
        return AckHeader()


def _salvage_header(raw: bytes | str) -> AckHeader:
    text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8", errors="replace")
    line = _LINE_END.split(text.lstrip("\ufeff\r\n\t \x0b")[:8192], 1)[0]
    if len(line) < 4 or not line.startswith("MSH"):
        return AckHeader()
    try:
        seps = read_separators(line)
        encoding_characters = seps.encoding_characters
    except ParseError:
        try:  # the field separator may still be usable with the default encoding characters
            seps = read_separators(f"MSH{line[3]}{DEFAULT_SEPARATORS.encoding_characters}")
        except ParseError:
            return AckHeader()
        encoding_characters = seps.encoding_characters
    fields = ["", *line.split(seps.field)]  # fields[n] is MSH-n, shifted by one for MSH-1 (2.14.9)
    fields[1] = seps.field

    def at(n: int) -> str:
        return quoted(_clean(fields[n]), seps) if n < len(fields) else ""

    trigger_parts = at(9).split(seps.component)
    charset = at(18).split(seps.repetition)[0]
    try:
        codec_for(charset)
    except ParseError:
        charset = ""  # do not declare, in our own reply, a character set we cannot use
    return AckHeader(
        seps=seps,
        encoding_characters=encoding_characters,
        sending_application=at(3),
        sending_facility=at(4),
        receiving_application=at(5),
        receiving_facility=at(6),
        trigger=trigger_parts[1] if len(trigger_parts) > 1 else "",
        control_id=at(10),
        processing_id=at(11),
        version=at(12),
        charset=charset,
    )


def quoted(raw: str, seps: Separators, limit: int = MAX_QUOTED) -> str:
    """``raw`` (an escaped field value) cut to ``limit`` characters with ``CUT_MARKER``, never in the
    middle of an escape sequence; the marker is left out when "." is one of the sender's delimiters."""
    if len(raw) <= limit:
        return raw
    marker = "" if "." in seps.specials else CUT_MARKER
    cut = raw[: limit - len(marker)]
    if seps.escape and cut.count(seps.escape) % 2:
        cut = cut[: cut.rindex(seps.escape)]
    return cut + marker


def _error_text(text: str) -> str:
    """An error's text (not escaped yet) cut to ``MAX_ERROR_TEXT`` characters."""
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - len(CUT_MARKER)] + CUT_MARKER


def _clean(value: str) -> str:
    """Drop control characters from an echoed raw value: 0x0B and 0x1C would break MLLP framing."""
    return value if value.isprintable() else _CONTROL.sub("", value)


def _version_tuple(raw_version: str, seps: Separators) -> tuple[int, ...]:
    """(major, minor, patch) from MSH-12.1; an unreadable version counts as the default one."""
    return _parse_version(raw_version.split(seps.component, 1)[0].strip())


@functools.lru_cache(maxsize=256)
def _parse_version(version: str) -> tuple[int, ...]:
    match = _VERSION.match(version)
    if match is None:
        match = _VERSION.match(DEFAULT_VERSION)
        assert match is not None
    return tuple(int(part or 0) for part in match.groups())


def timestamp(now: datetime | None, seps: Separators) -> str:
    """MSH-7 of an ACK written at ``now`` (None: now) with ``seps``: DTM with four fractional digits
    and the UTC offset, e.g. 20240101120000.1234+0100; a part whose punctuation is one of the
    sender's delimiters is left out (both are optional in DTM)."""
    if now is None:
        seconds, fraction = divmod(time.time(), 1.0)
        stamp, offset = _local_second(int(seconds))
        tenths_of_ms = min(int(fraction * 10_000), 9_999)
    else:
        moment = now if now.tzinfo is not None else now.astimezone()
        stamp, offset = f"{moment:%Y%m%d%H%M%S}", f"{moment:%z}"[:5]
        tenths_of_ms = moment.microsecond // 100
    specials = seps.specials
    if "." not in specials:
        stamp += f".{tenths_of_ms:04d}"
    if offset[:1] not in specials:
        stamp += offset
    return stamp


@functools.lru_cache(maxsize=4)
def _local_second(epoch_second: int) -> tuple[str, str]:
    """``YYYYMMDDHHMMSS`` and ``+ZZZZ`` of a second in local time (ACKs in one second share it)."""
    moment = datetime.fromtimestamp(epoch_second).astimezone()
    return f"{moment:%Y%m%d%H%M%S}", f"{moment:%z}"[:5]
