"""Live MLLP traffic during a big import: what the import does to live ACK latency, and how fast it drains.

    python benchmarks/import_fairness.py [--messages 100000] [--import-rate 100] [--live-rate 200]
                                         [--seconds 30] [--rounds 2] [--import-seconds 0]

Starts ``hl7gw run`` in a temporary directory (embedded Redis, SQLite) with
``HL7GW_IMPORT_RATE=--import-rate``, then alternates, ``--rounds`` times:
  without   ``--live-rate`` msg/s of live MLLP traffic over 4 connections for ``--seconds``,
            nothing else: the baseline
  with      the same live traffic while an importer process commits ``--messages`` ADT^A04s to
            the import queue (``Intake(queue=IMPORT_QUEUE)``: the path ``hl7gw import`` takes) as
            fast as it can (at ``--importer-nice``, by default what ``hl7gw import`` takes:
            gateway/procutil.py IMPORT_NICENESS; 0 to compare), and the workers drain them; the
            live traffic runs until the import queue is empty, or for ``--import-seconds`` when
            that is set: then what is left of the import is taken off its queue (as if
            cancelled), so the next baseline runs without it; a 100,000-message import drains at
            tens of messages a second beside 200 live msg/s on 2 cores, which would make every
            round an hour long
and a last ``without``. Each window prints the live ACK latency (send -> ACK) p50/p99, and the
live messages' receive -> stored latency (from the message archive: received_at to updated_at);
each import its commit rate and its drain rate. At the end: p99 with and without (all windows of
a kind pooled) and the difference; the target is +50 ms at most. Every message has its own MSH-10
and patient; live ones come from sender LIVE|FAC, imported ones from IMPORT|FAC.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import select  # noqa: E402

from benchmarks.replay import CONNECTIONS, adt  # noqa: E402
from gateway.db.engine import make_engine  # noqa: E402
from gateway.db.schema import message_archive  # noqa: E402
from gateway.envelope import Envelope  # noqa: E402
from gateway.keys import IMPORT_QUEUE, Keys  # noqa: E402
from gateway.mllp.framing import FrameDecoder, encode_frame  # noqa: E402
from gateway.procutil import IMPORT_NICENESS, yield_cpu  # noqa: E402
from gateway.queue.entry import new_envelope_id  # noqa: E402
from gateway.queue.intake import Intake  # noqa: E402
from gateway.services.embedded_redis import EmbeddedRedis, free_port  # noqa: E402

NAMESPACE = "hl7gw"


async def live(
    port: int, rate: float, until: Callable[[int], bool], prefix: str
) -> tuple[list[tuple[float, float]], int]:
    """``rate`` msg/s in total over CONNECTIONS connections, send and wait for the ACK, until
    ``until(messages sent)``; (send time (monotonic), latency in ms) each, and how many were not AA/CA."""
    latencies: list[tuple[float, float]] = []
    failures = 0
    interval = CONNECTIONS / rate
    sent = 0

    async def one(n: int) -> None:
        nonlocal failures, sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        decoder = FrameDecoder()
        next_send = time.perf_counter() + interval * n / CONNECTIONS
        i = 0
        while not until(sent):
            delay = next_send - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            next_send += interval
            started = time.perf_counter()
            writer.write(encode_frame(adt(f"{prefix}{n}-{i}", "LIVE")))
            sent += 1
            i += 1
            acks: list[bytes] = []
            while not acks:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the gateway closed the connection")
                acks = decoder.feed(data)
            latencies.append((time.monotonic(), (time.perf_counter() - started) * 1000))
            if b"|AA|" not in acks[0] and b"|CA|" not in acks[0]:
                failures += 1
        writer.close()

    await asyncio.gather(*(one(n) for n in range(CONNECTIONS)))
    return latencies, failures


async def commit_import(redis_url: str, messages: int, prefix: str, **options: int) -> None:
    """The importer: ``messages`` ADT^A04s committed to the import queue as fast as the intake
    takes them (at most 4,096 waiting for their commit at a time, as a reader ahead of it would);
    ``options``: the intake's (lanes, max_in_flight, batch_max)."""
    intake = Intake(redis_url, namespace=NAMESPACE, queue=IMPORT_QUEUE, **options)
    await intake.start()
    window = asyncio.Semaphore(4096)

    async def one(n: int) -> None:
        try:
            raw = adt(f"{prefix}{n}", "IMPORT")
            now = int(time.time() * 1000)
            await intake.submit(Envelope(new_envelope_id(), raw, now, "IMPORT|FAC", f"{prefix}{n}", "import"))
        finally:
            window.release()

    tasks = []
    for n in range(messages):
        await window.acquire()
        tasks.append(asyncio.ensure_future(one(n)))
    await asyncio.gather(*tasks)
    await intake.close()


def percentiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=100)
    return q[49], q[98]


def stored_latencies(engine: object, prefix: str) -> list[float]:
    """Receive -> stored (ms) of the live messages whose MSH-10 starts with ``prefix``."""
    t = message_archive.c
    query = select(t.received_at, t.updated_at).where(t.sender == "LIVE|FAC", t.control_id.startswith(prefix))
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return [float(updated - received) for received, updated, *_ in conn.execute(query)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--import-rate", type=float, default=100)
    parser.add_argument("--live-rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--import-seconds", type=float, default=0)
    parser.add_argument("--import-lanes", type=int, default=4, help="the importer intake's lanes")
    parser.add_argument("--import-in-flight", type=int, default=8, help="its commits in flight per lane")
    parser.add_argument("--import-batch", type=int, default=256, help="its most messages per commit")
    parser.add_argument(
        "--importer-nice", type=int, default=IMPORT_NICENESS, help="lower the importer's priority by this much"
    )
    parser.add_argument("--commit-to", help=argparse.SUPPRESS)  # the importer process: a Redis URL
    parser.add_argument("--prefix", default="I", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.commit_to:
        started = time.perf_counter()
        yield_cpu(args.importer_nice)
        options = {"lanes": args.import_lanes, "max_in_flight": args.import_in_flight, "batch_max": args.import_batch}
        asyncio.run(commit_import(args.commit_to, args.messages, args.prefix, **options))
        print(json.dumps({"seconds": time.perf_counter() - started}))
        return

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        mllp_port, http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HL7GW_") or k == "HL7GW_ALLOW_VOLATILE_REDIS"}
        env.update(
            HL7GW_DATA_DIR=str(data),
            HL7GW_MLLP_PORT=str(mllp_port),
            HL7GW_HTTP_PORT=str(http_port),
            HL7GW_LOG_LEVEL="WARNING",
            HL7GW_IMPORT_RATE=str(args.import_rate),
        )
        log_path = Path(tmp) / "gateway.log"
        with open(log_path, "wb") as log:
            gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run"], env=env, stdout=log, stderr=log)
        engine = make_engine(f"sqlite:///{data / 'hl7gw.sqlite3'}")
        try:
            deadline = time.monotonic() + 120
            while b"hl7gw: ready" not in log_path.read_bytes():
                if gateway.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log_path.read_text()[-3000:])
                time.sleep(0.2)
            redis_url = EmbeddedRedis.running_url(data / "redis")
            assert redis_url, "no embedded Redis found in the data directory"
            client = redis.Redis.from_url(redis_url)
            keys = Keys(NAMESPACE)

            def import_left() -> int:
                return int(client.hlen(keys.queue_messages(IMPORT_QUEUE)))

            print(
                f"live {args.live_rate:.0f} msg/s over {CONNECTIONS} connections; import of {args.messages} "
                f"messages at HL7GW_IMPORT_RATE={args.import_rate:g}; {os.cpu_count()} cores, SQLite",
                flush=True,
            )
            acks: dict[str, list[float]] = {"without": [], "with": [], "committing": [], "draining": []}
            stored: dict[str, list[float]] = {"without": [], "with": []}

            def window(kind: str, name: str, until: Callable[[int], bool], prefix: str) -> list[tuple[float, float]]:
                started = time.monotonic()
                timed, failures = asyncio.run(live(mllp_port, args.live_rate, until, prefix))
                seconds = time.monotonic() - started
                latencies = [ms for _, ms in timed]
                p50, p99 = percentiles(latencies)
                acks[kind] += latencies
                print(
                    f"{name:14} {seconds:6.1f} s {len(latencies):6d} live   ACK p50 {p50:6.2f} p99 {p99:6.2f} ms"
                    f"   failures {failures}",
                    end="",
                    flush=True,
                )
                return timed

            def stored_figures(kind: str, prefix: str) -> None:
                # Every live message of the window stored: then its receive -> stored latencies.
                expected_deadline = time.monotonic() + 300
                while time.monotonic() < expected_deadline:
                    found = stored_latencies(engine, prefix)
                    if found and len(found) >= len(acks[kind]) - len(stored[kind]):
                        break
                    time.sleep(0.5)
                stored[kind] += found
                s50, s99 = percentiles(found)
                print(f"   stored p50 {s50:7.1f} p99 {s99:7.1f} ms", flush=True)

            for round_ in range(args.rounds + 1):
                stop_at = time.monotonic() + args.seconds
                window("without", f"without #{round_ + 1}", lambda _, at=stop_at: time.monotonic() >= at, f"W{round_}-")
                stored_figures("without", f"W{round_}-")
                if round_ == args.rounds:
                    break
                prefix = f"I{round_}-"
                importer = subprocess.Popen(
                    [sys.executable, __file__, "--commit-to", redis_url, "--messages", str(args.messages)]
                    + ["--prefix", prefix, "--import-lanes", str(args.import_lanes)]
                    + ["--import-in-flight", str(args.import_in_flight), "--import-batch", str(args.import_batch)]
                    + ["--importer-nice", str(args.importer_nice)],
                    stdout=subprocess.PIPE,
                )
                started = time.monotonic()
                limit = started + args.import_seconds if args.import_seconds else float("inf")

                def done(_: int, limit: float = limit, importer: subprocess.Popen[bytes] = importer) -> bool:
                    now = time.monotonic()
                    if now >= limit:
                        return True
                    return importer.poll() is not None and import_left() == 0

                timed = window("with", f"with import #{round_ + 1}", done, f"M{round_}-")
                live_seconds = time.monotonic() - started
                left_when_live_stopped = import_left()
                stored_figures("with", f"M{round_}-")
                committed = json.loads(importer.communicate()[0])
                committed_at = started + committed["seconds"]
                acks["committing"] += [ms for at, ms in timed if at <= committed_at]
                acks["draining"] += [ms for at, ms in timed if at > committed_at]
                beside = (args.messages - left_when_live_stopped) / live_seconds
                print(
                    f"  import #{round_ + 1}: committed in {committed['seconds']:.1f} s "
                    f"({args.messages / committed['seconds']:.0f} msg/s); {beside:.1f} msg/s stored "
                    f"beside live traffic over {live_seconds:.0f} s",
                    end="",
                    flush=True,
                )
                if args.import_seconds:
                    # Cancel the rest: off the queue (workers still hold their few prefetched ones).
                    left = import_left()
                    client.delete(keys.queue(IMPORT_QUEUE), keys.queue_messages(IMPORT_QUEUE))
                    time.sleep(2)
                    print(f"; {left} left, taken off the queue", flush=True)
                else:
                    while import_left():
                        time.sleep(0.5)
                    drained = time.monotonic() - started
                    print(f"; all drained in {drained:.0f} s ({args.messages / drained:.0f} msg/s)", flush=True)

            b50, b99 = percentiles(acks["without"])
            w50, w99 = percentiles(acks["with"])
            print(f"live ACK without the import: p50 {b50:.2f} ms, p99 {b99:.2f} ms ({len(acks['without'])} messages)")
            print(f"live ACK during the import:  p50 {w50:.2f} ms, p99 {w99:.2f} ms ({len(acks['with'])} messages)")
            print(f"difference: p50 {w50 - b50:+.2f} ms, p99 {w99 - b99:+.2f} ms (target: p99 +50 ms at most)")
            for phase in ("committing", "draining"):
                if len(acks[phase]) > 100:
                    f50, f99 = percentiles(acks[phase])
                    print(f"  while the importer was {phase}: p50 {f50:.2f} ms, p99 {f99:.2f} ms ({len(acks[phase])})")
            sb, sw = percentiles(stored["without"]), percentiles(stored["with"])
            print(f"live receive -> stored: without p50 {sb[0]:.0f} / p99 {sb[1]:.0f} ms, ", end="")
            print(f"during the import p50 {sw[0]:.0f} / p99 {sw[1]:.0f} ms")
        finally:
            gateway.terminate()
            gateway.wait(120)
            engine.dispose()


if __name__ == "__main__":
    main()
