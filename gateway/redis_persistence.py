"""What a Redis server does to keep what it acknowledged: its persistence settings, and whether the
gateway may acknowledge messages on it (the verdict). Read by the intake's guard
(gateway/queue/durability.py), at start, and by readiness (``/health/ready``, ``hl7gw status``).

An acknowledged message must survive a Redis crash. That takes the append-only file fsynced before
every reply: ``appendonly yes`` and ``appendfsync always``. ``everysec`` (Redis's default once AOF
is on) can lose the last second of writes, and ``no`` (or RDB snapshots alone) everything since
the last snapshot; both are refused unless the operator says they know
(HL7GW_ALLOW_VOLATILE_REDIS=true). A ``maxmemory-policy`` other than ``noeviction`` may evict
queued messages: warned about, not refused.

The settings are read with ``CONFIG GET``. Where CONFIG is refused (renamed, or denied to the
gateway's ACL user) ``INFO`` still says whether the AOF is on and the eviction policy, but not
the fsync policy: that is refused as unknown, with a message saying how to let the gateway read
it. The embedded Redis allows its user ``CONFIG GET`` only, so it is checked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

#: What the operator sets to accept a Redis that can lose acknowledged messages.
ALLOW_SETTING = "HL7GW_ALLOW_VOLATILE_REDIS"
#: The settings read, in the order asked.
CONFIG_NAMES = ("appendonly", "appendfsync", "maxmemory-policy")


@dataclass(frozen=True, slots=True)
class Persistence:
    """The persistence settings of one Redis server; None where they could not be read."""

    appendonly: bool
    appendfsync: str | None
    maxmemory_policy: str | None
    #: "CONFIG GET", or "INFO" when CONFIG was refused.
    source: str = "CONFIG GET"

    @property
    def loss(self) -> str:
        """Why acknowledged messages may be lost in a Redis crash ("" when they may not), naming the setting."""
        if not self.appendonly:
            return (
                "Redis runs without the append-only file (appendonly is no): a Redis crash or restart loses "
                "every message queued since its last snapshot; set 'appendonly yes' and 'appendfsync always'"
            )
        if self.appendfsync is None:
            return (
                "Redis's appendfsync cannot be read (CONFIG GET is refused to the gateway; INFO does not "
                "show it): the gateway cannot tell that acknowledged messages are on disk; allow its Redis "
                "user CONFIG GET, or make sure of 'appendfsync always' and say so"
            )
        if self.appendfsync != "always":
            return (
                f"Redis's appendfsync is {self.appendfsync}, not always: a Redis crash can lose messages "
                f"already acknowledged ({_FSYNC_LOSS.get(self.appendfsync, 'an unknown amount')}); "
                "set 'appendfsync always'"
            )
        return ""

    @property
    def eviction(self) -> str:
        """Why queued messages may be evicted ("" when they may not)."""
        if self.maxmemory_policy in (None, "noeviction"):
            return ""
        return (
            f"Redis's maxmemory-policy is {self.maxmemory_policy}, not noeviction: when Redis reaches "
            "maxmemory it may delete queued messages; set 'maxmemory-policy noeviction'"
        )


_FSYNC_LOSS = {"everysec": "up to the last second of writes", "no": "whatever the OS had not written yet"}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the gateway does with a Redis of these settings."""

    persistence: Persistence
    allow_volatile: bool

    @property
    def volatile(self) -> bool:
        return bool(self.persistence.loss)

    @property
    def refusal(self) -> str:
        """Why no message may be acknowledged on this Redis ("" when they may)."""
        if not self.volatile or self.allow_volatile:
            return ""
        return f"{self.persistence.loss} (or set {ALLOW_SETTING}=true to accept that risk)"

    def warnings(self) -> list[str]:
        found = []
        if self.volatile and self.allow_volatile:
            found.append(f"{self.persistence.loss}; accepted because {ALLOW_SETTING}=true")
        if self.persistence.eviction:
            found.append(self.persistence.eviction)
        return found


def from_config(values: dict[str, str]) -> Persistence:
    return Persistence(
        appendonly=values.get("appendonly", "no").lower() == "yes",
        appendfsync=values.get("appendfsync") or None,
        maxmemory_policy=values.get("maxmemory-policy") or None,
    )


def from_info(info: dict[str, Any]) -> Persistence:
    """From ``INFO persistence`` and ``INFO memory`` (redis-py's parsed dict, or ``parse_info``'s)."""
    return Persistence(
        appendonly=str(info.get("aof_enabled", "0")) == "1",
        appendfsync=None,
        maxmemory_policy=str(info["maxmemory_policy"]) if "maxmemory_policy" in info else None,
        source="INFO",
    )


def parse_info(text: str) -> dict[str, str]:
    """The ``field:value`` lines of an INFO reply."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def read_persistence(client: redis.Redis) -> Persistence:
    """The settings of the Redis ``client`` talks to; raises redis.RedisError when it does not answer."""
    try:
        values: dict[str, str] = {}
        for name in CONFIG_NAMES:
            found: dict[Any, Any] = client.config_get(name)
            values.update((text_of(key), text_of(value)) for key, value in found.items())
        return from_config(values)
    except redis.ResponseError:  # CONFIG renamed or denied: INFO tells less
        return from_info({**client.info("persistence"), **client.info("memory")})


def text_of(value: object) -> str:
    """A reply item as text (redis-py gives bytes unless told to decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)
