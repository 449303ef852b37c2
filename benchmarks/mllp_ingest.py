"""MLLP ingest throughput and ACK latency: hl7gw's listener (durable commit before ACK) against a
minimal echo-ACK server with no storage, in one run on this machine.

    python benchmarks/mllp_ingest.py [--connections 20] [--messages 500] [--rate 1000]

The gateway side is the real ``hl7gw mllp`` process committing to an embedded redis-server with
``appendfsync always``. Each client connection sends a message, waits for its ACK, checks MSA-2
against the MSH-10 it sent, and sends the next (the usual MLLP exchange).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.mllp.framing import FrameDecoder, encode_frame  # noqa: E402
from gateway.queue.embedded import EmbeddedRedis, free_port  # noqa: E402

SB, EB = b"\x0b", b"\x1c\r"


def message(control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|BENCH|FAC|GW|GWF|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r"
        f"EVN|A01|20240101120000\r"
        f"PID|1||{control_id}^^^HOSP^MR||Everywoman^Eve^L||19700601|F|||1000 House Lane^^Ann Arbor^MI^99999\r"
        f"PV1|1|I|WARD^101^1|||||||MED\r"
    ).encode()


ECHO_SERVER = r'''
import asyncio, sys
async def handle(reader, writer):
    buf = b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        buf += data
        while True:
            end = buf.find(b"\x1c\r")
            if end < 0:
                break
            frame, buf = buf[buf.find(b"\x0b") + 1:end], buf[end + 2:]
            msh = frame.split(b"\r", 1)[0].split(b"|")
            ack = b"MSH|^~\\&|GW|GWF|BENCH|FAC|20240101120000||ACK^A01^ACK|1|P|2.5.1\rMSA|AA|" + msh[9]
            writer.write(b"\x0b" + ack + b"\x1c\r")
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
'''


async def run_clients(port: int, connections: int, messages: int, rate: float | None) -> tuple[float, list[float], int]:
    """Returns (elapsed seconds, ACK latencies in ms, failures)."""
    latencies: list[float] = []
    failures = 0
    interval = connections / rate if rate else 0.0

    async def one(n: int) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        decoder = FrameDecoder()
        pending: list[bytes] = []
        next_send = time.perf_counter()
        for i in range(messages):
            if interval:
                delay = next_send - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_send += interval
            control_id = f"B{n}-{i}"
            started = time.perf_counter()
            writer.write(encode_frame(message(control_id)))
            await writer.drain()
            while not pending:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                pending.extend(decoder.feed(data))
            ack = pending.pop(0)
            latencies.append((time.perf_counter() - started) * 1000)
            msa = next(s for s in ack.split(b"\r") if s.startswith(b"MSA")).split(b"|")
            if msa[1] != b"AA" or msa[2].decode() != control_id:
                failures += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(connections)))
    return time.perf_counter() - started, latencies, failures


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def report(name: str, elapsed: float, latencies: list[float], failures: int) -> float:
    rate = len(latencies) / elapsed
    q = statistics.quantiles(latencies, n=100)
    print(f"{name:34} {rate:9.0f} msg/s   p50 {q[49]:6.2f} ms   p99 {q[98]:6.2f} ms   failures {failures}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500, help="per connection")
    parser.add_argument("--rate", type=float, default=1000, help="total msg/s for the latency run (0: skip)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        redis_server = EmbeddedRedis(Path(tmp) / "redis")  # appendonly yes, appendfsync always
        redis_url = redis_server.start()
        gw_port, echo_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HL7GW_")}
        env.update(HL7GW_REDIS_URL=redis_url, HL7GW_MLLP_PORT=str(gw_port), HL7GW_LOG_LEVEL="WARNING",
                   HL7GW_DATA_DIR=tmp)
        gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "mllp"], env=env, cwd=ROOT)
        echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(echo_port)])
        try:
            wait_port(gw_port)
            wait_port(echo_port)
            total = args.connections * args.messages
            print(f"{args.connections} connections x {args.messages} messages = {total} per run; "
                  f"{os.cpu_count()} cores; redis appendfsync always")
            asyncio.run(run_clients(echo_port, 4, 50, None))  # warm up
            base = report("echo ACK server (no storage)", *asyncio.run(run_clients(echo_port, args.connections, args.messages, None)))
            ours = report("hl7gw mllp (durable commit)", *asyncio.run(run_clients(gw_port, args.connections, args.messages, None)))
            print(f"ratio hl7gw / echo baseline: {ours / base:.2f}")
            if args.rate:
                per = max(1, int(args.rate * 5 / args.connections))  # about 5 seconds
                report(f"hl7gw at {args.rate:.0f} msg/s offered", *asyncio.run(run_clients(gw_port, args.connections, per, args.rate)))
        finally:
            gateway.terminate()
            echo.terminate()
            gateway.wait(30)
            echo.wait(30)
            redis_server.stop()


if __name__ == "__main__":
    main()
