"""Search latency through the FHIR API with the access audit trail on and off, in the same run.

    python benchmarks/audit.py [--resources N] [--queries Q] [--block B] [--only sqlite|postgresql]

Loads N resources (Patients with 3 Observations each, as benchmarks/search.py makes them) into a
SQLite file, and into a temporary schema of HL7GW_TEST_DATABASE_URL when set, then starts the API
(the app of ``hl7gw api`` under uvicorn) on it. One client sends it the same kinds of searches in
blocks of B queries, with the access audit trail turned on and off (SIGUSR1) between blocks: one
process, so on and off differ in nothing else (two servers measured 13% apart with both off), and
alternating, so both see the same machine. After turning it off the client waits for the trail's
last write, so an "off" block does not pay for the "on" block before it. Prints p50/p99 per search
and mode, the ratio on/off, the processor time per query of the API process in each mode and of the
audit writer process, and the AuditEvents written. ``--control`` keeps the trail off in both halves:
the noise floor. Searches:

* ``Patient?identifier=`` (one Patient: one AuditEvent);
* ``Observation?patient=&date=ge`` (one Patient's Observations: one AuditEvent);
* ``Observation?code=&_count=50`` (50 Observations of about 50 Patients: about 50 AuditEvents).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.search import MRN_SYSTEM, Dataset, load, postgres_schema  # noqa: E402
from gateway.db.engine import make_engine  # noqa: E402
from gateway.db.migrate import migrate  # noqa: E402
from gateway.services.embedded_redis import free_port  # noqa: E402
from gateway.store.resources import ResourceStore  # noqa: E402

TOKEN = "bench-reader-token"


#: The server: ``hl7gw api``'s app under uvicorn, whose access audit trail SIGUSR1 turns on and off.
SERVER = """
import signal, sys, uvicorn
from gateway.api.app import create_app
from gateway.config import load_settings
app = create_app(load_settings())
def flip(*_):
    app.state.access_audit = not app.state.access_audit
signal.signal(signal.SIGUSR1, flip)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


