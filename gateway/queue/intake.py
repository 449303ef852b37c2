"""Durable intake with group commit: the step between "received" and "acknowledged".

Messages from all connections are collected and committed together by one Lua script call per
batch; batches are pipelined on one Redis connection (gateway/queue/resp.py), so a batch never
waits for the previous one's reply, Redis runs them in arrival order, and the batches it reads in
one turn share one fsync. For each message the script checks the duplicate window, assigns
the per-sender sequence number and writes exactly what dramatiq's ``dispatch.lua`` writes for an
enqueue (``HSET <ns>:<queue>.msgs`` and ``RPUSH <ns>:<queue>``). With ``appendfsync always`` the
reply comes only after the batch is on disk, so every waiter is released knowing its message is
durable. Messages kept only for operators (rejected ones, incoming ACKs) go the same way, with
their ``start_stage`` saying so, without a sequence number and without the duplicate check.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Callable

import orjson
from redis.exceptions import RedisError

from gateway.envelope import Envelope
from gateway.errors import IntakeUnavailable
from gateway.queue.keys import ACTOR, QUEUE, Keys
from gateway.queue.resp import PipelinedRedis, bulk

log = logging.getLogger(__name__)

PROCESS_STAGE = "convert"

# KEYS: [queue list, queue messages hash, duplicates counter, control-id-reused counter]
# ARGV: [dedup window (s), then per message 6 values: sequence key ("" for a message kept only
#        for operators: no sequence number), dedup key ("" for none), content digest,
#        redis message id, json prefix, json suffix]
# Returns "seq,flag,seq,flag,..." (one string: cheap to read back); flag 0 new, 1 duplicate
# (nothing written; seq is the original's), 2 new but its dedup key was seen with other content.
# Per message one SET NX (the duplicate check, which also records the message); per batch one
# GET/SET per sender's sequence counter, one HSET and one RPUSH: fewer commands, a smaller AOF.
_COMMIT_SCRIPT = """
local window = tonumber(ARGV[1])
local out, fields, ids, counters = {}, {}, {}, {}
local duplicates, reused = 0, 0
local n = (#ARGV - 1) / 6
for i = 0, n - 1 do
    local b = 2 + i * 6
    local seq_key, dedup_key, digest, id = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
    local seq, flag = 0, 0
    if seq_key ~= '' then
        seq = (counters[seq_key] or tonumber(redis.call('GET', seq_key) or '0')) + 1
    end
    if dedup_key ~= '' then
        if not redis.call('SET', dedup_key, digest .. ':' .. seq, 'NX', 'EX', window) then
            local seen = redis.call('GET', dedup_key) or ''
            local colon = string.find(seen, ':', 1, true) or 0
            if string.sub(seen, 1, colon - 1) == digest then
                flag = 1
                seq = tonumber(string.sub(seen, colon + 1))
                duplicates = duplicates + 1
            else
                flag = 2
                reused = reused + 1
                redis.call('SET', dedup_key, digest .. ':' .. seq, 'EX', window)
            end
        end
    end
    if flag ~= 1 then
        if seq_key ~= '' then
            counters[seq_key] = seq
        end
        fields[#fields + 1] = id
        fields[#fields + 1] = ARGV[b + 4] .. seq .. ARGV[b + 5]
        ids[#ids + 1] = id
    end
    out[#out + 1] = seq .. ',' .. flag
end
for key, value in pairs(counters) do
    redis.call('SET', key, value)
end
if #ids > 0 then
    redis.call('HSET', KEYS[2], unpack(fields))
    redis.call('RPUSH', KEYS[1], unpack(ids))
end
if duplicates > 0 then
    redis.call('INCRBY', KEYS[3], duplicates)
end
if reused > 0 then
    redis.call('INCRBY', KEYS[4], reused)
end
return table.concat(out, ',')
"""
_COMMIT_SHA = hashlib.sha1(_COMMIT_SCRIPT.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the commit said about one message."""

    seq: int
    #: Already accepted within the dedup window: nothing was written, ``seq`` is the original's.
    duplicate: bool = False
    #: Its sender and control id were accepted before with other content: committed as new.
    control_id_reused: bool = False


#: Called once per message after its commit: (receipt, None) or (None, IntakeUnavailable).
Done = Callable[[Receipt | None, BaseException | None], None]


def dramatiq_message_parts(envelope: Envelope, redis_message_id: str) -> tuple[str, str]:
    """The dramatiq message for ``envelope`` as JSON, split where the sequence number goes."""
    body = orjson.dumps(
        {
            "id": envelope.id,
            "raw": base64.b64encode(envelope.raw).decode("ascii"),
            "received_at": envelope.received_at,
            "sender": envelope.sender,
            "control_id": envelope.control_id,
            "peer": envelope.peer,
            "start_stage": envelope.start_stage,
            "meta": envelope.meta,
        }
    ).decode()
    prefix = f'{{"queue_name":"{QUEUE}","actor_name":"{ACTOR}","args":[{body[:-1]},"seq":'
    options = orjson.dumps({"redis_message_id": redis_message_id}).decode()
    suffix = (
        f'}}],"kwargs":{{}},"options":{options},'
        f'"message_id":{orjson.dumps(envelope.id).decode()},"message_timestamp":{envelope.received_at}}}'
    )
    return prefix, suffix


def content_digest(raw: bytes) -> str:
    """Short digest telling a resend (same bytes) from a reused control id (other bytes)."""
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


class Intake:
    """Commit envelopes to the durable queue in batches; each is reported once its batch is on disk."""

    def __init__(
        self,
        redis_url: str,
        *,
        namespace: str = "hl7gw",
        batch_max: int = 256,
        timeout: float = 5.0,
        dedup_window_s: int = 7 * 86_400,
        max_in_flight: int = 8,
    ):
        self.keys = Keys(namespace)
        self.batch_max = batch_max
        self.timeout = timeout
        self.dedup_window_s = dedup_window_s
        self.max_in_flight = max_in_flight
        self._redis = PipelinedRedis(redis_url, timeout=timeout)
        self._script_keys = [
            self.keys.queue(),
            self.keys.queue_messages(),
            self.keys.duplicates(),
            self.keys.control_id_reused(),
        ]
        # EVALSHA <sha> <numkeys> <keys...>: the part of every commit command that never changes.
        head: list[str | int] = ["EVALSHA", _COMMIT_SHA, len(self._script_keys), *self._script_keys]
        self._command_head = b"".join(bulk(part) for part in head)
        self._pending: list[tuple[Envelope, Done]] = []
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self.committed = 0
        self.duplicates = 0
        self.batches = 0
        #: Called after every batch's ``done`` callbacks (the listener writes the ready ACKs then).
        self.after_batch: list[Callable[[], None]] = []

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._run(), name="hl7gw-intake-flusher")

    async def close(self) -> None:
        if self._flusher is not None:
            # Let waiting messages be committed (or failed) before stopping.
            while (self._pending or self._in_flight) and not self._flusher.done():
                await asyncio.sleep(0.01)
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
        await self._redis.close()

    async def ping(self) -> bool:
        try:
            await self._connect()
            return bool(await asyncio.wait_for(self._redis.send("PING"), self.timeout))
        except (RedisError, OSError, asyncio.TimeoutError):
            return False

    @property
    def running(self) -> bool:
        return self._flusher is not None and not self._flusher.done()

    def enqueue(self, envelope: Envelope, done: Done) -> None:
        """Queue ``envelope`` for the next commit; ``done`` is called when its outcome is known.

        An envelope whose ``start_stage`` is not ``convert`` is kept for operators only: no
        sequence number, no duplicate check. ``done`` gets IntakeUnavailable when the commit
        failed: nothing may then be acknowledged.
        """
        if not self.running:
            done(None, IntakeUnavailable("intake is not running"))
            return
        self._pending.append((envelope, done))
        self._wakeup.set()

    async def submit(self, envelope: Envelope) -> Receipt:
        """``enqueue`` for callers that can wait: the receipt once durable, or IntakeUnavailable."""
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()

        def done(receipt: Receipt | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(receipt)  # type: ignore[arg-type]

        self.enqueue(envelope, done)
        return await future

    async def _connect(self) -> None:
        await self._redis.connect(setup=(("SCRIPT", "LOAD", _COMMIT_SCRIPT),))

    async def _run(self) -> None:
        while True:
            if not self._pending or self._in_flight >= self.max_in_flight:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not self._redis.connected:
                try:
                    await self._connect()
                except (RedisError, OSError) as exc:
                    self._fail(self._take(len(self._pending)), exc)
                    self._batch_done()
                    continue
            self._send(self._take(self.batch_max))

    def _take(self, count: int) -> list[tuple[Envelope, Done]]:
        batch = self._pending[:count]
        del self._pending[:count]
        return batch

    def _send(self, batch: list[tuple[Envelope, Done]]) -> None:
        try:
            args = self._script_args(batch)
        except Exception as exc:  # noqa: BLE001 - a message we cannot encode must still be answered
            log.exception("cannot encode a batch for the intake script")
            self._fail(batch, exc)
            self._batch_done()
            return
        self._in_flight += 1
        count = len(args) + 3 + len(self._script_keys)
        done = functools.partial(self._committed, batch, time.perf_counter())
        self._redis.send_encoded(count, self._command_head + b"".join(args), done)

    def _script_args(self, batch: list[tuple[Envelope, Done]]) -> list[bytes]:
        """ARGV of the commit script, each already a RESP bulk string."""
        keys = self.keys
        args = [bulk(self.dedup_window_s)]
        for envelope, _ in batch:
            prefix, suffix = dramatiq_message_parts(envelope, envelope.id)
            if envelope.start_stage == PROCESS_STAGE:
                seq_key = keys.sequence(envelope.sender)
                dedup = bool(self.dedup_window_s and envelope.control_id)
                dedup_key = keys.dedup(envelope.sender, envelope.control_id) if dedup else ""
                digest = content_digest(envelope.raw) if dedup else ""
            else:
                seq_key = dedup_key = digest = ""
            args += [bulk(seq_key), bulk(dedup_key), bulk(digest), bulk(envelope.id), bulk(prefix), bulk(suffix)]
        return args

    def _committed(
        self, batch: list[tuple[Envelope, Done]], started: float, reply: bytes | None, error: BaseException | None
    ) -> None:
        self._in_flight -= 1
        self._wakeup.set()
        try:
            if error is None:
                flags = [int(v) for v in (reply or b"").split(b",")]
                if len(flags) != 2 * len(batch):
                    raise RedisError(f"commit script answered {len(flags)} values for {len(batch)} messages")
        except Exception as exc:  # noqa: BLE001
            error = exc
        if error is not None:
            if "NOSCRIPT" in str(error):  # the script cache was flushed: a new connection reloads it
                self._redis.reset(error)
            self._fail(batch, error)
        else:
            self.batches += 1
            self.committed += len(batch)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("committed %d message(s) in %.2f ms", len(batch), (time.perf_counter() - started) * 1e3)
            for i, (_, done) in enumerate(batch):
                flag = flags[2 * i + 1]
                if flag == 1:
                    self.duplicates += 1
                _report(done, Receipt(flags[2 * i], flag == 1, flag == 2), None)
        self._batch_done()

    def _batch_done(self) -> None:
        for hook in self.after_batch:
            try:
                hook()
            except Exception:  # noqa: BLE001
                log.exception("intake after-batch hook failed")

    def _fail(self, batch: list[tuple[Envelope, Done]], exc: BaseException) -> None:
        """Nobody in ``batch`` may be told "accepted": the outcome is unknown or failed. A sender
        that resends may create a duplicate, which the duplicate check or downstream idempotency
        absorbs; a lost message is worse."""
        if not batch:
            return
        log.error("intake commit of %d message(s) failed: %s", len(batch), exc or type(exc).__name__)
        error = IntakeUnavailable(f"durable queue unavailable: {exc or type(exc).__name__}")
        for _, done in batch:
            _report(done, None, error)


def _report(done: Done, receipt: Receipt | None, error: BaseException | None) -> None:
    try:
        done(receipt, error)
    except Exception:  # noqa: BLE001 - one waiter's bug must not stop the others' answers
        log.exception("intake completion callback failed")
