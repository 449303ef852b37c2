"""Helpers for listener tests: a real MllpServer on a free port, and raw MLLP exchanges."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import hl7
from hl7.client import MLLPClient

from gateway.hl7.message import Message as Hl7Message
from gateway.hl7.message import parse
from gateway.mllp.framing import FrameDecoder, encode_frame
from gateway.mllp.limits import Limits
from gateway.mllp.server import MllpServer
from gateway.mllp.triage import Triage
from gateway.queue.durability import DurabilityGuard
from gateway.queue.intake import Intake


def adt(
    control_id: str, *, trigger: str = "A01", sender: str = "SND", extra: str = "", version: str = "2.5.1"
) -> bytes:
    """An ADT message; ``extra`` is appended to MSH after MSH-12 (e.g. "|||NE|NE")."""
    return (
        f"MSH|^~\\&|{sender}|FAC|GW|GWF|20240101120000||ADT^{trigger}^ADT_A01|{control_id}|P|{version}{extra}\r"
        f"PID|1||{control_id}^^^HOSP^MR||Doe^Jane||19800101|F\r"
    ).encode()


@contextlib.asynccontextmanager
async def listening(
    redis_url: str,
    namespace: str,
    *,
    triage: Triage | None = None,
    limits: Limits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    commit_acks: bool = False,
    dedup_window_s: int = 7 * 86_400,
    durability: DurabilityGuard | None = None,
) -> AsyncIterator[tuple[MllpServer, int]]:
    intake = Intake(redis_url, namespace=namespace, timeout=2.0, dedup_window_s=dedup_window_s, durability=durability)
    await intake.start()
    server = MllpServer(intake, triage=triage, limits=limits, ssl_context=ssl_context, commit_acks=commit_acks)
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.stop(drain_timeout=5)
        await intake.close()


class RawClient:
    """An MLLP peer that writes exactly the bytes it is given and reads whole frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.frames: list[bytes] = []

    @classmethod
    async def connect(
        cls, port: int, ssl_context: ssl.SSLContext | None = None, source: str | None = None
    ) -> RawClient:
        """Connect to the listener on 127.0.0.1; ``source``: from that address (any of 127/8 on Linux)."""
        local = (source, 0) if source else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context, local_addr=local)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_message(self, message: bytes) -> None:
        await self.send(encode_frame(message))

    async def read_frame(self, timeout: float = 5.0) -> bytes:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("closed by the listener")
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)

    async def read_ack(self, timeout: float = 5.0) -> Hl7Message:
        return parse((await self.read_frame(timeout)).decode())

    async def nothing_more(self, wait: float = 0.3) -> bool:
        """True when no frame arrives within ``wait`` seconds."""
        try:
            await self.read_frame(wait)
        except TimeoutError:
            return True
        return False

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return True
                self.frames += self.decoder.feed(data)
        except TimeoutError:  # before OSError: TimeoutError is one, and it means still open
            return False
        except OSError:  # a reset: closed too
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


def send_raw(raw: bytes, port: int) -> hl7.Message:
    """Send one message as received (5 encoding characters and all) with python-hl7's MLLPClient."""
    text = raw.decode("utf-8").replace("\r\n", "\r").replace("\n", "\r").strip()
    with MLLPClient("127.0.0.1", port) as client:
        ack = client.send_message(text)
    return hl7.parse(ack.decode("utf-8"))
