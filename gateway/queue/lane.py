"""One commit lane of the intake: batches sent in order on one pipelined Redis connection.

Each batch is one call of the commit script. Commands go out without waiting for earlier replies
(gateway/queue/resp.py), up to ``max_in_flight`` batches, and Redis runs them in the order sent.
Why more than one lane: Redis reads at most 16 KiB from one client per event-loop turn and, with
``appendfsync always``, fsyncs once per turn; so one connection carries about 16 KiB of messages
per fsync however many wait behind them. Several lanes are read in the same turn, and share its
fsync. The order of a lane's messages is the order they were pushed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from redis.exceptions import RedisError

from gateway.errors import IntakeUnavailable, describe
from gateway.queue.resp import PipelinedRedis, Verify

log = logging.getLogger(__name__)


class Receipt(NamedTuple):
    """What the commit said about one message."""

    seq: int
    #: Already accepted within the dedup window: nothing was written, ``seq`` is the original's.
    duplicate: bool = False
    #: Its sender and control id were accepted before with other content: committed as new.
    control_id_reused: bool = False


#: Called once per message after its commit: (receipt, None) or (None, IntakeUnavailable).
Done = Callable[[Receipt | None, BaseException | None], None]
#: A message waiting for its commit: its encoded script arguments and who to tell.
Pending = tuple[bytes, Done]


class OutageLog:
    """Logs an outage of the durable queue once when it starts and once when it ends, however
    many batches fail in between (the lanes of one intake share one)."""

    def __init__(self) -> None:
        self.since: float | None = None

    def failed(self, count: int, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("durable queue unavailable (%s): answering AR/CR 207 until it answers", describe(exc))
        else:
            log.debug("intake commit of %d message(s) failed: %s", count, describe(exc))

    def succeeded(self) -> None:
        if self.since is not None:
            log.warning("durable queue answers again after %.0f s: accepting messages", time.monotonic() - self.since)
            self.since = None


class CommitLane:
    def __init__(
        self,
        redis_url: str,
        *,
        command: bytes,
        command_args: int,
        args_per_message: int,
        setup: tuple[tuple[str | bytes | int, ...], ...],
        batch_max: int,
        max_in_flight: int,
        timeout: float,
        on_batch: Callable[[int, int], None],
        outages: OutageLog | None = None,
        verify: Verify | None = None,
    ):
        self.redis = PipelinedRedis(redis_url, timeout=timeout)
        self.outages = outages or OutageLog()
        #: The encoded start of every commit command, and how many arguments it holds.
        self._command, self._command_args = command, command_args
        self._args_per_message = args_per_message
        self._setup = setup
        self._verify = verify
        self.batch_max = batch_max
        self.max_in_flight = max_in_flight
        #: Told (committed, duplicates) after each batch's waiters were told, (0, 0) for a failed one.
        self._on_batch = on_batch
        self.pending: list[Pending] = []
        self.in_flight = 0
        #: Bytes of the messages waiting or in flight on this lane.
        self.load = 0
        self.running = False
        self._flush_scheduled = False
        self._connecting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.running = True

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.in_flight)

    async def connect(self) -> None:
        await self.redis.connect(setup=self._setup, verify=self._verify)

    async def close(self) -> None:
        self.running = False
        if self._connecting is not None:
            self._connecting.cancel()
        await self.redis.close()

    def push(self, entry: bytes, done: Done) -> None:
        self.pending.append((entry, done))
        self.load += len(entry)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what is waiting, one batch per command, while fewer than ``max_in_flight`` are out."""
        self._flush_scheduled = False
        while self.pending and self.in_flight < self.max_in_flight and self.running:
            if not self.redis.connected:
                if self._connecting is None or self._connecting.done():
                    self._connecting = self._loop.create_task(self._reconnect(), name="hl7gw-intake-connect")
                return
            self._send(self._take(self.batch_max))

    async def _reconnect(self) -> None:
        try:
            await self.connect()
        except (RedisError, OSError, IntakeUnavailable) as exc:
            batch = self._take(len(self.pending))
            self.load -= sum(len(entry) for entry, _ in batch)
            self._fail(batch, exc)
            self._on_batch(0, 0)
            return
        self._flush()

    def _take(self, count: int) -> list[Pending]:
        batch = self.pending[:count]
        del self.pending[:count]
        return batch

    def _send(self, batch: list[Pending]) -> None:
        self.in_flight += 1
        count = self._command_args + self._args_per_message * len(batch)
        entries = b"".join([entry for entry, _ in batch])
        done = functools.partial(self._committed, batch, len(entries), time.perf_counter())
        self.redis.send_encoded(count, self._command + entries, done)

    def _committed(
        self, batch: list[Pending], size: int, started: float, reply: bytes | None, error: BaseException | None
    ) -> None:
        self.in_flight -= 1
        self.load -= size
        if self.pending and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        try:
            if error is None:
                values = [int(v) for v in (reply or b"").split(b",")]
                if len(values) != 2 * len(batch):
                    raise RedisError(f"commit script answered {len(values)} values for {len(batch)} messages")
        except Exception as exc:  # noqa: BLE001
            error = exc
        if error is not None:
            if "NOSCRIPT" in str(error):  # the script cache was flushed: a new connection reloads it
                self.redis.reset(error)
            self._fail(batch, error)
            self._on_batch(0, 0)
            return
        if self.outages.since is not None:
            self.outages.succeeded()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("committed %d message(s) in %.2f ms", len(batch), (time.perf_counter() - started) * 1e3)
        flags = values[1::2]
        for (_, done), seq, flag in zip(batch, values[0::2], flags):
            try:
                done(Receipt(seq, flag == 1, flag == 2), None)
            except Exception:  # noqa: BLE001 - one waiter's bug must not stop the others' answers
                log.exception("intake completion callback failed")
        self._on_batch(len(batch), flags.count(1))

    def _fail(self, batch: list[Pending], exc: BaseException) -> None:
        """Nobody in ``batch`` may be told "accepted": the outcome is unknown or failed. A sender
        that resends may create a duplicate, which the duplicate check or downstream idempotency
        absorbs; a lost message is worse."""
        if not batch:
            return
        self.outages.failed(len(batch), exc)
        error = (
            exc
            if isinstance(exc, IntakeUnavailable)
            else IntakeUnavailable(f"durable queue unavailable: {describe(exc)}")
        )
        for _, done in batch:
            report(done, None, error)


def report(done: Done, receipt: Receipt | None, error: BaseException | None) -> None:
    try:
        done(receipt, error)
    except Exception:  # noqa: BLE001 - one waiter's bug must not stop the others' answers
        log.exception("intake completion callback failed")
