"""Is the Redis behind the queue durable? The intake's guard: nothing is acknowledged on a Redis
that can lose it (gateway/redis_persistence.py says which can), judged when the intake connects and
again every few seconds; and the same verdict at the start of a process that acknowledges messages.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from gateway import metrics
from gateway.errors import VolatileQueue, describe
from gateway.redis_persistence import (
    ALLOW_SETTING,
    CONFIG_NAMES,
    Persistence,
    Verdict,
    from_config,
    from_info,
    parse_info,
    read_persistence,
    text_of,
)

__all__ = ["ALLOW_SETTING", "DurabilityGuard", "Persistence", "Verdict", "judge_at_start", "require_durable"]

log = logging.getLogger(__name__)

#: Sends one command on an open connection and gives its reply (gateway/queue/resp.py's send).
Send = Callable[..., Awaitable[Any]]


async def read_persistence_async(send: Send) -> Persistence:
    """``read_persistence`` over the intake's own pipelined connection."""
    try:
        values: dict[str, str] = {}
        for name in CONFIG_NAMES:
            reply = await send("CONFIG", "GET", name)
            pairs = [text_of(item) for item in reply or []]
            values.update(zip(pairs[0::2], pairs[1::2]))
        return from_config(values)
    except redis.ResponseError:
        text = ""
        for section in ("persistence", "memory"):
            reply = await send("INFO", section)
            text += text_of(reply)
        return from_info(parse_info(text))


class DurabilityGuard:
    """The intake's verdict on its Redis, kept current: judged on each new connection of the intake
    and every ``recheck_s`` seconds (someone may run ``CONFIG SET appendonly no`` on a Redis the
    gateway is connected to). While ``refusal`` is set nothing is acknowledged. The start of a
    refusal is logged once as an error, its end once; a volatile Redis that is allowed, once as a
    warning; and ``hl7gw_queue_volatile`` says whether the queue is volatile now."""

    def __init__(self, allow_volatile: bool, *, recheck_s: float = 5.0):
        self.allow_volatile = allow_volatile
        self.recheck_s = recheck_s
        self.refusal = ""
        self._warned: list[str] = []

    async def check(self, send: Send) -> str:
        """Read the settings over ``send`` and judge them; the refusal ("" for none)."""
        self.judge(Verdict(await read_persistence_async(send), self.allow_volatile))
        return self.refusal

    def judge(self, verdict: Verdict) -> None:
        refusal = verdict.refusal
        if refusal and refusal != self.refusal:
            log.error("refusing every message (AR/CR 207): %s", refusal)
        elif self.refusal and not refusal:
            log.warning("the queue's Redis is durable now: accepting messages again")
        self.refusal = refusal
        warnings = verdict.warnings()
        for warning in warnings:
            if warning not in self._warned:
                log.warning("%s", warning)
        self._warned = warnings
        metrics.recorder().queue_volatile(verdict.volatile)


def judge_at_start(redis_url: str, allow_volatile: bool, *, timeout_s: float = 5.0) -> Verdict | None:
    """The verdict on the Redis at ``redis_url``, its warnings logged; None when it does not answer
    now (an outage: the intake judges it when it connects)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        verdict = Verdict(read_persistence(client), allow_volatile)
    except redis.RedisError as exc:
        log.warning("the queue's Redis does not answer (%s): its durability is checked when it does", describe(exc))
        return None
    finally:
        client.close()
    for warning in verdict.warnings():
        log.warning("%s", warning)
    return verdict


def require_durable(redis_url: str, allow_volatile: bool) -> None:
    """For a process that acknowledges messages, at start: raises VolatileQueue, naming the setting,
    when the Redis can lose acknowledged messages and that is not allowed."""
    verdict = judge_at_start(redis_url, allow_volatile)
    if verdict is not None and verdict.refusal:
        raise VolatileQueue(f"refusing to accept messages: {verdict.refusal}")
