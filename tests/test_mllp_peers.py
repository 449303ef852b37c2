"""Who may connect, and for how long (issue 23.3): the per-peer connection limit, the allow-list of
source addresses, and an idle timer that bytes outside a frame do not reset. Real TCP sockets from
two source addresses (127.0.0.1 and 127.0.0.2) to a real listener committing to a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time

import pytest
from prometheus_client import REGISTRY

from gateway.mllp.limits import Limits
from gateway.mllp.peers import NOT_ALLOWED, PEER_LIMIT, PeerGate, peer_address
from tests.support.mllp import RawClient, adt, listening
from tests.support.queue import queued


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("hl7gw_mllp_connections_refused_total", {"reason": reason}) or 0.0


def unfinished(reason: str) -> float:
    return REGISTRY.get_sample_value("hl7gw_mllp_unfinished_frames_total", {"reason": reason}) or 0.0


async def answered(client: RawClient, control_id: str) -> bool:
    await client.send_message(adt(control_id))
    ack = await client.read_ack()
    return (ack.get("MSA-1"), ack.get("MSA-2")) == ("AA", control_id)


def test_one_address_holds_its_share_while_another_sender_is_served(
    redis_url: str, redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = refused(PEER_LIMIT)

    async def scenario() -> None:
        limits = Limits(max_connections=10, max_connections_per_peer=2)
        async with listening(redis_url, redis_namespace, limits=limits) as (server, port):
            first, second = await RawClient.connect(port), await RawClient.connect(port)
            await asyncio.sleep(0.05)
            third = await RawClient.connect(port)
            assert await third.closed_by_peer(timeout=3)
            await third.close()
            # Another address is served while the first holds its share, which keeps working.
            other = await RawClient.connect(port, source="127.0.0.2")
            assert await answered(other, "OTHER-1")
            assert await answered(first, "FIRST-1") and await answered(second, "SECOND-1")
            assert server.stats.refused_connections == 1
            await first.close()
            await asyncio.sleep(0.05)
            again = await RawClient.connect(port)  # one of its share is free again
            assert await answered(again, "AGAIN-1")
            for client in (again, second, other):
                await client.close()
            await asyncio.sleep(0.05)
            assert server.peers.open == {}

    with caplog.at_level(logging.WARNING, logger="gateway.mllp.server"):
        asyncio.run(scenario())
    assert refused(PEER_LIMIT) == before + 1
    line = next(r.getMessage() for r in caplog.records if "refused connection" in r.getMessage())
    assert line.startswith("refused connection from 127.0.0.1: 2 connections open from that address")
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == ["OTHER-1", "FIRST-1", "SECOND-1", "AGAIN-1"]


def test_the_allow_list_admits_its_addresses_and_closes_the_others_at_once(
    redis_url: str, redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = refused(NOT_ALLOWED)
    allowed = (ipaddress.ip_network("2001:db8::/32"), ipaddress.ip_network("127.0.0.2/32"))

    async def scenario() -> None:
        async with listening(redis_url, redis_namespace, limits=Limits(allowed_peers=allowed)) as (server, port):
            stranger = await RawClient.connect(port)  # from 127.0.0.1
            stranger.writer.write(b"\x0b" + adt("STRANGER-1") + b"\x1c\r")
            assert await stranger.closed_by_peer(timeout=3) and not stranger.frames  # no answer, nothing read
            await stranger.close()
            friend = await RawClient.connect(port, source="127.0.0.2")
            assert await answered(friend, "FRIEND-1")
            await friend.close()
            assert (server.stats.refused_connections, server.stats.connections) == (1, 1)

    with caplog.at_level(logging.WARNING, logger="gateway.mllp.server"):
        asyncio.run(scenario())
    assert refused(NOT_ALLOWED) == before + 1
    assert any(
        r.getMessage() == "refused connection from 127.0.0.1: address not in HL7GW_MLLP_ALLOWED_PEERS"
        for r in caplog.records
    )
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == ["FRIEND-1"]


def test_peer_addresses_are_compared_as_ip_addresses() -> None:
    gate = PeerGate((ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")), per_peer=1)
    mapped = peer_address("::ffff:10.1.2.3")  # a dual-stack listener's view of an IPv4 peer
    assert mapped == ipaddress.ip_address("10.1.2.3") and gate.refusal(mapped) is None
    assert gate.refusal(peer_address("fd00::1%eth0")) is None
    assert gate.refusal(peer_address("11.0.0.1")) == gate.refusal(peer_address("fe80::1")) == NOT_ALLOWED
    assert gate.refusal(peer_address("/run/mllp.sock")) == NOT_ALLOWED  # not an IP: not on the list
    gate.opened(mapped)
    assert gate.refusal(peer_address("10.1.2.3")) == PEER_LIMIT and gate.refusal(peer_address("10.1.2.4")) is None
    gate.closed(mapped)
    assert gate.refusal(peer_address("10.1.2.3")) is None and gate.open == {}


def test_bytes_outside_a_frame_do_not_keep_an_idle_connection_open(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        async with listening(redis_url, redis_namespace, limits=Limits(idle_timeout_s=0.4)) as (server, port):
            # Frames keep it open: six messages 0.15 s apart outlast the idle timeout.
            steady = await RawClient.connect(port)
            for i in range(6):
                assert await answered(steady, f"STEADY-{i}")
                await asyncio.sleep(0.15)
            await steady.close()
            # Junk outside a frame every 0.1 s does not: closed after the idle timeout all the same.
            client = await RawClient.connect(port)
            assert await answered(client, "IDLE-1")
            started = time.monotonic()

            async def junk() -> None:
                with contextlib.suppress(OSError):
                    while True:
                        client.writer.write(b"x\x1c\r")
                        await asyncio.sleep(0.1)

            sender = asyncio.create_task(junk())
            assert await client.closed_by_peer(timeout=3)
            assert 0.35 < time.monotonic() - started < 2
            sender.cancel()
            await client.close()
            assert server.stats.idle_timeouts == 1 and server.stats.discarded_bytes > 0

    asyncio.run(scenario())


def test_a_frame_sent_byte_by_byte_is_bounded_by_the_frame_timeout(redis_url: str, redis_namespace: str) -> None:
    before = unfinished("timeout")
    slow = b"\x0b" + adt("TRICKLE-1")

    async def scenario() -> None:
        limits = Limits(frame_timeout_s=0.4, idle_timeout_s=60)
        async with listening(redis_url, redis_namespace, limits=limits) as (server, port):
            client = await RawClient.connect(port)
            started = time.monotonic()
            with contextlib.suppress(OSError):
                for byte in slow:
                    if client.reader.at_eof():
                        break
                    await client.send(bytes([byte]))
                    await asyncio.sleep(0.05)
            assert await client.closed_by_peer(timeout=3)
            assert time.monotonic() - started < 2
            await client.close()
            assert server.stats.frame_timeouts == 1

    asyncio.run(scenario())
    assert unfinished("timeout") == before + 1
    [kept] = queued(redis_url, redis_namespace)
    assert kept.kind == "rejected" and slow[1:].startswith(kept.raw) and len(kept.raw) >= 5
