"""Subscription notification latency: from the ACK of an MLLP message to the subscriber receiving
the notification of the Observation it made, at a steady rate.

    python benchmarks/subscriptions.py [--rate 200] [--seconds 30] [--connections 8]
                                       [--database-url URL] [--payload full|id-only]
    python benchmarks/subscriptions.py --matching [--database-url URL] [--page 500] [--criteria 5]

Starts ``hl7gw run`` in a temporary directory (embedded Redis, or HL7GW_REDIS_URL under a
namespace of its own; a SQLite file, or a fresh schema of --database-url), a receiver (a
threading http.server in this process), and one Subscription on
``Observation?code=http://loinc.org|2345-7``. Each message is an ORU^R01 whose one OBX value is
the message's number, so the receiver knows which message each notified Observation came from
(full payload; with id-only the focus reference is read back once at the end). Messages go out
over --connections connections at --rate msg/s for --seconds; the run waits until every
notification arrived (or none did for 60 s). Prints p50/p90/p99/max of ACK -> notification and
the notifications and events per second the receiver saw.

``--matching`` measures the two ways of matching a page of changes against criteria: the
dispatcher's (the page indexed into an in-memory database, each criteria's search run there) and
the other candidate (each criteria's search run on the store's database, restricted to the
page's ids). Prints changes matched per second for each, with --criteria subscriptions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import nullcontext
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search import postgres_schema  # noqa: E402

from gateway.mllp.framing import FrameDecoder, encode_frame  # noqa: E402
from gateway.services.embedded_redis import free_port  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402

CODE = "2345-7"
STALL = 60


def message(number: int) -> bytes:
    return (
        f"MSH|^~\\&|LAB|HOSP|GW|GW|20260101120000||ORU^R01^ORU_R01|BENCH-{number}|P|2.5.1\r"
        f"PID|1||B{number % 97}^^^HOSP^MR||Doe^Jane||19800101|F\r"
        f"OBR|1|PL{number}^LAB|FI{number}^LAB|{CODE}^Glucose^LN|||20260101110000\r"
        f"OBX|1|NM|{CODE}^Glucose^LN||{number}|mg/dL|70-99||||F|||20260101110000\r"
    ).encode()


class Receiver:
    """Records when each notified Observation (by its value: the message number) arrived."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrived: dict[int, float] = {}
        #: Message number -> (wall-clock arrival, the Observation's meta.lastUpdated as epoch seconds).
        self.stored: dict[int, tuple[float, float]] = {}
        self.focus: dict[str, float] = {}
        self.notifications = 0
        self.events = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.perf_counter()
                bundle = json.loads(body)
                with receiver.lock:
                    receiver.notifications += 1
                    for parameter in bundle["entry"][0]["resource"]["parameter"]:
                        if parameter["name"] == "notification-event":
                            receiver.events += 1
                            for part in parameter["part"]:
                                if part["name"] == "focus":
                                    receiver.focus.setdefault(part["valueReference"]["reference"], now)
                    for entry in bundle["entry"][1:]:
                        resource = entry.get("resource", {})
                        value = resource.get("valueQuantity", {}).get("value")
                        if value is not None:
                            receiver.arrived.setdefault(int(value), now)
                            updated = datetime.fromisoformat(resource["meta"]["lastUpdated"].replace("Z", "+00:00"))
                            receiver.stored.setdefault(int(value), (time.time(), updated.timestamp()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notify"


async def send_all(
    port: int, count: int, connections: int, rate: float, acked: dict[int, float], acked_wall: dict[int, float]
) -> None:
    interval = connections / rate

    async def one(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        decoder = FrameDecoder()
        next_send = time.perf_counter() + interval * n / connections
        for number in range(n, count, connections):
            delay = next_send - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            next_send += interval
            writer.write(encode_frame(message(number)))
            frames: list[bytes] = []
            while not frames:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the gateway closed the connection")
                frames = decoder.feed(data)
            acked[number] = time.perf_counter()
            acked_wall[number] = time.time()
        writer.close()

    await asyncio.gather(*(one(n) for n in range(connections)))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def matching(database_url: str | None, page: int, criteria_count: int) -> None:
    """Changes per second matched in memory vs by the store's database (see the module's note)."""
    from datetime import UTC

    from sqlalchemy import select

    from gateway.db.engine import make_engine
    from gateway.db.migrate import migrate
    from gateway.db.schema import fhir_resource
    from gateway.store.resources import ResourceStore
    from gateway.store.search import build_search
    from gateway.store.subscription_criteria import Candidate, CriteriaMatcher, parse_criteria

    codes = ["2345-7", "8867-4", "8310-5", "718-7", "4548-4", "2160-0", "6690-2", "789-8"]
    texts = [f"Observation?code=http://loinc.org|{codes[n % len(codes)]}&status=final" for n in range(criteria_count)]
    criteria = [parse_criteria(text) for text in texts]
    resources = [
        {
            "resourceType": "Observation",
            "id": f"m{n}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": codes[n % len(codes)]}]},
            "subject": {"reference": f"Patient/p{n % 50}"},
            "effectiveDateTime": "2026-01-01T10:00:00Z",
            "valueQuantity": {"value": n, "unit": "mg/dL"},
        }
        for n in range(page)
    ]
    schema = postgres_schema(database_url) if database_url else nullcontext(None)
    with tempfile.TemporaryDirectory() as tmp, schema as url:
        engine = make_engine(url or f"sqlite:///{tmp}/m.sqlite3")
        migrate(engine)
        store = ResourceStore(engine)
        entries = [{"resource": r, "request": {"method": "PUT", "url": f"Observation/{r['id']}"}} for r in resources]
        store.apply_bundle({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        now = datetime.now(UTC).replace(tzinfo=None)
        candidates = [Candidate("Observation", r["id"], now, r) for r in resources]
        matcher = CriteriaMatcher()
        rounds = 20
        started = time.perf_counter()
        for _ in range(rounds):
            in_memory = matcher.match(candidates, criteria)
        memory_s = (time.perf_counter() - started) / rounds
        ids = [r["id"] for r in resources]
        started = time.perf_counter()
        for _ in range(rounds):
            by_store: dict[str, set[tuple[str, str]]] = {}
            with engine.connect() as conn:
                for c in criteria:
                    query = build_search(c.resource_type, c.as_query())
                    stmt = select(fhir_resource.c.type, fhir_resource.c.id).where(
                        *query.where, fhir_resource.c.id.in_(ids)
                    )
                    by_store[c.text] = {(row.type, row.id) for row in conn.execute(stmt)}
        store_s = (time.perf_counter() - started) / rounds
        assert in_memory == by_store, "the two ways disagree"
        engine.dispose()
    backend = "postgresql" if database_url else "sqlite"
    print(f"matching a page of {page} changes against {criteria_count} criteria ({backend} store):")
    print(f"  in memory (the dispatcher's): {memory_s * 1000:.1f} ms a page, {page / memory_s:,.0f} changes/s")
    print(f"  on the store's database:      {store_s * 1000:.1f} ms a page, {page / store_s:,.0f} changes/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--database-url")
    parser.add_argument("--payload", choices=("full", "id-only"), default="full")
    parser.add_argument("--matching", action="store_true")
    parser.add_argument("--page", type=int, default=500)
    parser.add_argument("--criteria", type=int, default=5)
    args = parser.parse_args()
    if args.matching:
        matching(args.database_url, args.page, args.criteria)
        return
    count = int(args.rate * args.seconds)
    receiver = Receiver()
    schema = postgres_schema(args.database_url) if args.database_url else nullcontext(None)
    with tempfile.TemporaryDirectory() as tmp, schema as database_url:
        external = os.environ.get("HL7GW_REDIS_URL")
        gateway = GatewayProcess(
            Path(tmp) / "data", redis_url=external, namespace=f"bench-subs-{uuid.uuid4().hex[:8]}" if external else None
        )
        if database_url:
            gateway.env["HL7GW_DATABASE_URL"] = database_url
        gateway.start()
        try:
            channel: dict[str, Any] = {"type": "rest-hook", "endpoint": receiver.url}
            if args.payload == "full":
                channel["payload"] = "application/fhir+json"
            body = {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "benchmark",
                "criteria": f"Observation?code=http://loinc.org|{CODE}",
                "channel": channel,
            }
            with gateway.client() as client:
                created = client.post("/fhir/Subscription", json=body)
                created.raise_for_status()
                path = f"/fhir/Subscription/{created.json()['id']}"
            gateway.wait_for(path, lambda s: s["status"] == "active", timeout=30)
            acked: dict[int, float] = {}
            acked_wall: dict[int, float] = {}
            started = time.perf_counter()
            asyncio.run(send_all(gateway.mllp_port, count, args.connections, args.rate, acked, acked_wall))
            sent_s = time.perf_counter() - started
            last, seen = time.perf_counter(), 0
            while True:
                with receiver.lock:
                    now_seen = len(receiver.focus)  # distinct: one sent again (at least once) counts once
                if now_seen >= count:
                    break
                if now_seen > seen:
                    seen, last = now_seen, time.perf_counter()
                elif time.perf_counter() - last > STALL:
                    print(f"stalled: {now_seen} of {count} notification events arrived")
                    break
                time.sleep(0.05)
            done_s = time.perf_counter() - started
            arrived = dict(receiver.arrived)
            if args.payload == "id-only":
                arrived = _by_focus(gateway, receiver)
        finally:
            gateway.stop()
    latencies = [(arrived[n] - acked[n]) * 1000 for n in acked if n in arrived]
    backend = "postgresql" if args.database_url else "sqlite"
    print(
        f"subscriptions, {backend}, {args.payload} payload: {count} messages at {args.rate:g} msg/s "
        f"over {args.connections} connections (sent in {sent_s:.1f} s)"
    )
    print(
        f"  notified: {len(latencies)} of {len(acked)} acknowledged; {receiver.notifications} notifications "
        f"carrying {receiver.events} events ({receiver.events - len(receiver.focus)} sent again) in {done_s:.1f} s"
    )
    if latencies:
        print(
            f"  ACK -> notification ms: p50 {statistics.median(latencies):.0f}  p90 {percentile(latencies, 0.9):.0f}  "
            f"p99 {percentile(latencies, 0.99):.0f}  max {max(latencies):.0f}"
        )
    stored = [(receiver.stored[n], acked_wall[n]) for n in acked_wall if n in receiver.stored]
    if stored:  # wall clocks: the gateway's meta.lastUpdated splits the latency in two
        to_store = [(updated - ack) * 1000 for (_, updated), ack in stored]
        to_notify = [(arrival - updated) * 1000 for (arrival, updated), _ in stored]
        print(
            f"  of which ACK -> stored p50 {statistics.median(to_store):.0f} p99 {percentile(to_store, 0.99):.0f}; "
            f"stored -> notification p50 {statistics.median(to_notify):.0f} p99 {percentile(to_notify, 0.99):.0f}"
        )


def _by_focus(gateway: GatewayProcess, receiver: Receiver) -> dict[int, float]:
    """Message number -> arrival, for id-only notifications: each focus read back once."""
    arrived: dict[int, float] = {}
    with gateway.client() as client:
        for reference, moment in receiver.focus.items():
            path = reference.split("/fhir", 1)[1]
            value = client.get(f"/fhir{path}").json().get("valueQuantity", {}).get("value")
            if value is not None:
                arrived[int(value)] = moment
    return arrived


if __name__ == "__main__":
    main()
