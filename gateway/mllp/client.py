"""``hl7gw send``: an MLLP client that sends messages from files and reports every ACK.

Files hold one or many messages, segments ending in CR, LF or CRLF. A message starts at each MSH
line; batch envelope lines (FHS, BHS, BTS, FTS) are left out, so a batch file is sent as its
messages. Messages go one at a time (send, wait for the ACK), as MLLP senders do.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass

from gateway.mllp.framing import COMMIT_ACK, COMMIT_NAK, FrameDecoder, FramingError, encode_frame

_LINES = re.compile(rb"\r\n|\r|\n")
_BATCH_LINES = (b"FHS", b"BHS", b"BTS", b"FTS")
#: ACK codes that mean the message was not accepted (table 0008).
FAILED_CODES = frozenset({"AE", "AR", "CE", "CR"})


@dataclass(frozen=True, slots=True)
class Exchange:
    """One sent message and what came back."""

    control_id: str
    ack: bytes | None = None
    #: MSA-1, or "" when no ACK came.
    code: str = ""
    #: Why the exchange failed without an ACK code ("timeout", "NAK", a connection error), or "".
    problem: str = ""
    #: No ACK was expected (MSH-15 NE).
    unanswered: bool = False

    @property
    def ok(self) -> bool:
        return not self.problem and self.code not in FAILED_CODES and (self.unanswered or bool(self.code))


def split_messages(data: bytes) -> list[bytes]:
    """The messages in ``data``, each with CR segment terminators; framing bytes and blank lines dropped."""
    data = data.replace(b"\x0b", b"").replace(b"\x1c", b"")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    messages: list[list[bytes]] = []
    for line in _LINES.split(data):
        if not line.strip() or line[:3] in _BATCH_LINES:
            continue
        if line.startswith(b"MSH") or not messages:
            messages.append([])
        messages[-1].append(line)
    return [b"".join(segment + b"\r" for segment in segments) for segments in messages]


def header_field(message: bytes, number: int) -> str:
    """MSH-``number`` (first component) of ``message``, "" when absent."""
    header = message.split(b"\r", 1)[0]
    if len(header) < 4:
        return ""
    fields = header.split(header[3:4])  # fields[n - 1] is MSH-n for n >= 2
    if number - 1 >= len(fields):
        return ""
    return fields[number - 1].split(b"^", 1)[0].decode("utf-8", errors="replace").strip()


async def send_messages(
    messages: list[bytes], host: str, port: int, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0
) -> list[Exchange]:
    """Send each message on one connection and wait for its ACK (MLLP release 2 commit
    acknowledgements are read past; a commit NAK fails the message)."""
    results: list[Exchange] = []
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ssl_context), timeout)
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        problem = f"cannot connect to {host}:{port}: {exc or type(exc).__name__}"
        return [Exchange(header_field(m, 10), problem=problem) for m in messages]
    decoder = FrameDecoder()
    frames: list[bytes] = []
    try:
        for message in messages:
            control_id = header_field(message, 10)
            try:
                writer.write(encode_frame(message))
                await writer.drain()
                if header_field(message, 15).upper() == "NE":  # enhanced mode, no accept ACK wanted
                    results.append(Exchange(control_id, unanswered=True))
                    continue
                results.append(await _read_ack(reader, decoder, frames, control_id, timeout))
            except (OSError, ssl.SSLError, ValueError) as exc:
                results.append(Exchange(control_id, problem=f"send failed: {exc or type(exc).__name__}"))
            if results[-1].problem:
                break
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass
    return results + [Exchange(header_field(m, 10), problem="not sent") for m in messages[len(results) :]]


async def _read_ack(
    reader: asyncio.StreamReader, decoder: FrameDecoder, frames: list[bytes], control_id: str, timeout: float
) -> Exchange:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        while frames:
            frame = frames.pop(0)
            if frame == COMMIT_ACK:
                continue
            if frame == COMMIT_NAK:
                return Exchange(control_id, problem="NAK: the receiver did not commit the message")
            return Exchange(control_id, ack=frame, code=_msa1(frame))
        remaining = deadline - loop.time()
        if remaining <= 0:
            return Exchange(control_id, problem=f"timeout: no ACK in {timeout:g} s")
        try:
            data = await asyncio.wait_for(reader.read(65536), remaining)
        except TimeoutError:
            return Exchange(control_id, problem=f"timeout: no ACK in {timeout:g} s")
        if not data:
            return Exchange(control_id, problem="connection closed by the receiver before an ACK")
        try:
            frames += decoder.feed(data)
        except FramingError as exc:
            frames += exc.frames


def _msa1(ack: bytes) -> str:
    for segment in _LINES.split(ack):
        if segment.startswith(b"MSA") and len(segment) > 4:
            return segment.split(segment[3:4])[1].decode("ascii", errors="replace").strip()
    return ""
