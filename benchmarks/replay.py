"""A bulk replay job under live traffic: how fast the job goes, and what it does to live ACK latency.

    python benchmarks/replay.py [--letters 10000] [--replay-rate 200] [--live-rate 200] [--seconds 20]

Starts ``hl7gw run`` in a temporary directory (embedded Redis, SQLite) whose database already holds
``--letters`` open dead letters (ADT^A04s that convert: as after a mapping fix), with
``HL7GW_REPLAY_RATE=--replay-rate``. Then two runs of ``--live-rate`` msg/s of live MLLP traffic
over 4 connections for ``--seconds`` each, every message with a unique MSH-10 and patient:
  without the job   the baseline: p50/p99 of send -> ACK
  with the job      ``hl7gw dlq replay --all`` started just before; the same figures, and the job's
                    throughput (letters replayed per second while the live traffic ran, then until
                    the job is done and every replayed message is stored).
Live ACK latency is what a sender sees; the job's messages go on their own queue at the set rate.
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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from gateway.db.engine import make_engine  # noqa: E402
from gateway.db.migrate import migrate  # noqa: E402
from gateway.db.schema import dead_letter, fhir_resource  # noqa: E402
from gateway.envelope import Envelope  # noqa: E402
from gateway.journal.dead_letters import DeadLetterStore, Letter  # noqa: E402
from gateway.mllp.framing import FrameDecoder, encode_frame  # noqa: E402
from gateway.services.embedded_redis import free_port  # noqa: E402

CONNECTIONS = 4


def adt(control_id: str, app: str) -> bytes:
    return (
        f"MSH|^~\\&|{app}|FAC|GW|GWF|20240101120000||ADT^A04^ADT_A01|{control_id}|P|2.5.1\r"
        f"EVN|A04|20240101120000\r"
        f"PID|1||{control_id}^^^HOSP^MR||Everywoman^Eve^L||19700601|F\r"
        f"PV1|1|O|CLINIC^1^1\r"
    ).encode()


async def live(port: int, rate: float, seconds: float, prefix: str) -> tuple[list[float], int]:
    """``rate`` msg/s in total over CONNECTIONS connections, send and wait; latencies in ms, failures."""
    latencies: list[float] = []
    failures = 0
    per_connection = int(rate * seconds / CONNECTIONS)
    interval = CONNECTIONS / rate

    async def one(n: int) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        decoder = FrameDecoder()
        next_send = time.perf_counter() + interval * n / CONNECTIONS
        for i in range(per_connection):
            delay = next_send - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            next_send += interval
            started = time.perf_counter()
            writer.write(encode_frame(adt(f"{prefix}{n}-{i}", "LIVE")))
            acks: list[bytes] = []
            while not acks:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the gateway closed the connection")
                acks = decoder.feed(data)
            latencies.append((time.perf_counter() - started) * 1000)
            if b"|AA|" not in acks[0] and b"|CA|" not in acks[0]:
                failures += 1
        writer.close()

    await asyncio.gather(*(one(n) for n in range(CONNECTIONS)))
    return latencies, failures


def figures(name: str, latencies: list[float], failures: int) -> tuple[float, float]:
    q = statistics.quantiles(latencies, n=100)
    shown = f"ACK p50 {q[49]:7.2f} ms   p99 {q[98]:7.2f} ms   failures {failures}"
    print(f"{name:28} {len(latencies):6d} live messages   {shown}", flush=True)
    return q[49], q[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--letters", type=int, default=10_000)
    parser.add_argument("--replay-rate", type=float, default=200)
    parser.add_argument("--live-rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        engine = make_engine(f"sqlite:///{data / 'hl7gw.sqlite3'}")
        migrate(engine)
        letters = DeadLetterStore(engine)
        for n in range(args.letters):
            raw = adt(f"R{n}", "REPLAY")
            envelope = Envelope(str(uuid.uuid4()), raw, 1_700_000_000_000 + n, "REPLAY|FAC", f"R{n}", "bench", n + 1)
            letters.park(Letter(envelope, "convert", "mapping fixed since", created_at=1_700_000_000_000 + n))
        mllp_port, http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HL7GW_") or k == "HL7GW_ALLOW_VOLATILE_REDIS"}
        env.update(
            HL7GW_DATA_DIR=str(data),
            HL7GW_MLLP_PORT=str(mllp_port),
            HL7GW_HTTP_PORT=str(http_port),
            HL7GW_LOG_LEVEL="WARNING",
            HL7GW_REPLAY_RATE=str(args.replay_rate),
        )
        log_path = Path(tmp) / "gateway.log"
        with open(log_path, "wb") as log:
            gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run"], env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 120
            while b"hl7gw: ready" not in log_path.read_bytes():
                if gateway.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log_path.read_text()[-3000:])
                time.sleep(0.2)
            print(f"{args.letters} dead letters; replay rate {args.replay_rate}/s; live {args.live_rate} msg/s")
            base = figures("without the job", *asyncio.run(live(mllp_port, args.live_rate, args.seconds, "A")))

            def replayed() -> int:
                with engine.connect() as conn:
                    query = select(func.count()).select_from(dead_letter).where(dead_letter.c.status == "replayed")
                    return int(conn.execute(query).scalar_one())

            started = subprocess.run(
                [sys.executable, "-m", "gateway.cli", "dlq", "replay", "--all", "--sender", "REPLAY|FAC"],
                env=env,
                capture_output=True,
                check=True,
            )
            t0, n0 = time.monotonic(), replayed()
            loaded = figures("with the job", *asyncio.run(live(mllp_port, args.live_rate, args.seconds, "B")))
            during = (replayed() - n0) / (time.monotonic() - t0)
            while replayed() < args.letters and time.monotonic() - t0 < 3600:
                time.sleep(0.5)
            job_seconds = time.monotonic() - t0

            def stored() -> int:
                with engine.connect() as conn:
                    query = select(func.count()).select_from(fhir_resource).where(fhir_resource.c.type == "Patient")
                    return int(conn.execute(query).scalar_one())

            live_count = int(args.live_rate * args.seconds / CONNECTIONS) * CONNECTIONS * 2
            while stored() < args.letters + live_count and time.monotonic() - t0 < 3600:
                time.sleep(0.5)
            all_seconds = time.monotonic() - t0
            job_id = started.stdout.split()[1].decode()
            print(f"job {job_id}: {during:.0f} letters/s replayed while live traffic ran")
            print(f"all {args.letters} replayed in {job_seconds:.1f} s ({args.letters / job_seconds:.0f}/s), ", end="")
            print(f"all stored in {all_seconds:.1f} s ({args.letters / all_seconds:.0f}/s)")
            change = f"p50 {loaded[0] - base[0]:+.2f} ms, p99 {loaded[1] - base[1]:+.2f} ms"
            print(f"live ACK with the job: {change} (target: p99 +50 ms at most)")
        finally:
            gateway.terminate()
            gateway.wait(120)
            engine.dispose()


if __name__ == "__main__":
    main()
