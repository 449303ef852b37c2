"""Pacing the import queue: at most ``rate`` messages a second for the whole gateway, and none
started while live traffic waits.

Every worker thread of the import queue calls ``ImportPace.wait()`` before it runs a message. One
Lua call reserves the next start slot in Redis: the key holds when the next slot is free (Redis's
clock, in microseconds); a caller takes it and moves it on by 1/rate, then sleeps until its slot
(the "generic cell rate algorithm" of rate limiters, with no burst). The rate holds however many
worker processes and threads share it, and a restarted worker picks up the same schedule.

Before reserving, the script looks at the live queue: when messages wait there that no worker has
fetched yet (every live thread is busy and every worker's prefetch is full), it reserves nothing
and the thread asks again a little later. Each process also says whether one of its own live
messages waits for a thread (``live_waiting``, the dramatiq Worker's work queue): then the import
thread waits as well, without asking Redis. Live traffic always goes first: an import runs at its
rate in the capacity live traffic leaves, and waits while live traffic needs all of it. A slot is
never reserved more than ``ahead_s`` ahead, so a slow rate never parks a thread (and its message)
for long; and once the worker drains (``stopping``), a thread holding a message runs it at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from gateway.keys import QUEUE, Keys

# KEYS: [pace slot, live queue list]
# ARGV: [interval (us), live messages waiting that still let an import go, longest reservation
#        ahead (us), wait when refused for live traffic (us)]
# Returns the microseconds to sleep: >= 0, a slot was reserved (start after the sleep); < 0, none
# was (sleep the absolute value, then ask again).
_PACE_SCRIPT = """
if redis.call('LLEN', KEYS[2]) > tonumber(ARGV[2]) then
    return -tonumber(ARGV[4])
end
local now = redis.call('TIME')
local us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < us then
    slot = us
end
local ahead = slot - us
if ahead > tonumber(ARGV[3]) then
    return -(ahead - tonumber(ARGV[3]))
end
local after = slot + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', math.ceil((after - us) / 1000) + 1000)
return ahead
"""


class ImportPace:
    """The import queue's shared pace: ``wait()`` returns when this thread may start its message."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        rate: float,
        *,
        live_waiting_max: int = 0,
        ahead_s: float = 1.0,
        yield_s: float = 0.05,
        live_waiting: Callable[[], bool] = lambda: False,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate <= 0:
            raise ValueError("the import rate is a number of messages a second above 0")
        self.rate = rate
        self._keys = [keys.import_pace(), keys.queue(QUEUE)]
        self._args = [round(1e6 / rate), live_waiting_max, round(ahead_s * 1e6), round(yield_s * 1e6)]
        self._script = client.register_script(_PACE_SCRIPT)
        self._yield_s = yield_s
        #: Whether a live message of this process waits for a thread (set once the Worker exists).
        self.live_waiting = live_waiting
        #: Set when the worker drains: a thread holding a message runs it now, without waiting.
        self.stopping = threading.Event()
        self._sleep = sleep

    def reserve(self) -> float:
        """One try: seconds to sleep before starting (>= 0), or minus the seconds to wait before
        trying again (no slot: live traffic waits, or the schedule is full for ``ahead_s``)."""
        return int(self._script(keys=self._keys, args=self._args)) / 1e6

    def wait(self) -> None:
        """Sleep until this thread's slot; a Redis error goes up (the failure policy waits out
        an outage of Redis and runs the message, and this, again)."""
        while not self.stopping.is_set():
            if self.live_waiting():
                self._sleep(self._yield_s)
                continue
            delay = self.reserve()
            if delay >= 0:
                if delay:
                    self._sleep(delay)
                return
            self._sleep(-delay)
