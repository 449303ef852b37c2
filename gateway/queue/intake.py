"""Durable intake with group commit: the step between "received" and "acknowledged".

Messages from all connections are collected and committed together by one Lua script call per
batch; batches are pipelined on a few Redis connections, the lanes (gateway/queue/lane.py), so a
batch never waits for the previous one's reply, Redis runs a lane's batches in the order sent,
and the batches it reads in one turn share one fsync. For each message the script checks the
duplicate window, assigns the per-sender sequence number and writes exactly what dramatiq's
``dispatch.lua`` writes for an enqueue (``HSET <ns>:<queue>.msgs`` and ``RPUSH <ns>:<queue>``).
With ``appendfsync always`` the reply comes only after the batch is on disk, so every waiter is
released knowing its message is durable. Messages kept only for operators (rejected ones,
incoming ACKs) go the same way, with their ``kind`` saying so, without a sequence number
and without the duplicate check.

An intake commits to one pipeline queue: the live queue by default, or ``queue=IMPORT_QUEUE`` for
an importer (docs/batch.md, Order and fairness). Only the queue (and the hash of senders' last
times) differ: the duplicate window and the per-sender sequence counters are the same keys, so a
message imported after it came live is a duplicate, and a sender's messages are numbered in the
order they were committed whichever way they came.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from gateway.envelope import Envelope
from gateway.errors import IntakeUnavailable, describe
from gateway.keys import QUEUE, Keys
from gateway.queue.durability import DurabilityGuard
from gateway.queue.entry import ARGS_PER_MESSAGE, EntryEncoder, Received, new_envelope_id
from gateway.queue.lane import CommitLane, Done, OutageLog, Receipt, report
from gateway.queue.resp import PipelinedRedis, bulk

__all__ = ["Done", "Intake", "Receipt", "Received"]

log = logging.getLogger(__name__)

#: What Redis reads from one connection in one event-loop turn (PROTO_IOBUF_LEN): more waiting on
#: one lane waits for another turn, and another fsync.
LANE_BYTES = 16 * 1024

# KEYS: [queue list, queue messages hash, duplicates counter, control-id-reused counter,
#        sender last-seen hash]
# ARGV: [dedup window (s), sequence key prefix, then per message 6 values: sequence key ("" for a
#        message kept only for operators: no sequence number), dedup key ("" for none), content
#        digest, redis message id, json prefix, json suffix]
# Returns "seq,flag,seq,flag,..." (one string: cheap to read back); flag 0 new, 1 duplicate
# (nothing written; seq is the original's), 2 new but its dedup key was seen with other content.
# Per message one SET NX (the duplicate check, which also records the message); per batch one
# GET/SET per sender's sequence counter, one HSET and one RPUSH: fewer commands, a smaller AOF;
# and one TIME and one HSET of every sender's last-seen time (Redis's clock, in ms: /metrics).
_COMMIT_SCRIPT = """
local window = tonumber(ARGV[1])
local prefix_length = #ARGV[2]
local out, fields, ids, counters, senders = {}, {}, {}, {}, {}
local duplicates, reused = 0, 0
local n = (#ARGV - 2) / 6
for i = 0, n - 1 do
    local b = 3 + i * 6
    local seq_key, dedup_key, digest, id = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
    local seq, flag = 0, 0
    if seq_key ~= '' then
        seq = (counters[seq_key] or tonumber(redis.call('GET', seq_key) or '0')) + 1
        senders[seq_key] = true
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
if next(senders) ~= nil then
    local now = redis.call('TIME')
    local ms = tostring(tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
    local seen = {}
    for key in pairs(senders) do
        seen[#seen + 1] = string.sub(key, prefix_length + 1)
        seen[#seen + 1] = ms
    end
    redis.call('HSET', KEYS[5], unpack(seen))
end
return table.concat(out, ',')
"""
_COMMIT_SHA = hashlib.sha1(_COMMIT_SCRIPT.encode()).hexdigest()


class Intake:
    """Commit messages to the durable queue in batches; each is reported once its batch is on disk.

    Messages go out on ``lanes`` pipelined Redis connections (gateway/queue/lane.py); the caller
    names the lane, and the messages of one lane are committed in the order they were queued.
    ``queue``: the pipeline queue they go to (gateway/keys.py PIPELINE_ACTORS); messages committed
    to another queue than the live one leave the senders' last-seen times alone (they are kept
    apart, ``Keys.sender_last_imported``): those say whether a live feed has gone silent.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        namespace: str = "hl7gw",
        batch_max: int = 256,
        timeout: float = 5.0,
        dedup_window_s: int = 7 * 86_400,
        max_in_flight: int = 8,
        lanes: int = 4,
        queue: str = QUEUE,
        durability: DurabilityGuard | None = None,
    ):
        self.keys = Keys(namespace)
        self.durability = durability
        self._rechecking: asyncio.Task[None] | None = None
        self.timeout = timeout
        self.dedup_window_s = dedup_window_s
        self.queue = queue
        self._encoder = EntryEncoder(self.keys, dedup_window_s, queue)
        script_keys = [
            self.keys.queue(queue),
            self.keys.queue_messages(queue),
            self.keys.duplicates(),
            self.keys.control_id_reused(),
            self.keys.sender_last_seen() if queue == QUEUE else self.keys.sender_last_imported(),
        ]
        # EVALSHA <sha> <numkeys> <keys...> <window> <sequence key prefix>: the part of every
        # commit command that never changes.
        sequence_prefix = self.keys.sequence("")
        head: list[str | int] = [
            "EVALSHA",
            _COMMIT_SHA,
            len(script_keys),
            *script_keys,
            dedup_window_s,
            sequence_prefix,
        ]
        outages = OutageLog()
        self._lanes = [
            CommitLane(
                redis_url,
                command=b"".join(bulk(part) for part in head),
                command_args=len(head),
                args_per_message=ARGS_PER_MESSAGE,
                setup=(("SCRIPT", "LOAD", _COMMIT_SCRIPT),),
                batch_max=batch_max,
                max_in_flight=max_in_flight,
                timeout=timeout,
                on_batch=self._batch_done,
                outages=outages,
                verify=self._verify if durability is not None else None,
            )
            for _ in range(max(1, lanes))
        ]
        self._running = False
        self.committed = 0
        self.duplicates = 0
        self.batches = 0
        #: Called after every batch's ``done`` callbacks (the listener writes the ready ACKs then).
        self.after_batch: list[Callable[[], None]] = []

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    def pick_lane(self) -> int:
        """A lane for a caller free to choose (nothing of its own waiting): the first one with
        less than a Redis read's worth waiting, so that batches stay large while that suffices."""
        for number, lane in enumerate(self._lanes):
            if lane.load < LANE_BYTES:
                return number
        return min(range(len(self._lanes)), key=lambda number: self._lanes[number].load)

    async def start(self) -> None:
        for lane in self._lanes:
            lane.start()
        self._running = True
        if self.durability is not None:
            self._rechecking = asyncio.create_task(self._recheck(self.durability), name="hl7gw-intake-durability")

    async def _verify(self, connection: PipelinedRedis) -> None:
        """On each new connection: nothing is committed on a Redis that is not durable (unless allowed)."""
        assert self.durability is not None
        refusal = await self.durability.check(connection.send)
        if refusal:
            raise IntakeUnavailable(f"the queue's Redis is not durable: {refusal}")

    async def _recheck(self, guard: DurabilityGuard) -> None:
        """Judge the Redis again every ``recheck_s``, on the first lane's connection (connected by
        then if it is not: connecting judges it too). A Redis that does not answer is an outage,
        answered as such by the lanes: the verdict stands until it answers."""
        lane = self._lanes[0]
        while self._running:
            try:
                if lane.redis.connected:
                    await asyncio.wait_for(guard.check(lane.redis.send), self.timeout)
                else:
                    await asyncio.wait_for(lane.connect(), self.timeout)
            except (TimeoutError, RedisError, OSError, IntakeUnavailable) as exc:
                log.debug("durability check not done: %s", describe(exc))
            await asyncio.sleep(guard.recheck_s)

    async def close(self) -> None:
        if self._rechecking is not None:
            self._rechecking.cancel()
            self._rechecking = None
        if self._running:
            # Let waiting messages be committed (or failed) before stopping: each batch ends in a
            # reply, a failed connection or the reply timeout.
            while any(lane.busy for lane in self._lanes):
                await asyncio.sleep(0.01)
            self._running = False
        for lane in self._lanes:
            await lane.close()

    async def ping(self) -> bool:
        try:
            await self._lanes[0].connect()
            return bool(await asyncio.wait_for(self._lanes[0].redis.send("PING"), self.timeout))
        except (TimeoutError, RedisError, OSError, IntakeUnavailable):
            return False

    @property
    def running(self) -> bool:
        return self._running

    def enqueue(self, envelope: Envelope, done: Done, lane: int = 0) -> None:
        """Queue ``envelope`` for the next commit on ``lane``; ``done`` is called when its outcome is known.

        An envelope whose ``kind`` is not a message is kept for operators only: no sequence
        number, no duplicate check. ``done`` gets IntakeUnavailable when the commit
        failed: nothing may then be acknowledged.
        """
        e = envelope
        self._push(done, lane, e.id, e.received_at, Received(e.raw, e.sender, e.control_id, e.peer, e.kind, e.meta))

    def receive(self, message: Received, done: Done, lane: int = 0, envelope_id: str | None = None) -> None:
        """``enqueue`` of a message received now, without building its Envelope (the listener's way);
        ``envelope_id``: the id it was given already (for the log lines about it)."""
        self._push(done, lane, envelope_id or new_envelope_id(), int(time.time() * 1000), message)

    def _push(self, done: Done, lane: int, id: str, received_at: int, message: Received) -> None:
        """Encode one message and queue it on ``lane``; ``done`` hears at once when that cannot be done."""
        if not self._running:
            done(None, IntakeUnavailable("intake is not running"))
            return
        if self.durability is not None and self.durability.refusal:
            done(None, IntakeUnavailable(f"the queue's Redis is not durable: {self.durability.refusal}"))
            return
        try:
            entry = self._encoder.encode(id, received_at, message)
        except Exception as exc:  # noqa: BLE001 - a message we cannot encode must still be answered
            _cannot_encode(done, exc)
            return
        self._lanes[lane % len(self._lanes)].push(entry, done)

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

    def _batch_done(self, committed: int, duplicates: int) -> None:
        if committed:
            self.batches += 1
            self.committed += committed
            self.duplicates += duplicates
        for hook in self.after_batch:
            try:
                hook()
            except Exception:  # noqa: BLE001
                log.exception("intake after-batch hook failed")


def _cannot_encode(done: Done, exc: Exception) -> None:
    """A message we cannot encode must still be answered (AR 207), and never acknowledged."""
    log.error("cannot encode a message for the intake script", exc_info=exc)
    report(done, None, IntakeUnavailable(f"message cannot be queued: {describe(exc)}"))
