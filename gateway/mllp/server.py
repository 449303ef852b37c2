"""The asyncio MLLP listener: frames in, durable commit, ACK out, in order per connection.

Each frame is handled as its own task so that one connection's pipelined messages and all other
connections' messages share a group commit; ACKs are still written in the order frames arrived.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from gateway.envelope import Envelope
from gateway.errors import CharsetError, IntakeUnavailable, ParseError
from gateway.hl7.ack import AckError, build_ack, build_reject_for_unreadable
from gateway.hl7.charset import codec_for, decode_message
from gateway.hl7.message import Message, parse
from gateway.mllp.framing import FrameDecoder, FramingError, encode_frame
from gateway.queue.intake import Intake

log = logging.getLogger(__name__)

#: HL7 table 0357 code 207: application internal error (our storage is unavailable).
_ERR_INTERNAL = "207"


@dataclass
class ListenerStats:
    connections: int = 0
    accepted: int = 0
    rejected: int = 0
    discarded_bytes: int = 0
    open_connections: int = 0
    _started: float = field(default_factory=time.monotonic)


class MllpServer:
    def __init__(self, intake: Intake, *, max_frame_bytes: int = 10 * 1024 * 1024, read_size: int = 65536):
        self.intake = intake
        self.max_frame_bytes = max_frame_bytes
        self.read_size = read_size
        self.stats = ListenerStats()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0 picks a free one); returns the bound port."""
        self._server = await asyncio.start_server(self._on_connection, host, port, limit=self.read_size * 4)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("MLLP listening on %s:%d", host, bound)
        return bound

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, let every started frame get its ACK, then close connections."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_timeout)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.stats.connections += 1
        self.stats.open_connections += 1
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            await self._serve(reader, writer, peer_text)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("connection %s dropped: %s", peer_text, exc)
        finally:
            self.stats.open_connections -= 1
            self._connections.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        decoder = FrameDecoder(max_frame_bytes=self.max_frame_bytes)
        replies: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._write_replies(replies, writer))
        try:
            while not self._closing:
                reading = asyncio.ensure_future(reader.read(self.read_size))
                done, _ = await asyncio.wait({reading, sender}, return_when=asyncio.FIRST_COMPLETED)
                if sender in done:  # the peer stopped reading our ACKs
                    reading.cancel()
                    break
                data = reading.result()
                if not data:
                    break
                before = decoder.discarded_bytes
                failure: FramingError | None = None
                try:
                    frames = decoder.feed(data)
                except FramingError as exc:
                    failure, frames = exc, exc.frames
                self.stats.discarded_bytes += decoder.discarded_bytes - before
                # Frames completed before a framing error still get their answers.
                for frame in frames:
                    await replies.put(asyncio.create_task(self._handle_frame(frame, peer)))
                if failure is not None:
                    log.warning("closing %s: %s", peer, failure)
                    break
        finally:
            await replies.put(None)
            await sender

    async def _write_replies(self, replies: asyncio.Queue[asyncio.Task[bytes] | None], writer: asyncio.StreamWriter) -> None:
        while True:
            task = await replies.get()
            if task is None:
                return
            ack = await task
            writer.write(encode_frame(ack))
            await writer.drain()

    async def _handle_frame(self, frame: bytes, peer: str) -> bytes:
        """Commit one message and return its ACK bytes; never raises."""
        try:
            text = decode_message(frame)
            message = parse(text)
        except ParseError as exc:  # includes CharsetError
            self.stats.rejected += 1
            log.info("rejected unreadable message from %s: %s", peer, exc)
            return _encode(build_reject_for_unreadable(frame, exc))
        envelope = Envelope(
            id=str(uuid.uuid4()),
            raw=frame,
            received_at=int(time.time() * 1000),
            sender=message.sender,
            control_id=message.control_id,
            peer=peer,
        )
        try:
            await self.intake.submit(envelope)
        except IntakeUnavailable as exc:
            self.stats.rejected += 1
            error = AckError(code=_ERR_INTERNAL, text=f"message not stored, resend later: {exc}")
            return _encode(build_ack(message, "AR", errors=[error]), message)
        except Exception as exc:  # noqa: BLE001 - a bug here must still answer, and answer "not accepted"
            log.exception("intake failed unexpectedly")
            self.stats.rejected += 1
            error = AckError(code=_ERR_INTERNAL, text=f"internal error: {type(exc).__name__}")
            return _encode(build_ack(message, "AR", errors=[error]), message)
        self.stats.accepted += 1
        return _encode(build_ack(message, "AA"), message)


def _encode(ack: str, message: Message | None = None) -> bytes:
    """Encode an ACK in the character set of the message it answers (its MSH-18 is echoed)."""
    codec = "utf-8"
    if message is not None:
        try:
            codec = codec_for(message.msh.get(18))
        except CharsetError:
            pass
    return ack.encode(codec, errors="replace")
