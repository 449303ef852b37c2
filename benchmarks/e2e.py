"""End to end: sample messages over MLLP from many connections until every one is searchable.

    python benchmarks/e2e.py [--messages 20000] [--connections 32] [--rate 200] [--seconds 20]
                             [--workers N] [--threads N] [--database-url URL]
                             [--metrics on|off|both] [--rounds 2] [--scrape-every 5]

Starts ``hl7gw run`` in a temporary directory: embedded Redis; a SQLite file, or a fresh schema of
the --database-url PostgreSQL, dropped afterwards; the gateway's default worker processes and
threads unless --workers/--threads. Each sent message is a sample from samples/ (those the
converter turns into a Patient; merges left out) with a unique MSH-10 and unique PID-3
identifiers, so each one makes a new Patient. A message is
"searchable" when ``GET /fhir/Patient?identifier=<its identifier>`` finds it; latency is from its
ACK to the poll that found it (the 100 oldest pending per search, every 50 ms while some are
missing). Each run waits until every message is searchable (or none became so for 60 s), so no
backlog spills into the next. The CPU time each part of the gateway used per message is printed too.

Two runs:
  throughput  all messages as fast as the connections get ACKs; sustained msg/s = messages /
              (last one searchable - first one sent)
  latency     --rate msg/s for --seconds; p50/p99 of ACK -> searchable

--metrics sets HL7GW_METRICS (default: the gateway's, on). ``both`` measures what metrics cost:
--rounds pairs of throughput runs, each on a fresh gateway, on and off alternating (on first in
even rounds, off first in odd ones, so drift on a shared machine falls on both alike), with
/metrics scraped every --scrape-every seconds while metrics are on; it prints each run, the
throughput ratio on/off per round and of the medians, and the CPU per message of each part.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search import postgres_schema  # noqa: E402

from gateway.convert.runtime.engine import Converter  # noqa: E402
from gateway.hl7.charset import decode_message  # noqa: E402
from gateway.hl7.message import parse  # noqa: E402
from gateway.mllp.framing import FrameDecoder, encode_frame  # noqa: E402
from gateway.services.embedded_redis import free_port  # noqa: E402
from gateway.validate import validate_bundle  # noqa: E402

SAMPLES = ROOT / "samples"
#: Seconds without a message becoming searchable after which a run stops waiting.
STALL = 60
# Business identifiers the converter derives resource ids from (visit, order, appointment, document
# numbers): made unique per copy too, so copies do not all update one Encounter or order.
UNIQUE_FIELDS = {"PV1": (19,), "ORC": (2, 3), "OBR": (2, 3), "SCH": (1, 2), "TXA": (12,)}


@dataclass
class Template:
    """A sample message split at the places each copy changes."""

    name: str
    segments: list[str]
    field_sep: str
    rep_sep: str
    comp_sep: str

    def render(self, tag: str) -> tuple[bytes, str, str]:
        """A copy with MSH-10 and every PID-3 id made unique; returns (bytes, control id, identifier)."""
        control_id = f"E2E-{tag}"
        out, identifier = [], ""
        for segment in self.segments:
            fields = segment.split(self.field_sep)
            if fields[0] == "MSH":
                fields[9] = control_id  # MSH-10 (MSH-1 is the separator itself)
                if len(fields) > 14 and fields[14]:
                    fields[14] = "AL"  # MSH-15: an accept acknowledgement always (some samples say never)
            elif fields[0] == "PID" and len(fields) > 3:
                reps = []
                for rep in fields[3].split(self.rep_sep):
                    comps = rep.split(self.comp_sep)
                    comps[0] = f"{comps[0]}-{tag}"[:60]
                    reps.append(self.comp_sep.join(comps))
                    identifier = identifier or comps[0]
                fields[3] = self.rep_sep.join(reps)
            for number in UNIQUE_FIELDS.get(fields[0], ()):
                if len(fields) > number and fields[number]:
                    comps = fields[number].split(self.rep_sep)[0].split(self.comp_sep)
                    comps[0] = f"{comps[0]}-{tag}"[:60]
                    fields[number] = self.comp_sep.join(comps)
            out.append(self.field_sep.join(fields))
        return "\r".join(out).encode(), control_id, identifier


def templates() -> list[Template]:
    """Samples whose copies convert and validate into a Patient found by the new PID-3 id; no merges."""
    converter, found = Converter.load(), []
    for path in sorted(SAMPLES.glob("*/*.hl7")):
        text = decode_message(path.read_bytes()).replace("\r\n", "\r").replace("\n", "\r").strip("\r")
        try:
            message = parse(text)
            if message.segment("MRG") or not message.get("PID-3.1"):
                continue
            seps = message.separators
            template = Template(path.name, text.split("\r"), seps.field, seps.repetition, seps.component)
            raw, _, identifier = template.render("probe")
            bundle = converter.convert(parse(raw.decode()))
            validate_bundle(bundle)
        except Exception:  # noqa: BLE001 - a sample the gateway would not store is not used here
            continue
        patients = [
            e["resource"] for e in bundle["entry"] if e["request"]["url"].startswith("Patient/") and "resource" in e
        ]
        if any(identifier == i.get("value") for p in patients for i in p.get("identifier", [])):
            found.append(template)
    return found


@dataclass
class Run:
    acked: dict[str, float] = field(default_factory=dict)  # identifier -> ACK time
    found: dict[str, float] = field(default_factory=dict)  # identifier -> searchable time
    pending: list[str] = field(default_factory=list)
    sent_first: float = 0.0
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


async def send_all(
    port: int, messages: list[tuple[bytes, str, str]], connections: int, rate: float | None, run: Run
) -> None:
    """Each connection sends a message, waits for its ACK, sends the next (paced when ``rate``)."""
    interval = connections / rate if rate else 0.0
    run.sent_first = time.perf_counter()

    async def one(n: int, share: list[tuple[bytes, str, str]]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        decoder = FrameDecoder()
        next_send = time.perf_counter() + interval * n / connections
        for raw, control_id, identifier in share:
            if interval:
                delay = next_send - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_send += interval
            writer.write(encode_frame(raw))
            acks: list[bytes] = []
            while not acks:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("gateway closed the connection")
                acks = decoder.feed(data)
            msa = next(s for s in acks[0].split(b"\r") if s.startswith(b"MSA")).split(b"|")
            with run.lock:
                if msa[1] not in (b"AA", b"CA") or msa[2].decode() != control_id:
                    run.failures += 1
                    continue
                run.acked[identifier] = time.perf_counter()
                run.pending.append(identifier)
        writer.close()

    shares = [messages[n::connections] for n in range(connections)]
    await asyncio.gather(*(one(n, share) for n, share in enumerate(shares)))


def poll(api: httpx.Client, run: Run, stop: threading.Event, chunk: int = 100, pause: float = 0.05) -> None:
    """Search for the oldest pending identifiers, again and again, until ``stop``. After a search
    that did not find them all it waits ``pause`` (the resolution of the latencies), so that the
    polling does not take the CPU the gateway is measured on."""
    while not stop.is_set():
        with run.lock:
            batch = run.pending[:chunk]
        if not batch:
            time.sleep(0.005)
            continue
        response = api.get("/fhir/Patient", params={"identifier": ",".join(batch), "_count": str(4 * chunk)})
        now = time.perf_counter()
        response.raise_for_status()
        seen = {
            ident.get("value")
            for entry in response.json().get("entry", [])
            for ident in entry["resource"].get("identifier", [])
        }
        with run.lock:
            for identifier in batch:
                if identifier in seen and identifier not in run.found:
                    run.found[identifier] = now
            run.pending = [i for i in run.pending if i not in run.found]
        if len(seen & set(batch)) < len(batch):
            time.sleep(pause)


def measure(
    port: int, api: httpx.Client, messages: list[tuple[bytes, str, str]], connections: int, rate: float | None
) -> Run:
    run = Run()
    stop = threading.Event()
    poller = threading.Thread(target=poll, args=(api, run, stop), daemon=True)
    poller.start()
    asyncio.run(send_all(port, messages, connections, rate, run))
    # Wait while messages keep becoming searchable: a backlog left behind would be counted in the
    # next run's latencies. Give up after STALL seconds without progress.
    found, progress = len(run.found), time.monotonic()
    while len(run.found) < len(run.acked) and time.monotonic() - progress < STALL:
        time.sleep(0.05)
        if len(run.found) > found:
            found, progress = len(run.found), time.monotonic()
    stop.set()
    poller.join(10)
    return run


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds used so far by the gateway's processes (Linux /proc), summed per role."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, cmdline)
    tree, changed = {root}, True
    while changed:
        changed = False
        for pid, (ppid, _, _) in stats.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    roles: dict[str, float] = {"benchmark": time.process_time()}
    for pid in tree:
        _, seconds, cmdline = stats.get(pid, (0, 0.0, ""))
        role = next((r for r in ("worker", "mllp", "api") if f"gateway.cli {r}" in cmdline), None)
        role = role or ("redis" if "redis-server" in cmdline else "supervisor")
        roles[role] = roles.get(role, 0.0) + seconds
    return roles


def latencies_ms(run: Run) -> list[float]:
    return [(run.found[i] - run.acked[i]) * 1000 for i in run.found]


def start_gateway(
    data: Path, args: argparse.Namespace, database_url: str | None, metrics: str | None = None
) -> tuple[subprocess.Popen[bytes], int, int]:
    mllp_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HL7GW_") or k == "HL7GW_ALLOW_VOLATILE_REDIS"}
    env.update(
        HL7GW_DATA_DIR=str(data),
        HL7GW_MLLP_PORT=str(mllp_port),
        HL7GW_HTTP_PORT=str(http_port),
        HL7GW_LOG_LEVEL="WARNING",
        HL7GW_API_TOKENS="bench-token:reader,scrape-token:metrics",
    )
    if metrics:
        env["HL7GW_METRICS"] = metrics
    if args.workers:
        env["HL7GW_WORKER_PROCESSES"] = str(args.workers)
    if args.threads:
        env["HL7GW_WORKER_THREADS"] = str(args.threads)
    if database_url:
        env["HL7GW_DATABASE_URL"] = database_url
    data.parent.mkdir(parents=True, exist_ok=True)
    log = open(data.parent / "gateway.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((data.parent / "gateway.log").read_text()[-3000:])
        if b"hl7gw: ready" in (data.parent / "gateway.log").read_bytes():
            return process, mllp_port, http_port
        time.sleep(0.2)
    raise RuntimeError("gateway not ready")


def scrape(base_url: str, every: float, stop: threading.Event, counts: list[int]) -> None:
    """GET /metrics every ``every`` seconds until ``stop``, as a (busy) Prometheus would."""
    with httpx.Client(base_url=base_url, headers={"Authorization": "Bearer scrape-token"}, timeout=30) as client:
        while not stop.wait(every):
            client.get("/metrics").raise_for_status()
            counts[0] += 1


def compare_metrics(args: argparse.Namespace, batch: Callable[[str, int], list[tuple[bytes, str, str]]]) -> None:
    """Throughput with metrics on and off, alternating, each run on a fresh gateway."""
    results: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for round_number in range(args.rounds):
        for setting in ("on", "off") if round_number % 2 == 0 else ("off", "on"):
            with tempfile.TemporaryDirectory() as tmp:
                process, mllp_port, http_port = start_gateway(Path(tmp) / setting / "data", args, None, setting)
                base_url = f"http://127.0.0.1:{http_port}"
                api = httpx.Client(base_url=base_url, headers={"Authorization": "Bearer bench-token"}, timeout=30)
                stop, scrapes = threading.Event(), [0]
                scraper = threading.Thread(target=scrape, args=(base_url, args.scrape_every, stop, scrapes))
                try:
                    measure(mllp_port, api, batch(f"w{round_number}{setting}", 200), args.connections, None)
                    if setting == "on":
                        scraper.start()
                    before = cpu_by_role(process.pid)
                    tag = f"t{round_number}{setting}"
                    run = measure(mllp_port, api, batch(tag, args.messages), args.connections, None)
                    after = cpu_by_role(process.pid)
                finally:
                    stop.set()
                    if scraper.is_alive():
                        scraper.join(30)
                    api.close()
                    process.terminate()
                    process.wait(120)
            elapsed = max(run.found.values()) - run.sent_first
            rate = len(run.found) / elapsed
            results[setting].append(rate)
            cpu[setting].append({r: (after[r] - before.get(r, 0.0)) * 1000 / args.messages for r in after})
            print(
                f"round {round_number + 1} metrics {setting:3}: {len(run.found)}/{args.messages} searchable in "
                f"{elapsed:.1f} s: {rate:.0f} msg/s, failures {run.failures}, /metrics scraped {scrapes[0]} times",
                flush=True,
            )
    pairs = [on / off for on, off in zip(results["on"], results["off"])]
    print(
        "ratio on/off per round: "
        + ", ".join(f"{ratio:.3f}" for ratio in pairs)
        + f"; of the medians {statistics.median(results['on']) / statistics.median(results['off']):.3f}"
        + f" ({statistics.median(results['on']):.0f} vs {statistics.median(results['off']):.0f} msg/s)",
        flush=True,
    )
    for setting in ("on", "off"):
        roles = sorted({role for used in cpu[setting] for role in used})
        means = {role: statistics.mean(used.get(role, 0.0) for used in cpu[setting]) for role in roles}
        print(
            f"CPU ms/message, metrics {setting:3}: "
            + ", ".join(f"{role} {ms:.2f}" for role, ms in sorted(means.items(), key=lambda kv: -kv[1])),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="messages in the throughput run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=200, help="msg/s of the latency run (0: skip it)")
    parser.add_argument("--seconds", type=float, default=20, help="length of the latency run")
    parser.add_argument("--workers", type=int, default=None, help="HL7GW_WORKER_PROCESSES (default: the gateway's)")
    parser.add_argument("--threads", type=int, default=None, help="HL7GW_WORKER_THREADS (default: the gateway's)")
    parser.add_argument(
        "--database-url", default=None, help="PostgreSQL base URL: a temporary schema in it (default: SQLite)"
    )
    parser.add_argument("--metrics", choices=("on", "off", "both"), default=None, help="HL7GW_METRICS")
    parser.add_argument("--rounds", type=int, default=2, help="with --metrics both: pairs of runs")
    parser.add_argument("--scrape-every", type=float, default=5.0, help="with --metrics both: seconds")
    args = parser.parse_args()

    found = templates()
    print(
        f"{len(found)} sample messages in rotation; {os.cpu_count()} CPUs; "
        f"worker processes {args.workers or 'default'}, threads {args.threads or 'default'}",
        flush=True,
    )
    run_id = uuid.uuid4().hex[:6]

    def batch(name: str, count: int) -> list[tuple[bytes, str, str]]:
        return [found[n % len(found)].render(f"{run_id}{name}{n}") for n in range(count)]

    if args.metrics == "both":
        compare_metrics(args, batch)
        return

    # PostgreSQL: a fresh schema per run, dropped afterwards, so runs do not slow down as the
    # database grows from one to the next and compare with SQLite's fresh file.
    database = postgres_schema(args.database_url) if args.database_url else nullcontext(None)
    with tempfile.TemporaryDirectory() as tmp, database as database_url:
        process, mllp_port, http_port = start_gateway(Path(tmp) / "data", args, database_url, args.metrics)
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{http_port}", headers={"Authorization": "Bearer bench-token"}, timeout=30
        )
        try:
            measure(mllp_port, api, batch("w", 200), args.connections, None)  # warm up

            before = cpu_by_role(process.pid)
            run = measure(mllp_port, api, batch("t", args.messages), args.connections, None)
            after = cpu_by_role(process.pid)
            elapsed = max(run.found.values()) - run.sent_first
            lat = latencies_ms(run)
            print(
                f"throughput  {len(run.found)}/{args.messages} searchable in {elapsed:.1f} s: "
                f"{len(run.found) / elapsed:.0f} msg/s sustained "
                f"(latency under full load p50 {statistics.median(lat):.0f} ms), failures {run.failures}",
                flush=True,
            )
            used = {role: (after[role] - before.get(role, 0.0)) * 1000 / args.messages for role in after}
            print(
                "            CPU ms/message: "
                + ", ".join(f"{role} {ms:.2f}" for role, ms in sorted(used.items(), key=lambda kv: -kv[1]))
                + f"; total {sum(used.values()):.2f} (benchmark = sending + polling the API)",
                flush=True,
            )
            if args.rate:
                count = int(args.rate * args.seconds)
                run = measure(mllp_port, api, batch("r", count), min(args.connections, count), args.rate)
                lat = latencies_ms(run)
                q = statistics.quantiles(lat, n=100)
                print(
                    f"latency     {args.rate:.0f} msg/s for {args.seconds:.0f} s: {len(run.found)}/{count} searchable, "
                    f"ACK -> searchable p50 {q[49]:.0f} ms, p99 {q[98]:.0f} ms, max {max(lat):.0f} ms, "
                    f"failures {run.failures}",
                    flush=True,
                )
        finally:
            api.close()
            process.terminate()
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
