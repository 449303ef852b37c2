"""One MLLP connection: bytes in, a verdict and a commit per frame, ACKs out in arrival order.

A plain asyncio Protocol: no task or coroutine per frame. Each frame is judged at once and handed
to the shared group commit; its answer is written when it and every frame before it on this
connection are committed, all ready answers in one write.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import deque
from typing import Protocol

from gateway import logcontext
from gateway.hl7.ack import AckError
from gateway.hl7.batch import looks_like_batch
from gateway.mllp.framing import COMMIT_ACK, COMMIT_NAK, FrameDecoder, FrameTooLarge, FramingError
from gateway.mllp.limits import Limits, ListenerStats
from gateway.mllp.peers import Address, peer_address
from gateway.mllp.profiles import Profiles
from gateway.mllp.triage import Judgement, Triage
from gateway.queue.entry import new_envelope_id
from gateway.queue.intake import Intake, Receipt


class Listener(Protocol):
    """What a connection needs of the listener that accepted it (gateway/mllp/server.py Listener)."""

    limits: Limits
    stats: ListenerStats
    intake: Intake
    triage: Triage
    profiles: Profiles

    def admit(self, conn: MllpConnection) -> bool: ...

    def ready(self, conn: MllpConnection) -> None: ...

    def forget(self, conn: MllpConnection) -> None: ...

    def settle(self, judgement: Judgement, receipt: Receipt | None, error: BaseException | None) -> bytes: ...

    @property
    def takes_batches(self) -> bool: ...

    async def answer_batch(self, payload: bytes, peer: str) -> bytes: ...

    @property
    def ssl_context(self) -> ssl.SSLContext | None: ...

    def answer_blank(self, size: int, peer: str) -> bytes: ...

    def frame_unfinished(self, reason: str) -> None: ...


log = logging.getLogger(__name__)


class _Slot:
    """One frame waiting for its commit; ``reply`` is set (maybe to b"") once the outcome is known.
    Its outcome is settled with the message named in the log context (gateway/logcontext.py)."""

    __slots__ = ("conn", "envelope_id", "judgement", "reply")

    def __init__(self, conn: MllpConnection, judgement: Judgement, envelope_id: str):
        self.conn = conn
        self.judgement = judgement
        self.envelope_id = envelope_id
        self.reply: bytes | None = None

    def __call__(self, receipt: Receipt | None, error: BaseException | None) -> None:
        conn, judgement = self.conn, self.judgement
        # A duplicate or a failed commit keeps nothing: its envelope id names nothing to follow.
        kept = error is None and not (receipt is not None and receipt.duplicate)
        with logcontext.message_context(self.envelope_id if kept else "", judgement.sender, judgement.control_id):
            self.reply = conn.server.settle(judgement, receipt, error)
        conn.server.ready(conn)


class _ReplySlot:
    """A frame whose answer is not one commit's: a batch (gateway/mllp/batch_frames.py), answered
    by one batch ACK once every message in it is committed, or a blank frame, answered at once."""

    __slots__ = ("reply",)

    def __init__(self) -> None:
        self.reply: bytes | None = None


class MllpConnection(asyncio.Protocol):
    def __init__(self, server: Listener):
        self.server = server
        self.loop = asyncio.get_running_loop()
        #: The intake lane this connection's frames are committed on, in arrival order; chosen
        #: again only when every earlier frame is answered.
        self.lane = 0
        limits = server.limits
        self.decoder = FrameDecoder(limits.max_message_bytes, limits.require_trailing_cr, keep_cut_off=True)
        self.slots: deque[_Slot | _ReplySlot] = deque()
        #: A batch frame is being committed: later frames wait in ``held`` (so that every frame of
        #: the connection is committed in arrival order), and reading pauses.
        self.batch_running = False
        self.held: deque[bytes] = deque()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        #: The peer's source address (None: not an IP), for the allow-list and the per-peer limit.
        self.address: Address | None = None
        #: When a frame last started or ended, for the idle timeout (bytes outside frames do not count).
        self.last_activity = time.monotonic()
        #: When the unfinished frame started (None: between frames), for the frame timeout.
        self.frame_started: float | None = None
        #: No more frames are read; the connection closes once every answer is written.
        self.closing = False
        self.lost = False
        self._reading_paused = False
        self._writing_paused = False
        self._handshake: asyncio.Task[None] | None = None

    # -- asyncio callbacks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = writable = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        self.address = peer_address(str(peer[0])) if isinstance(peer, tuple) else None
        if not self.server.admit(self):
            self.lost = True
            writable.abort()  # type: ignore[attr-defined]
            return
        _keepalive(transport.get_extra_info("socket"))
        context = self.server.ssl_context
        if context is not None:
            # TLS only once the address is admitted, so a refused peer costs no handshake and one
            # in its handshake counts against the limits. Nothing is read before start_tls.
            assert self.transport is not None
            self.transport.pause_reading()
            self._handshake = self.loop.create_task(self._start_tls(self.transport, context), name="hl7gw-mllp-tls")

    async def _start_tls(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        """Make ``raw`` a TLS connection (bounded by the frame timeout); a failed handshake closes it."""
        try:
            tls = await self.loop.start_tls(
                raw, self, context, server_side=True, ssl_handshake_timeout=self.server.limits.frame_timeout_s
            )
        except OSError as exc:  # ssl.SSLError, a reset, the handshake timeout
            log.info("MLLP TLS handshake with %s failed: %s", self.peer, type(exc).__name__)
            raw.abort()
            if not self.lost:
                self.connection_lost(None)
            return
        if tls is None or self.lost:
            return
        self.transport = tls

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        now = time.monotonic()
        decoder = self.decoder
        was_in_frame = decoder.in_frame
        discarded = decoder.discarded_bytes
        problem: FramingError | None = None
        try:
            frames = decoder.feed(data)
        except FramingError as exc:
            frames, problem = exc.frames, exc
        self.server.stats.discarded_bytes += decoder.discarded_bytes - discarded
        if frames or was_in_frame or decoder.in_frame:
            self.last_activity = now  # a frame went on; bytes outside frames alone keep nothing open
        if decoder.cut_off:
            self._receive_with_cut_off(frames, decoder.take_cut_off())
        else:
            for frame in frames:
                self._receive(frame)
        if problem is not None:
            self._framing_problem(problem)
            return
        if decoder.in_frame:
            if frames or not was_in_frame:
                self.frame_started = now
        else:
            self.frame_started = None
        self._update_reading()

    def _receive_with_cut_off(self, frames: list[bytes], cut_off: list[tuple[int, bytes]]) -> None:
        """Receive ``frames`` and keep the fragments cut off among them, in the order they came."""
        pending = iter(cut_off)
        fragment = next(pending, None)
        for position, frame in enumerate([*frames, None]):
            while fragment is not None and fragment[0] <= position:
                self._unfinished(fragment[1], CUT_OFF, "frame cut off by a new start block")
                fragment = next(pending, None)
            if frame is not None:
                self._receive(frame)

    def eof_received(self) -> bool:
        # The peer sent everything it will send: answer what was read, then close. (TLS cannot
        # half-close: there the transport closes itself.)
        self.begin_close()
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.closing = True
        if self.decoder.has_unfinished:
            self._unfinished(self.decoder.unfinished(), CLOSED, "connection closed in the middle of a frame")
        self.server.forget(self)

    def pause_writing(self) -> None:
        # The peer does not read its ACKs: stop reading its messages until it does.
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # -- frames -----------------------------------------------------------------------------
    def _receive(self, frame: bytes) -> None:
        if len(frame) == 1 and (frame == COMMIT_ACK or frame == COMMIT_NAK):
            # MLLP release 2: the peer's commit acknowledgement of one of our ACKs.
            self.server.stats.commit_acks_received += 1
            return
        if self.batch_running or self.held or (self.slots and self._is_batch(frame)):
            # Earlier frames are answered first: a sender's order is arrival order.
            self.held.append(frame)
            return
        self._answer(frame)

    def _answer(self, frame: bytes) -> None:
        """Give one frame its slot: a batch, a blank frame (answered at once), or a message."""
        if self._is_batch(frame):
            self._start_batch(frame)
        elif not frame or (frame[0] in _BLANK and not frame.strip()):
            # Nothing inside: no MSH to answer to, so AR with ERR 100 (docs/mllp.md); nothing to keep.
            slot = _ReplySlot()
            slot.reply = self.server.answer_blank(len(frame), self.peer)
            self.slots.append(slot)
            self.server.ready(self)
        else:
            self._submit(frame, self.server.profiles.judge(frame))

    def _is_batch(self, frame: bytes) -> bool:
        return self.server.takes_batches and looks_like_batch(frame)

    def _start_batch(self, frame: bytes) -> None:
        slot = _ReplySlot()
        self.slots.append(slot)
        self.batch_running = True
        task = self.loop.create_task(self.server.answer_batch(frame, self.peer), name="hl7gw-mllp-batch")
        task.add_done_callback(lambda done: self._batch_answered(slot, done))

    def _batch_answered(self, slot: _ReplySlot, task: asyncio.Task[bytes]) -> None:
        if task.cancelled():
            slot.reply = b""
        else:
            slot.reply = task.result()  # answer_batch answers every failure itself
        self.batch_running = False
        self.server.ready(self)

    def _take_held(self) -> None:
        """Judge the frames that waited for a batch, up to the next batch (which waits in turn
        for the answers of the frames before it)."""
        held = self.held
        while held and not self.batch_running:
            if self.slots and self._is_batch(held[0]):
                return
            self._answer(held.popleft())

    def _submit(self, raw: bytes, judgement: Judgement) -> None:
        if not self.slots:
            self.lane = self.server.intake.pick_lane()
        envelope_id = new_envelope_id()
        slot = _Slot(self, judgement, envelope_id)
        self.slots.append(slot)
        with logcontext.message_context(envelope_id, judgement.sender, judgement.control_id):
            self.server.intake.receive(judgement.received(raw, self.peer), slot, self.lane, envelope_id)

    def _unfinished(self, raw: bytes, reason: str, why: str) -> None:
        """A frame that will never end: counted, and kept where operators see it unless it holds
        only whitespace (like a blank frame, nothing to look at or replay)."""
        self.server.frame_unfinished(reason)
        if raw.strip():
            self._keep(raw, why)
        else:
            log.warning("%s: %s; %d byte(s) of whitespace, nothing kept", self.address or self.peer, why, len(raw))

    def _keep(self, raw: bytes, why: str) -> None:
        """Keep bytes that cannot be answered (an unfinished frame) where operators see them."""
        verdict = self.server.triage.kept(raw, AckError("100", why))
        envelope_id = new_envelope_id()
        with logcontext.message_context(envelope_id, verdict.sender, verdict.control_id):
            log.warning("%s: %s; %d byte(s) kept as a dead letter", self.peer, why, len(raw))
            self.server.intake.receive(verdict.received(raw, self.peer), _log_failure, self.lane, envelope_id)

    def _framing_problem(self, problem: FramingError) -> None:
        """Answer the broken frame when it can be answered, then close: the stream is out of step."""
        if isinstance(problem, FrameTooLarge):
            self.server.stats.oversized += 1
            limit = self.server.limits.max_message_bytes
            error = AckError(
                "104",
                f"message larger than {limit} bytes (HL7GW_MLLP_MAX_MESSAGE_BYTES); first "
                f"{len(problem.dropped)} bytes kept",
                "MSH",
            )
        else:
            error = AckError("100", f"MLLP framing: {problem}", "MSH")
        log.warning("closing %s: %s", self.peer, problem)
        if problem.dropped:
            self._submit(problem.dropped, self.server.triage.kept(problem.dropped, error))
        self.begin_close()

    # -- answers ----------------------------------------------------------------------------
    def release(self) -> None:
        """Write every answer that is ready and has no unanswered frame before it."""
        slots = self.slots
        ready: list[bytes] = []
        while slots and slots[0].reply is not None:
            ready.append(slots.popleft().reply)  # type: ignore[arg-type]
        if self.lost or self.transport is None:
            return
        if ready:
            self.transport.write(b"".join(ready))
        if self.held:
            self._take_held()
        if self.closing and not slots and not self.held:
            self.transport.close()
        else:
            self._update_reading()

    # -- lifecycle --------------------------------------------------------------------------
    def begin_close(self) -> None:
        """Read nothing more; close once every frame already read is answered."""
        self.closing = True
        self._update_reading()
        if not self.slots and not self.held and self.transport is not None and not self.lost:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def check_timeouts(self, now: float) -> None:
        """Close a connection whose frame takes too long, or that has been idle too long."""
        if self.closing:
            return
        limits = self.server.limits
        if self.frame_started is not None and now - self.frame_started > limits.frame_timeout_s:
            self.server.stats.frame_timeouts += 1
            unfinished = self.decoder.unfinished()
            self.decoder.reset()
            self.frame_started = None
            self._unfinished(unfinished, TIMED_OUT, f"frame not finished within {limits.frame_timeout_s:g} s")
            log.warning("closing %s: frame not finished within %g s", self.peer, limits.frame_timeout_s)
            self.begin_close()
        elif limits.idle_timeout_s and not self.slots and now - self.last_activity > limits.idle_timeout_s:
            self.server.stats.idle_timeouts += 1
            log.info("closing %s: idle for %g s", self.peer, limits.idle_timeout_s)
            self.begin_close()

    def _update_reading(self) -> None:
        if self.transport is None or self.lost:
            return
        want = (
            not self.closing
            and not self._writing_paused
            and not self.batch_running
            and not self.held
            and len(self.slots) < self.server.limits.max_outstanding
        )
        if want == self._reading_paused:
            self._reading_paused = not want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()


#: What ``bytes.strip`` removes: a frame starting with anything else is not blank.
_BLANK = b" \t\n\r\x0b\x0c"
#: Why a frame was left unfinished (the ``reason`` of hl7gw_mllp_unfinished_frames_total).
CUT_OFF, CLOSED, TIMED_OUT = "cut-off", "closed", "timeout"


def _log_failure(receipt: Receipt | None, error: BaseException | None) -> None:
    if error is not None:
        log.error("could not keep unanswerable bytes: %s", error)


def _keepalive(sock: socket.socket | None) -> None:
    """TCP keepalive finds peers that vanished (a firewall dropped the connection) in about two minutes."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
    except (OSError, AttributeError):
        pass
