"""A circuit breaker per remote sink, shared by every worker through Redis.

Closed: requests flow. After ``threshold`` failures in a row it opens for a cooldown that doubles
with every further failure (up to ``max_cooldown``): nobody calls the server, messages wait. When
the cooldown is over, one worker (holding the probe key) tries; success closes the breaker for
everyone, failure opens it again for longer.
"""

from __future__ import annotations

import time

import redis

from gateway.keys import Keys

# KEYS: [breaker hash, probe key]; ARGV: [now ms, threshold, cooldown ms, max cooldown ms, error]
# Returns the failures in a row after this one.
_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[5])
local threshold = tonumber(ARGV[2])
if failures >= threshold then
    local cooldown = math.min(tonumber(ARGV[3]) * 2 ^ math.min(failures - threshold, 30), tonumber(ARGV[4]))
    redis.call('HSET', KEYS[1], 'open_until', tonumber(ARGV[1]) + math.floor(cooldown))
end
redis.call('DEL', KEYS[2])
return failures
"""


class CircuitBreaker:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        sink: str,
        *,
        threshold: int = 5,
        cooldown_s: float = 10.0,
        max_cooldown_s: float = 300.0,
        probe_s: float = 30.0,
    ):
        self.client = client
        self.key = keys.sink_breaker(sink)
        self.probe_key = keys.sink_probe(sink)
        self.threshold = threshold
        self.cooldown_ms = int(cooldown_s * 1000)
        self.max_cooldown_ms = int(max(max_cooldown_s, cooldown_s) * 1000)
        #: How long a probe may take before another worker may try.
        self.probe_ms = int(probe_s * 1000)
        self._failure = client.register_script(_FAILURE)

    def wait_ms(self) -> int:
        """0 when a request may go now; else how long to wait before asking again."""
        failures, open_until = self.client.hmget(self.key, "failures", "open_until")
        if failures is None or int(failures) < self.threshold:
            return 0
        remaining = int(open_until or 0) - _now_ms()
        if remaining > 0:
            return remaining
        # Half-open: one trial request at a time.
        if self.client.set(self.probe_key, b"1", nx=True, px=self.probe_ms):
            return 0
        return max(100, min(self.cooldown_ms, int(self.client.pttl(self.probe_key) or 0)))

    def success(self) -> None:
        self.client.delete(self.key, self.probe_key)

    def failure(self, error: str = "") -> int:
        """Count a failure; returns the failures in a row so far."""
        args: list[int | str] = [_now_ms(), self.threshold, self.cooldown_ms, self.max_cooldown_ms, error[:2000]]
        return int(self._failure(keys=[self.key, self.probe_key], args=args))

    def last_error(self) -> str:
        """The error of the latest failure in a row ("" when closed)."""
        value = self.client.hget(self.key, "last_error")
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        return value or ""

    def is_open(self) -> bool:
        failures = self.client.hget(self.key, "failures")
        return failures is not None and int(failures) >= self.threshold


def _now_ms() -> int:
    return int(time.time() * 1000)
