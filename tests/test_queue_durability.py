"""Nothing is acknowledged on a Redis that can lose it: not at start, not after a reconnect, not
after someone made a durable Redis volatile; unless HL7GW_ALLOW_VOLATILE_REDIS=true, which warns.
Real redis-servers configured each way (tests/support/redis_server.py)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

import hl7
import pytest
import redis

from gateway.errors import IntakeUnavailable, VolatileQueue
from gateway.keys import Keys
from gateway.queue.durability import DurabilityGuard, require_durable
from gateway.queue.intake import Intake
from gateway.services.embedded_redis import free_port
from tests.support.gateway_process import clean_env
from tests.support.mllp import adt, listening, send_raw
from tests.support.queue import parsed_envelope
from tests.support.redis_server import redis_server

DURABLE = ("appendonly yes", "appendfsync always")
CONFIG_HIDDEN = 'rename-command CONFIG ""'


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (("appendonly no",), "appendonly is no"),
        (("appendonly yes", "appendfsync everysec"), "appendfsync is everysec, not always"),
        (("appendonly yes", "appendfsync no"), "appendfsync is no, not always"),
        (("appendonly no", CONFIG_HIDDEN), "appendonly is no"),  # read from INFO persistence
        (("appendonly yes", "appendfsync always", CONFIG_HIDDEN), "appendfsync cannot be read"),
    ],
)
def test_a_volatile_redis_is_refused_at_start_naming_the_setting(
    tmp_path: Path, config: tuple[str, ...], named: str
) -> None:
    with redis_server(tmp_path / "redis", *config) as url:
        with pytest.raises(VolatileQueue) as refused:
            require_durable(url, allow_volatile=False)
        assert named in str(refused.value)
        assert "HL7GW_ALLOW_VOLATILE_REDIS=true" in str(refused.value)


def test_a_durable_redis_is_accepted_and_eviction_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with redis_server(tmp_path / "redis", *DURABLE, "maxmemory-policy allkeys-lru") as url:
        with caplog.at_level(logging.WARNING, "gateway.queue.durability"):
            require_durable(url, allow_volatile=False)
    assert "maxmemory-policy is allkeys-lru, not noeviction" in caplog.text


def test_allowed_volatile_redis_is_accepted_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with redis_server(tmp_path / "redis", "appendonly yes", "appendfsync everysec") as url:
        with caplog.at_level(logging.WARNING, "gateway.queue.durability"):
            require_durable(url, allow_volatile=True)
    assert "appendfsync is everysec" in caplog.text
    assert "accepted because HL7GW_ALLOW_VOLATILE_REDIS=true" in caplog.text


def test_the_intake_commits_nothing_on_a_volatile_redis_unless_allowed(tmp_path: Path) -> None:
    from gateway.metrics.catalogue import QUEUE_VOLATILE

    async def submit(url: str, allow: bool) -> BaseException | None:
        intake = Intake(url, namespace="durability", durability=DurabilityGuard(allow))
        await intake.start()
        try:
            await intake.submit(parsed_envelope(adt("C1")))
        except IntakeUnavailable as exc:
            return exc
        finally:
            await intake.close()
        return None

    with redis_server(tmp_path / "redis", "appendonly no") as url:
        refused = asyncio.run(submit(url, allow=False))
        assert refused is not None and "appendonly is no" in str(refused)
        assert redis.Redis.from_url(url).llen(Keys("durability").queue()) == 0
        assert QUEUE_VOLATILE._value.get() == 1
        assert asyncio.run(submit(url, allow=True)) is None
        assert redis.Redis.from_url(url).llen(Keys("durability").queue()) == 1


def test_a_redis_made_volatile_while_connected_gets_ar_207_until_durable_again(tmp_path: Path) -> None:
    """CONFIG SET appendonly no on a Redis the listener is connected to: within a recheck the
    answer is AR with ERR 207 naming the setting; once durable again, AA."""

    async def exchange(url: str) -> list[hl7.Message]:
        admin = redis.Redis.from_url(url)
        guard = DurabilityGuard(False, recheck_s=0.05)
        acks = []
        async with listening(url, "durability", durability=guard) as (_, port):
            acks.append(await asyncio.to_thread(send_raw, adt("C1"), port))
            admin.config_set("appendonly", "no")
            await _until(lambda: bool(guard.refusal))
            acks.append(await asyncio.to_thread(send_raw, adt("C2"), port))
            admin.config_set("appendonly", "yes")
            await _until(lambda: not guard.refusal)
            acks.append(await asyncio.to_thread(send_raw, adt("C3"), port))
        admin.close()
        return acks

    with redis_server(tmp_path / "redis", *DURABLE) as url:
        first, refused, again = asyncio.run(exchange(url))
    assert str(first.segment("MSA")[1]) == "AA"
    assert str(refused.segment("MSA")[1]) == "AR"
    err = str(refused.segment("ERR"))
    assert "207" in err and "appendonly is no" in err
    assert str(again.segment("MSA")[1]) == "AA"


async def _until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the durability check did not change its verdict"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("command", ["mllp", "run"])
def test_the_listener_does_not_start_on_a_volatile_redis(tmp_path: Path, command: str) -> None:
    """The acceptance test: a Redis started without persistence; ``hl7gw mllp`` and ``hl7gw run``
    exit with an error naming the setting, so nothing is acknowledged."""
    with redis_server(tmp_path / "redis", "appendonly no") as url:
        env = clean_env(
            HL7GW_REDIS_URL=url,
            HL7GW_ALLOW_VOLATILE_REDIS="false",
            HL7GW_MLLP_PORT=str(free_port()),
            HL7GW_DATA_DIR=str(tmp_path / "data"),
        )
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", command], env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2
    assert "refusing to accept messages" in done.stderr and "appendonly is no" in done.stderr
    assert "HL7GW_ALLOW_VOLATILE_REDIS=true" in done.stderr