class Api:
    """One API process on ``database_url``; ``audit(on)`` turns its access audit trail on or off."""

    def __init__(self, database_url: str, data_dir: Path):
        self.port = free_port()
        self.on = True
        env = {k: v for k, v in os.environ.items() if not k.startswith("HL7GW_") or k == "HL7GW_ALLOW_VOLATILE_REDIS"}
        env.update(
            HL7GW_DATA_DIR=str(data_dir),
            HL7GW_DATABASE_URL=database_url,
            HL7GW_API_TOKENS=f"bench:{TOKEN}:reader",
            HL7GW_ACCESS_AUDIT="on",
            HL7GW_LOG_LEVEL="WARNING",
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, str(self.port)], env=env)
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.client.get("/fhir/metadata").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the API did not start")
            time.sleep(0.1)

    def audit(self, on: bool) -> None:
        """Turn the trail on or off; after off, wait out the trail's last tick (1 s) and write."""
        if on != self.on:
            self.process.send_signal(signal.SIGUSR1)
            self.on = on
        time.sleep(0.1 if on else 1.3)

    def stop(self) -> None:
        """SIGTERM: the server drains its audit trail before it exits."""
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def cpu_ms(pid: int) -> float:
    """Processor time (user + system) ``pid`` has used, in milliseconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Processes started by ``pid``, at any depth (the audit writer is a child of a fork server)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def percentiles(timings: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(timings, n=100)
    return cuts[49], cuts[98]


def benchmark(name: str, database_url: str, args: argparse.Namespace) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    patients = max(1, args.resources // 4)
    dataset = Dataset(patients, 3)
    seconds = load(ResourceStore(engine), dataset)
    print(f"{name}: loaded {patients * 4:,} resources in {seconds:.1f} s")
    rnd = random.Random(1)

    def by_identifier(client: httpx.Client) -> None:
        number = rnd.randrange(patients)
        answer = client.get("/fhir/Patient", params={"identifier": f"{MRN_SYSTEM}|MRN{number:08d}"})
        assert answer.status_code == 200 and answer.json()["total"] == 1, answer.text[:200]

    def by_patient_and_date(client: httpx.Client) -> None:
        number = rnd.randrange(patients)
        answer = client.get("/fhir/Observation", params={"patient": f"Patient/p{number}", "date": "ge2022-01-01"})
        assert answer.status_code == 200 and answer.json()["total"] == dataset.recent[number], answer.text[:200]

    def page_of_50(client: httpx.Client) -> None:
        answer = client.get(
            "/fhir/Observation", params={"code": "http://loinc.org|8867-4", "_count": "50", "_total": "none"}
        )
        assert answer.status_code == 200 and len(answer.json()["entry"]) == min(50, patients * 3), answer.text[:200]

    searches: list[tuple[str, Callable[[httpx.Client], None]]] = [
        ("Patient?identifier=", by_identifier),
        ("Observation?patient=&date=ge", by_patient_and_date),
        ("Observation?code=&_count=50", page_of_50),
    ]
    with tempfile.TemporaryDirectory() as directory:
        server = Api(database_url, Path(directory) / "api")
        try:
            for label, search in searches:
                timings: dict[bool, list[float]] = {True: [], False: []}
                api_cpu = {True: 0.0, False: 0.0}  # the API process's processor time per mode
                for _ in range(30):  # warm up
                    search(server.client)
                helpers = descendants(server.process.pid)
                helpers_before = sum(cpu_ms(pid) for pid in helpers)
                done = 0
                while done < args.queries:
                    for on in (True, False) if done // args.block % 2 == 0 else (False, True):
                        # --control: "on" blocks run with the trail off too: how far apart equal halves measure.
                        server.audit(on and not args.control)
                        before = cpu_ms(server.process.pid)
                        for _ in range(args.block):
                            started = time.perf_counter()
                            search(server.client)
                            timings[on].append((time.perf_counter() - started) * 1000)
                        api_cpu[on] += cpu_ms(server.process.pid) - before
                    done += args.block
                server.audit(True)  # and back off below: the writer's last batch is in its figure
                server.audit(False)
                writer_cpu = sum(cpu_ms(pid) for pid in helpers) - helpers_before
                (on50, on99), (off50, off99) = percentiles(timings[True]), percentiles(timings[False])
                queries = len(timings[True])
                print(
                    f"{name}: {label:<30} audit off p50 {off50:6.2f} ms p99 {off99:6.2f} ms | "
                    f"on p50 {on50:6.2f} ms p99 {on99:6.2f} ms | on/off p50 {on50 / off50:5.2f} p99 {on99 / off99:5.2f}"
                    f"  ({queries} queries each{', CONTROL: both off' if args.control else ''})"
                )
                print(
                    f"{name}: {label:<30} CPU per query: API process off {api_cpu[False] / queries:5.2f} ms, "
                    f"on {api_cpu[True] / queries:5.2f} ms; audit writer process {writer_cpu / queries:5.2f} ms"
                )
        finally:
            server.stop()
    written = ResourceStore(engine).find("AuditEvent", {"_summary": ["count"]}).total
    print(f"{name}: the trail wrote {written:,} AuditEvents")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=100_000, help="resources to load (default 100,000)")
    parser.add_argument("--queries", type=int, default=1000, help="queries per search and mode")
    parser.add_argument("--block", type=int, default=20, help="queries in a row in one mode before switching")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="run one backend")
    parser.add_argument("--control", action="store_true", help="both servers with the trail off: the noise floor")
    args = parser.parse_args()

    if args.only != "postgresql":
        with tempfile.TemporaryDirectory() as directory:
            benchmark("sqlite", f"sqlite:///{directory}/bench.sqlite3", args)
    base = os.environ.get("HL7GW_TEST_DATABASE_URL")
    if base and args.only != "sqlite":
        with postgres_schema(base) as url:
            benchmark("postgresql", url, args)


if __name__ == "__main__":
    main()
