"""Durable intake with group commit: the step between "received" and "acknowledged".

Messages from all connections are collected while the previous write is in flight and committed
together by one Lua script call. The script assigns each message its per-sender sequence number and
writes exactly what dramatiq's ``dispatch.lua`` writes for an enqueue (``HSET <ns>:<queue>.msgs``
and ``RPUSH <ns>:<queue>``). With the embedded Redis on ``appendfsync always`` the reply comes only
after the batch is on disk, so every waiter is released knowing its message is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.envelope import Envelope
from gateway.errors import IntakeUnavailable
from gateway.queue.keys import ACTOR, QUEUE, Keys

log = logging.getLogger(__name__)

# KEYS: [queue list, queue messages hash]
# ARGV: [namespace, then per message: sender, redis message id, json prefix, json suffix]
# The dramatiq message JSON is split around the envelope's "seq" value, which only Redis knows.
_COMMIT_SCRIPT = """
local out = {}
local n = (#ARGV - 1) / 4
for i = 0, n - 1 do
    local base = 2 + i * 4
    local seq = redis.call('INCR', ARGV[1] .. ':seq:' .. ARGV[base])
    redis.call('HSET', KEYS[2], ARGV[base + 1], ARGV[base + 2] .. seq .. ARGV[base + 3])
    redis.call('RPUSH', KEYS[1], ARGV[base + 1])
    out[i + 1] = seq
end
return out
"""


def dramatiq_message_parts(envelope: Envelope, redis_message_id: str) -> tuple[str, str]:
    """The dramatiq message for ``envelope`` as JSON, split where the sequence number goes."""
    env = envelope.to_json()
    env.pop("seq")
    body = orjson.dumps(env).decode()
    prefix = (
        f'{{"queue_name":"{QUEUE}","actor_name":"{ACTOR}","args":[{body[:-1]},"seq":'
    )
    suffix = (
        '}],"kwargs":{},"options":'
        + orjson.dumps({"redis_message_id": redis_message_id}).decode()
        + f',"message_id":"{envelope.id}","message_timestamp":{envelope.received_at}}}'
    )
    return prefix, suffix


class Intake:
    """Commit envelopes to the durable queue in batches; ``submit`` returns once its batch is on disk."""

    def __init__(
        self,
        redis_url: str,
        *,
        namespace: str = "hl7gw",
        batch_max: int = 256,
        timeout: float = 5.0,
    ):
        self.keys = Keys(namespace)
        self.batch_max = batch_max
        self.timeout = timeout
        self._redis = aioredis.Redis.from_url(
            redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        self._script = self._redis.register_script(_COMMIT_SCRIPT)
        self._pending: asyncio.Queue[tuple[Envelope, asyncio.Future[int]]] = asyncio.Queue()
        self._flusher: asyncio.Task[None] | None = None
        self.committed = 0
        self.batches = 0

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._run(), name="hl7gw-intake-flusher")

    async def close(self) -> None:
        if self._flusher is not None:
            # Let waiting messages be committed (or failed) before stopping.
            while not self._pending.empty():
                await asyncio.sleep(0.01)
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
        await self._redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def submit(self, envelope: Envelope) -> int:
        """Queue ``envelope`` for the next commit; returns its sequence number once durable.

        Raises IntakeUnavailable when the commit failed: nothing may then be acknowledged.
        """
        if self._flusher is None or self._flusher.done():
            raise IntakeUnavailable("intake is not running")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._pending.put((envelope, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while len(batch) < self.batch_max and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[Envelope, asyncio.Future[int]]]) -> None:
        args: list[str | bytes] = [self.keys.namespace]
        for envelope, _ in batch:
            redis_message_id = str(uuid.uuid4())
            prefix, suffix = dramatiq_message_parts(envelope, redis_message_id)
            args += [envelope.sender, redis_message_id, prefix, suffix]
        started = time.perf_counter()
        try:
            seqs = await asyncio.wait_for(
                self._script(keys=[self.keys.queue(), self.keys.queue_messages()], args=args),
                timeout=self.timeout,
            )
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            # The outcome is unknown or failed: nobody is told "accepted". A sender that resends
            # may create a duplicate, which downstream idempotency absorbs; a lost message is worse.
            log.error("intake commit of %d message(s) failed: %s", len(batch), exc or type(exc).__name__)
            error = IntakeUnavailable(f"durable queue unavailable: {exc or type(exc).__name__}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.committed += len(batch)
        self.batches += 1
        log.debug("committed %d message(s) in %.1f ms", len(batch), (time.perf_counter() - started) * 1e3)
        for (_, future), seq in zip(batch, seqs):
            if not future.done():
                future.set_result(int(seq))
