"""The MLLP listener over real TCP sockets, committing to a real Redis."""

from __future__ import annotations

import asyncio

import hl7
import redis
from hl7.mllp import open_hl7_connection

from gateway.mllp.server import MllpServer
from gateway.queue.embedded import free_port
from gateway.queue.intake import Intake
from gateway.queue.keys import Keys
from tests.conftest import sample


def _message(control_id: str, trigger: str = "A01") -> str:
    return (
        f"MSH|^~\\&|SND|FAC|GW|GWF|20240101120000||ADT^{trigger}^ADT_A01|{control_id}|P|2.5.1\r"
        f"PID|1||{control_id}^^^HOSP^MR||Doe^Jane||19800101|F\r"
    )


async def _with_server(redis_url: str, namespace: str, scenario) -> None:  # type: ignore[no-untyped-def]
    intake = Intake(redis_url, namespace=namespace, timeout=2.0)
    await intake.start()
    server = MllpServer(intake)
    port = await server.start("127.0.0.1", 0)
    try:
        await scenario(port)
    finally:
        await server.stop()
        await intake.close()


def test_many_connections_many_messages_acked_in_order(redis_url: str, redis_namespace: str) -> None:
    connections, per_connection = 10, 30

    async def client(port: int, n: int) -> None:
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        ids = [f"C{n}-{i}" for i in range(per_connection)]
        # Pipeline: send everything first, then read the ACKs; they must come back in order.
        for control_id in ids:
            writer.writemessage(hl7.parse(_message(control_id)))
        await writer.drain()
        for control_id in ids:
            ack = await reader.readmessage()
            assert str(ack.segment("MSA")[1]) == "AA"
            assert str(ack.segment("MSA")[2]) == control_id
            assert str(ack.segment("MSH")[9]) == "ACK^A01^ACK"
        writer.close()

    async def scenario(port: int) -> None:
        await asyncio.gather(*(client(port, n) for n in range(connections)))

    asyncio.run(_with_server(redis_url, redis_namespace, scenario))
    assert redis.Redis.from_url(redis_url).llen(Keys(redis_namespace).queue()) == connections * per_connection


def test_sample_messages_with_five_encoding_characters(redis_url: str, redis_namespace: str) -> None:
    async def scenario(port: int) -> None:
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        raw = sample("v2-to-fhir-ig/ORU_R01.hl7").decode()
        writer.writemessage(hl7.parse(raw.strip()))
        ack = await reader.readmessage()
        assert str(ack.segment("MSA")[1]) == "AA"
        assert str(ack.segment("MSA")[2]) == "20251014154001-425"
        writer.close()

    asyncio.run(_with_server(redis_url, redis_namespace, scenario))


def test_unreadable_header_gets_ar_and_is_not_queued(redis_url: str, redis_namespace: str) -> None:
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"junk before\x0bPID|1||x\r\x1c\x0d")
        await writer.drain()
        data = await reader.readuntil(b"\x1c\x0d")
        text = data.strip(b"\x0b\x1c\x0d").decode()
        assert "|AR|" in text.split("\r")[1] + "|"
        assert any(seg.startswith("ERR|") for seg in text.split("\r"))
        writer.close()

    asyncio.run(_with_server(redis_url, redis_namespace, scenario))
    assert redis.Redis.from_url(redis_url).llen(Keys(redis_namespace).queue()) == 0


def test_redis_down_means_ar_207_never_aa() -> None:
    async def scenario(port: int) -> None:
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        writer.writemessage(hl7.parse(_message("DOWN-1")))
        ack = await reader.readmessage()
        assert str(ack.segment("MSA")[1]) == "AR"
        assert str(ack.segment("MSA")[2]) == "DOWN-1"
        assert "207" in str(ack.segment("ERR"))
        writer.close()

    asyncio.run(_with_server(f"redis://127.0.0.1:{free_port()}/0", "down", scenario))
