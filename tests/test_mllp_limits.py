"""Listener limits: message size, frame and idle timeouts, connection count, and a draining stop."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from gateway.mllp.framing import OVERSIZED_HEAD_BYTES
from gateway.mllp.limits import Limits
from tests.support.mllp import RawClient, adt, listening
from tests.support.queue import queued


def test_oversized_message_gets_ar_and_the_connection_is_closed(redis_url: str, redis_namespace: str) -> None:
    limit = 100_000
    big = adt("BIG-1") + b"OBX|1|ED|PDF||" + b"A" * (2 * limit) + b"\r"

    async def scenario() -> None:
        async with listening(redis_url, redis_namespace, limits=Limits(max_message_bytes=limit)) as (server, port):
            client = await RawClient.connect(port)
            await client.send_message(adt("OK-1"))
            assert (await client.read_ack()).get("MSA-1") == "AA"
            client.writer.write(b"\x0b" + big + b"\x1c\r")  # the listener may close before all of it is read
            ack = await client.read_ack()
            assert (ack.get("MSA-1"), ack.get("MSA-2"), ack.get("ERR-3.1")) == ("AR", "BIG-1", "104")
            assert str(limit) in ack.get("ERR-8")
            assert await client.closed_by_peer()
            await client.close()
            assert server.stats.oversized == 1

    asyncio.run(scenario())
    ok, kept = queued(redis_url, redis_namespace)
    assert ok.control_id == "OK-1" and kept.kind == "rejected" and kept.control_id == "BIG-1"
    assert kept.raw == big[:OVERSIZED_HEAD_BYTES]  # the head is kept for operators, not the whole


def test_a_frame_that_does_not_finish_in_time_is_kept_and_the_connection_closed(
    redis_url: str, redis_namespace: str
) -> None:
    async def scenario() -> None:
        limits = Limits(frame_timeout_s=0.3)
        async with listening(redis_url, redis_namespace, limits=limits) as (server, port):
            client = await RawClient.connect(port)
            await client.send(b"\x0b" + adt("SLOW-1")[:40])
            assert await client.closed_by_peer(timeout=3)
            await client.close()
            assert server.stats.frame_timeouts == 1
            # Slow but steady frames are fine: the timeout is per frame, not per connection.
            client = await RawClient.connect(port)
            for i in range(4):
                await client.send_message(adt(f"STEADY-{i}"))
                assert (await client.read_ack()).get("MSA-1") == "AA"
                await asyncio.sleep(0.15)
            await client.close()

    asyncio.run(scenario())
    kept = queued(redis_url, redis_namespace)[0]
    assert kept.kind == "rejected" and kept.raw == adt("SLOW-1")[:40]
    assert "not finished within 0.3 s" in kept.meta["reason"]


def test_idle_connection_is_closed(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        limits = Limits(idle_timeout_s=0.3)
        async with listening(redis_url, redis_namespace, limits=limits) as (server, port):
            client = await RawClient.connect(port)
            await client.send_message(adt("IDLE-1"))
            assert (await client.read_ack()).get("MSA-1") == "AA"
            assert await client.closed_by_peer(timeout=3)
            await client.close()
            assert server.stats.idle_timeouts == 1

    asyncio.run(scenario())


def test_connections_beyond_the_limit_are_refused(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        async with listening(redis_url, redis_namespace, limits=Limits(max_connections=2)) as (server, port):
            first, second = await RawClient.connect(port), await RawClient.connect(port)
            await asyncio.sleep(0.05)
            third = await RawClient.connect(port)
            assert await third.closed_by_peer(timeout=3)
            await third.close()
            assert server.stats.refused_connections == 1
            for n, client in enumerate((first, second)):
                await client.send_message(adt(f"LIM-{n}"))
                assert (await client.read_ack()).get("MSA-1") == "AA"
            await first.close()
            await asyncio.sleep(0.05)
            fourth = await RawClient.connect(port)  # a slot is free again
            await fourth.send_message(adt("LIM-4"))
            assert (await fourth.read_ack()).get("MSA-1") == "AA"
            await fourth.close()
            await second.close()

    asyncio.run(scenario())


def test_stop_answers_every_frame_already_read(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        async with listening(redis_url, redis_namespace) as (server, port):
            client = await RawClient.connect(port)
            await client.send(b"".join(b"\x0b" + adt(f"ST-{i}") + b"\x1c\r" for i in range(50)))
            await asyncio.sleep(0.05)
            await server.stop()
            acks = [await client.read_ack() for _ in range(50)]
            assert [a.get("MSA-2") for a in acks] == [f"ST-{i}" for i in range(50)]
            assert all(a.get("MSA-1") == "AA" for a in acks)
            assert await client.closed_by_peer()
            await client.close()

    asyncio.run(scenario())


def test_a_frame_cut_short_by_the_connection_closing_is_kept_and_counted(redis_url: str, redis_namespace: str) -> None:
    def closed() -> float:
        return REGISTRY.get_sample_value("hl7gw_mllp_unfinished_frames_total", {"reason": "closed"}) or 0.0

    before = closed()

    async def scenario() -> None:
        async with listening(redis_url, redis_namespace) as (server, port):
            for n, partial in enumerate((b"\x0b" + adt("HALF-1")[:50], b"\x0b \r\n")):  # 2nd: whitespace only
                client = await RawClient.connect(port)
                await client.send_message(adt(f"WHOLE-{n}"))
                assert (await client.read_ack()).get("MSA-1") == "AA"
                await client.send(partial)
                await asyncio.sleep(0.05)
                await client.close()
            for _ in range(100):
                if server.stats.unfinished_frames == 2:
                    break
                await asyncio.sleep(0.02)
            assert server.stats.unfinished_frames == 2

    asyncio.run(scenario())
    assert closed() == before + 2
    entries = queued(redis_url, redis_namespace)
    assert [(e.kind, e.control_id) for e in entries] == [
        ("message", "WHOLE-0"),
        ("rejected", ""),  # cut before its MSH-10
        ("message", "WHOLE-1"),
    ]
    assert entries[1].raw == adt("HALF-1")[:50] and entries[1].meta["reason"].endswith("in the middle of a frame")
