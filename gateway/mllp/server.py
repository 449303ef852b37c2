"""The asyncio MLLP listener: limits, TLS, statistics, and an orderly stop.

Each connection (gateway/mllp/connection.py) judges its frames and hands them to the shared group
commit; this module owns what spans connections: the connection limit, the timeout sweep, the
counters, and draining every read frame's ACK before stopping.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from gateway.envelope import Kind
from gateway.hl7.ack import AckError, build_reject_for_unreadable
from gateway.metrics import recorder
from gateway.mllp.connection import MllpConnection
from gateway.mllp.framing import COMMIT_ACK, encode_frame
from gateway.mllp.limits import Limits, ListenerStats
from gateway.mllp.peers import FULL, NOT_ALLOWED, PEER_LIMIT, STOPPING, PeerGate
from gateway.mllp.profiles import Profiled, Profiles
from gateway.mllp.triage import STORAGE_FAILED, Judgement, Triage, Verdict
from gateway.queue.intake import Intake, Receipt

log = logging.getLogger(__name__)
#: The ``outcome`` field of each intake line (docs/observability.md, Logs).
_ACCEPTED, _DUPLICATE, _REJECTED = {"outcome": "accepted"}, {"outcome": "duplicate"}, {"outcome": "rejected"}
_ACK_KEPT, _REFUSED = {"outcome": "ack-kept"}, {"outcome": "not-accepted"}
#: What answers a frame holding a batch (given by the process: gateway/services/batch_frames.py):
#: (payload, peer) -> the batch acknowledgement, unframed, once every message in it is committed.
BatchAnswer = Callable[[bytes, str], Awaitable[bytes]]
#: Refusals of one reason logged at most this often.
_REFUSAL_LOG_EVERY_S = 10.0
#: The error answering a frame with nothing inside (HL7 table 0357: 100, segment sequence error).
NO_MSH = AckError("100", "no MSH segment: the frame is empty or only whitespace", "MSH")


class MllpServer:
    def __init__(
        self,
        intake: Intake,
        *,
        triage: Triage | None = None,
        limits: Limits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        commit_acks: bool = False,
        batches: BatchAnswer | None = None,
    ):
        self.intake = intake
        #: Frames that hold a batch (FHS/BHS first) go to ``batches`` when given; without it each
        #: frame is one message, as before (a batch frame is then judged, and refused, as one).
        self.batches = batches
        self.triage = triage or Triage()
        self.profiles = Profiles(self.triage, commit_acks=commit_acks)
        self.limits = limits or Limits()
        self.ssl_context = ssl_context
        self.commit_acks = commit_acks
        self.stats = ListenerStats()
        self.metrics = recorder()
        self.metrics.use_mappings(self.triage.rules.supports)
        self.connections: set[MllpConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self.peers = PeerGate(self.limits.allowed_peers, self.limits.max_connections_per_peer)
        self._last_refusal_log: dict[str, float] = {}
        self._refusals_unlogged: dict[str, int] = {}
        self._ready: set[MllpConnection] = set()
        self._flush_scheduled = False
        intake.after_batch.append(self.flush)

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0 picks a free one); returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: MllpConnection(self),
            host,
            port,
            backlog=min(1024, self.limits.max_connections * 2),
        )
        self._sweeper = asyncio.create_task(self._sweep(), name="hl7gw-mllp-timeouts")
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("MLLP%s listening on %s:%d", " over TLS" if self.ssl_context else "", host, bound)
        return bound

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, let every frame already read get its ACK, then close connections."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.begin_close()
        deadline = time.monotonic() + drain_timeout
        while self.connections and time.monotonic() < deadline:
            self._closed.clear()
            try:
                await asyncio.wait_for(self._closed.wait(), timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
        for conn in list(self.connections):
            log.warning("closing %s with answers still pending after %.0f s", conn.peer, drain_timeout)
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        log.info("MLLP listener stopped: %s", ", ".join(f"{k} {v}" for k, v in asdict(self.stats).items()))

    # -- called by connections --------------------------------------------------------------
    def admit(self, conn: MllpConnection) -> bool:
        """Register a new connection, or refuse it: the listener full or stopping, its address not
        allowed (HL7GW_MLLP_ALLOWED_PEERS) or holding its share (HL7GW_MLLP_MAX_CONNECTIONS_PER_PEER)."""
        stats = self.stats
        if self._server and not self._server.is_serving():
            reason: str | None = STOPPING
        elif len(self.connections) >= self.limits.max_connections:
            reason = FULL
        else:
            reason = self.peers.refusal(conn.address)
        if reason is not None:
            stats.refused_connections += 1
            self.metrics.connection_refused(reason)
            self._log_refusal(conn, reason)
            return False
        self.connections.add(conn)
        self.peers.opened(conn.address)
        stats.connections += 1
        stats.open_connections = len(self.connections)
        self.metrics.connections_open(stats.open_connections)
        return True

    def _log_refusal(self, conn: MllpConnection, reason: str) -> None:
        """One line per refusal, at most one every 10 s per reason (a flood must not flood the log)."""
        now = time.monotonic()
        if now - self._last_refusal_log.get(reason, -_REFUSAL_LOG_EVERY_S) < _REFUSAL_LOG_EVERY_S:
            self._refusals_unlogged[reason] = self._refusals_unlogged.get(reason, 0) + 1
            return
        self._last_refusal_log[reason] = now
        unlogged = self._refusals_unlogged.pop(reason, 0)
        why = {
            FULL: f"{len(self.connections)} connections open (HL7GW_MLLP_MAX_CONNECTIONS)",
            STOPPING: "the listener is stopping",
            PEER_LIMIT: f"{self.limits.max_connections_per_peer} connections open from that address "
            "(HL7GW_MLLP_MAX_CONNECTIONS_PER_PEER)",
            NOT_ALLOWED: "address not in HL7GW_MLLP_ALLOWED_PEERS",
        }[reason]
        more = f"; {unlogged} more refused for this reason in the last {_REFUSAL_LOG_EVERY_S:g} s" if unlogged else ""
        log.warning("refused connection from %s: %s%s", conn.address or conn.peer, why, more)

    def ready(self, conn: MllpConnection) -> None:
        """``conn`` has an answer ready: written at the end of the intake batch (``flush``), or on
        the next event-loop turn when the answer came outside a batch."""
        self._ready.add(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the ready answers of every connection, each connection's in one write."""
        self._flush_scheduled = False
        ready, self._ready = self._ready, set()
        for conn in ready:
            conn.release()

    @property
    def takes_batches(self) -> bool:
        return self.batches is not None

    async def answer_batch(self, payload: bytes, peer: str) -> bytes:
        """The framed answer to a frame holding a batch: its batch acknowledgement (one frame)."""
        assert self.batches is not None
        self.stats.batch_frames += 1
        commit = encode_frame(COMMIT_ACK) if self.commit_acks else b""
        try:
            return commit + encode_frame(await self.batches(payload, peer))
        except Exception:  # noqa: BLE001 - the sender must get an answer, and the connection go on
            log.exception("could not answer a batch frame of %d bytes from %s", len(payload), peer)
            return encode_frame(build_reject_for_unreadable(payload, RuntimeError("internal error")).encode())

    def answer_blank(self, size: int, peer: str) -> bytes:
        """The framed answer to a frame with nothing but whitespace inside: AR, ERR 100, MSA-2 empty
        (there is no MSH to read a control id from). Counted as a rejection; nothing is kept."""
        stats, metrics = self.stats, self.metrics
        stats.empty_frames += 1
        stats.rejected += 1
        metrics.rejected(NO_MSH.code)
        if metrics.enabled:
            metrics.ack_sent("AR")
        log.info(
            "rejected an empty frame (%d byte(s)) from %s: %s; nothing kept", size, peer, NO_MSH.text, extra=_REJECTED
        )
        return self.triage.kept(b"", NO_MSH).reply(stored=True, commit_acks=self.commit_acks)

    def frame_unfinished(self, reason: str) -> None:
        """Count a frame that will never end (cut off, connection closed, timed out)."""
        self.stats.unfinished_frames += 1
        self.metrics.unfinished_frame(reason)

    def forget(self, conn: MllpConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.peers.closed(conn.address)
        self.stats.open_connections = len(self.connections)
        self.metrics.connections_open(self.stats.open_connections)
        self._closed.set()

    def settle(self, judgement: Judgement, receipt: Receipt | None, error: BaseException | None) -> bytes:
        """Count the outcome of one frame, log it (one line, naming the message: the connection set
        the log context), and return its answer bytes."""
        stats, metrics = self.stats, self.metrics
        kind = judgement.kind
        if error is not None:
            stats.storage_failures += 1
            metrics.rejected(STORAGE_FAILED)
            log.info("not accepted: the queue did not take it (%s)", error, extra=_REFUSED)
        elif kind == Kind.MESSAGE:
            if receipt is not None and receipt.duplicate:
                stats.duplicates += 1
                metrics.duplicate(judgement.sender)
                log.info("duplicate %s: acknowledged, not queued again", judgement.message_type, extra=_DUPLICATE)
            else:
                stats.accepted += 1
                metrics.received(judgement.sender, judgement.message_type)
                reused = " (control id seen before with other content)" if receipt and receipt.control_id_reused else ""
                log.info("accepted %s%s", judgement.message_type, reused, extra=_ACCEPTED)
        elif kind == Kind.ACK:
            stats.acks_received += 1
            log.info(
                "stored incoming %s %s from %s (not answered)",
                judgement.message_type,
                judgement.control_id,
                judgement.sender,
                extra=_ACK_KEPT,
            )
        else:
            stats.rejected += 1
            if isinstance(judgement, Verdict) and judgement.errors:
                metrics.rejected(judgement.errors[0].code)
            log.info(
                "rejected %s from %s: %s",
                judgement.control_id or "message",
                judgement.sender or "?",
                judgement.reason,
                extra=_REJECTED,
            )
        if kind != Kind.ACK and metrics.enabled:
            code = _ack_code(judgement, stored=error is None)
            if code is not None:
                metrics.ack_sent(code)
        try:
            return judgement.reply(stored=error is None, commit_acks=self.commit_acks, storage_problem=str(error or ""))
        except Exception:  # noqa: BLE001 - a bug here must not leave the sender (and its later ACKs) waiting
            log.exception("could not build the answer for %s", judgement.control_id)
            return encode_frame(build_reject_for_unreadable(b"", RuntimeError("internal error")).encode())

    async def _sweep(self) -> None:
        limits = self.limits
        candidates = [limits.frame_timeout_s / 4, 1.0] + ([limits.idle_timeout_s / 4] if limits.idle_timeout_s else [])
        tick = max(0.02, min(candidates))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_timeouts(now)


def _ack_code(judgement: Judgement, *, stored: bool) -> str | None:
    """The MSA-1 code of the answer ``Judgement.reply`` writes (None: no HL7 acknowledgement)."""
    verdict = judgement.profile.verdict if isinstance(judgement, Profiled) else judgement
    if not isinstance(verdict, Verdict):
        return None
    outcome = verdict.outcome if stored else "AR"
    return verdict.mode.code(outcome) if verdict.mode.wants(outcome) else None
