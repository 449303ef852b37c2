"""MLLP ingest throughput and ACK latency: hl7gw's listener (durable commit before ACK) against a
minimal echo-ACK server with no storage, in one run on this machine, with the same client.

    python benchmarks/mllp_ingest.py [--connections 20] [--messages 500] [--window 1] [--rate 1000]
                                     [--log-level WARNING] [--log-format text]

The gateway side is the real ``hl7gw mllp`` process committing to an embedded redis-server with
``appendfsync always``. The baseline is what a minimal real MLLP server does without storage: it
reads each frame's MSH and answers a proper ACK (sender and receiver swapped, ACK^<trigger>^ACK,
its own MSH-10 and timestamp, MSA-2 = MSH-10), with the same kind of code as the gateway's
listener (an asyncio Protocol, stdlib event loop); the client is the same for both. Each client
connection keeps at most ``--window``
messages unacknowledged (1: the usual MLLP exchange, send and wait) and checks every MSA-2
against the MSH-10 it sent, in order. The latency run offers ``--rate`` messages/s in total, each
connection's sends evenly spaced and the connections staggered (not all in one burst).
``--log-level INFO`` (the gateway's default) writes the listener's line per message to a file, as
a deployment would: run it beside the default WARNING to see what the log costs.
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
from gateway.services.embedded_redis import EmbeddedRedis, free_port  # noqa: E402


def message(control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|BENCH|FAC|GW|GWF|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r"
        f"EVN|A01|20240101120000\r"
        f"PID|1||{control_id}^^^HOSP^MR||Everywoman^Eve^L||19700601|F|||1000 House Lane^^Ann Arbor^MI^99999\r"
        f"PV1|1|I|WARD^101^1|||||||MED\r"
    ).encode()


ECHO_SERVER = r'''
import asyncio, itertools, sys, time

class EchoAck(asyncio.Protocol):
    """A minimal MLLP server: frames in, a proper ACK per frame out, nothing stored."""
    ids = itertools.count()

    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        buffer = self.buffer + data
        out = []
        while True:
            end = buffer.find(b"\x1c\r")
            if end < 0:
                break
            frame = buffer[buffer.find(b"\x0b") + 1 : end]
            buffer = buffer[end + 2 :]
            msh = frame.split(b"\r", 1)[0].split(b"|")
            trigger = msh[8].split(b"^")[1] if b"^" in msh[8] else b""
            now = time.strftime("%Y%m%d%H%M%S").encode()
            ack = b"|".join([b"MSH", msh[1], msh[4], msh[5], msh[2], msh[3], now, b"", b"ACK^" + trigger + b"^ACK",
                             b"E%d" % next(self.ids), msh[10], msh[11]]) + b"\rMSA|AA|" + msh[9] + b"\r"
            out.append(b"\x0b" + ack + b"\x1c\r")
        self.buffer = buffer
        if out:
            self.transport.write(b"".join(out))

async def main():
    server = await asyncio.get_running_loop().create_server(EchoAck, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''


class Result:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failures = 0
        self.elapsed = 0.0


async def run_clients(port: int, connections: int, messages: int, window: int, rate: float | None) -> Result:
    """``connections`` clients each sending ``messages``, at most ``window`` unacknowledged."""
    result = Result()
    interval = connections / rate if rate else 0.0

    async def one(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        decoder = FrameDecoder()
        in_flight: list[tuple[bytes, float]] = []
        slots = asyncio.Semaphore(window)
        done = asyncio.Event()

        async def read_acks() -> None:
            received = 0
            while received < messages:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                now = time.perf_counter()
                for ack in decoder.feed(data):
                    control_id, started = in_flight.pop(0)
                    result.latencies.append((now - started) * 1000)
                    msa = next(s for s in ack.split(b"\r") if s.startswith(b"MSA")).split(b"|")
                    if msa[1] not in (b"AA", b"CA") or msa[2] != control_id:
                        result.failures += 1
                    received += 1
                    slots.release()
            done.set()

        acks = asyncio.create_task(read_acks())
        next_send = time.perf_counter() + interval * n / connections  # staggered connections
        for i in range(messages):
            await slots.acquire()
            if interval:
                delay = next_send - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_send += interval
            control_id = f"B{n}-{i}".encode()
            in_flight.append((control_id, time.perf_counter()))
            writer.write(encode_frame(message(control_id.decode())))
        await acks
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(connections)))
    result.elapsed = time.perf_counter() - started
    return result


def wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pids: dict[str, int], work):
    """Run ``work()``; return its result and the CPU seconds each named process (and this one) used."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    own = time.process_time()
    result = work()
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    used["client"] = time.process_time() - own
    return result, used


def report_cpu(used: dict[str, float], messages: int) -> None:
    print(
        "    CPU us/message: " + ", ".join(f"{name} {seconds * 1e6 / messages:.0f}" for name, seconds in used.items())
    )


def report(name: str, result: Result) -> float:
    rate = len(result.latencies) / result.elapsed
    q = statistics.quantiles(result.latencies, n=100)
    print(
        f"{name:36} {rate:9.0f} msg/s   p50 {q[49]:6.2f} ms   p99 {q[98]:6.2f} ms   failures {result.failures}",
        flush=True,
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500, help="per connection")
    parser.add_argument("--window", type=int, default=1, help="unacknowledged messages per connection")
    parser.add_argument("--rate", type=float, default=1000, help="total msg/s for the latency run (0: skip)")
    parser.add_argument("--seconds", type=float, default=10, help="length of the latency run")
    parser.add_argument("--log-level", default="WARNING", help="HL7GW_LOG_LEVEL (INFO: a line per message)")
    parser.add_argument("--log-format", default="text", choices=("text", "json"), help="HL7GW_LOG_FORMAT")
    args = parser.parse_args()
    run = asyncio.run

    with tempfile.TemporaryDirectory() as tmp:
        redis_server = EmbeddedRedis(Path(tmp) / "redis")  # appendonly yes, appendfsync always
        redis_url = redis_server.start()
        gw_port, echo_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HL7GW_") or k == "HL7GW_ALLOW_VOLATILE_REDIS"}
        env.update(
            HL7GW_REDIS_URL=redis_url,
            HL7GW_MLLP_PORT=str(gw_port),
            HL7GW_LOG_LEVEL=args.log_level,
            HL7GW_LOG_FORMAT=args.log_format,
            HL7GW_DATA_DIR=tmp,
        )
        log_file = open(Path(tmp) / "mllp.log", "ab")  # noqa: SIM115 - open for the gateway's lifetime
        gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "mllp"], env=env, cwd=ROOT, stderr=log_file)
        echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(echo_port)])
        try:
            wait_port(gw_port)
            wait_port(echo_port)
            total = args.connections * args.messages
            print(
                f"{args.connections} connections x {args.messages} messages = {total} per run, window {args.window}; "
                f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; redis appendfsync always",
                flush=True,
            )
            print("event loop: asyncio's own (stdlib) in the echo server, in hl7gw mllp and in the client", flush=True)
            print(f"hl7gw mllp logs at {args.log_level} as {args.log_format}, to a file", flush=True)
            run(run_clients(echo_port, 4, 100, args.window, None))  # warm up both
            run(run_clients(gw_port, 4, 100, args.window, None))
            redis_pid = int(redis_server.pidfile.read_text())
            result, used = measured(
                {"echo": echo.pid},
                lambda: run(run_clients(echo_port, args.connections, args.messages, args.window, None)),
            )
            base = report("echo ACK server (no storage)", result)
            report_cpu(used, total)
            result, used = measured(
                {"hl7gw mllp": gateway.pid, "redis": redis_pid},
                lambda: run(run_clients(gw_port, args.connections, args.messages, args.window, None)),
            )
            ours = report("hl7gw mllp (durable commit)", result)
            report_cpu(used, total)
            print(f"ratio hl7gw / echo baseline: {ours / base:.2f}")
            if args.rate:
                per = max(1, int(args.rate * args.seconds / args.connections))
                name = f"hl7gw at {args.rate:.0f} msg/s offered"
                report(name, run(run_clients(gw_port, args.connections, per, 1, args.rate)))
        finally:
            gateway.terminate()
            echo.terminate()
            gateway.wait(30)
            echo.wait(30)
            log_file.close()
            lines = (Path(tmp) / "mllp.log").read_bytes().count(b"\n")
            print(f"hl7gw mllp wrote {lines} log line(s)")
            redis_server.stop()


if __name__ == "__main__":
    main()
