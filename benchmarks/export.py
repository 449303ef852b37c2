"""FHIR Bulk Data $export of a million resources: resources/s and peak resident memory.

    python benchmarks/export.py [--resources N] [--only sqlite|postgresql] [--profile]

Loads N resources (a quarter Patients, the rest Observations: benchmarks/search.py's Dataset)
into a temporary SQLite file, and into a temporary schema of HL7GW_TEST_DATABASE_URL when set.
The rows are those the store writes for a new resource (fhir_resource and its first version in
fhir_resource_history, the JSON stamped by store/transaction.py), inserted directly: a system
export reads neither the search index nor the journal, and writing through apply_bundle loads
under 1,000 resources/s on this machine (benchmarks/search.py does that, for its searches).
Then it runs ``hl7gw api`` and ``hl7gw worker`` (Redis at HL7GW_REDIS_URL, or an embedded one) as
the processes a deployment runs, and measures:

* export: from the kick-off to the 200 of the status poll (polled every 0.2 s), N / seconds;
  and the worker's own time, from the job's start to its completion as recorded;
* download: every file of the manifest streamed through the API, lines counted;
* the peak resident memory (VmHWM) of the worker (which runs the export) and of the API, and
  their processor time (user + system) over the export and over the download.

Targets (issue 18): at least 20,000 resources/s, both processes under 300 MB resident.
``--profile`` runs the export a second time inside this process under cProfile and prints where
the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from search import Dataset, postgres_schema  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from gateway.config import load_settings  # noqa: E402
from gateway.db.engine import make_engine  # noqa: E402
from gateway.db.migrate import migrate  # noqa: E402
from gateway.db.schema import fhir_resource, fhir_resource_history  # noqa: E402
from gateway.services.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from gateway.services.exporter import ExportRunner  # noqa: E402
from gateway.store.export_jobs import ExportJobStore  # noqa: E402
from gateway.store.fhir_dates import format_instant  # noqa: E402
from gateway.store.transaction import content_hash, stamp  # noqa: E402

TOKEN = "bench-export-token"
KICK_OFF = {"Accept": "application/fhir+json", "Prefer": "respond-async", "Authorization": f"Bearer {TOKEN}"}
_TICK = os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def load_rows(engine: Engine, dataset: Dataset) -> float:
    """Insert the dataset's resources as the store's rows of a first version, 10,000 a transaction."""
    started = time.perf_counter()
    moment = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    formatted = format_instant(moment)
    for bundle in dataset.bundles():
        current, versions = [], []
        for entry in bundle["entry"]:
            resource = entry["resource"]
            content = stamp(resource, 1, formatted)
            key = {"type": resource["resourceType"], "id": resource["id"], "version_id": 1}
            common = {**key, "last_updated": moment, "deleted": False, "content": content}
            current.append({**common, "content_hash": content_hash(resource)})
            versions.append(common)
        with engine.begin() as conn:
            conn.execute(fhir_resource.insert(), current)
            conn.execute(fhir_resource_history.insert(), versions)
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    return time.perf_counter() - started


def start(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", command], env=env, stdout=out, stderr=out)


def benchmark(name: str, database_url: str, redis_url: str, args: argparse.Namespace) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    patients = args.resources // 4
    dataset = Dataset(patients, 3)
    print(f"{name}: loading {patients * 4:,} resources", flush=True)
    seconds = load_rows(engine, dataset)
    print(f"{name}: loaded in {seconds:.0f} s ({patients * 4 / seconds:,.0f}/s)", flush=True)

    with tempfile.TemporaryDirectory() as directory:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HL7GW_") or k == "HL7GW_ALLOW_VOLATILE_REDIS"}
        env.update(
            HL7GW_DATA_DIR=directory,
            HL7GW_DATABASE_URL=database_url,
            HL7GW_REDIS_URL=redis_url,
            HL7GW_REDIS_NAMESPACE=f"bench-export-{uuid.uuid4().hex[:8]}",
            HL7GW_HTTP_PORT=str(port),
            HL7GW_API_TOKENS=f"bench:{TOKEN}:reader",
            HL7GW_LOG_LEVEL="WARNING",
            PYTHONPATH=str(Path(__file__).resolve().parent.parent),
        )
        log = Path(directory) / "processes.log"
        api, worker = start("api", env, log), start("worker", env, log)
        try:
            measure(name, f"http://127.0.0.1:{port}", api.pid, worker.pid, engine, patients * 4)
        except Exception:
            print(log.read_text()[-4000:])
            raise
        finally:
            for process in (api, worker):
                process.terminate()
                process.wait(60)
    if args.profile:
        profile(name, engine, database_url)
    engine.dispose()


def measure(name: str, base: str, api_pid: int, worker_pid: int, engine: Engine, total: int) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/fhir/metadata").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.2)
        time.sleep(5)  # the worker's start (mappings compiled, database migrated)
        worker_before, api_before = cpu_s(worker_pid), cpu_s(api_pid)
        rss_before = peak_rss_mb(worker_pid)
        started = time.perf_counter()
        response = client.get("/fhir/$export", headers=KICK_OFF)
        assert response.status_code == 202, response.text
        status_url = response.headers["content-location"]
        while (status := client.get(status_url, headers=KICK_OFF)).status_code == 202:
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        assert status.status_code == 200, status.text
        manifest = status.json()
        job = ExportJobStore(engine).get(status_url.rsplit("/", 1)[1])
        assert job is not None
        exported = sum(item["count"] for item in manifest["output"])
        assert exported == total, (exported, total)
        worker_cpu, api_cpu = cpu_s(worker_pid) - worker_before, cpu_s(api_pid) - api_before
        own = (job.updated_at - job.created_at) / 1000
        print(f"{name}: export of {exported:,} resources in {elapsed:.1f} s: {exported / elapsed:,.0f} resources/s")
        print(f"{name}:   job recorded {own:.1f} s from kick-off to done ({exported / own:,.0f}/s)")
        print(f"{name}:   processor: worker {worker_cpu:.1f} s, API {api_cpu:.1f} s")

        started, lines, size = time.perf_counter(), 0, 0
        api_before = cpu_s(api_pid)
        for item in manifest["output"]:
            with client.stream("GET", item["url"], headers=KICK_OFF) as file:
                assert file.status_code == 200
                for chunk in file.iter_bytes(1 << 20):
                    lines += chunk.count(b"\n")
                    size += len(chunk)
        elapsed = time.perf_counter() - started
        assert lines == exported
        print(
            f"{name}: download of {len(manifest['output'])} files, {size / 1e6:,.0f} MB, in {elapsed:.1f} s: "
            f"{lines / elapsed:,.0f} resources/s, API processor {cpu_s(api_pid) - api_before:.1f} s"
        )
        print(
            f"{name}: peak resident: worker {peak_rss_mb(worker_pid):.0f} MB (before the export "
            f"{rss_before:.0f} MB), API {peak_rss_mb(api_pid):.0f} MB"
        )


def profile(name: str, engine: Engine, database_url: str) -> None:
    """A second export in this process under cProfile: where the exporter's time goes."""
    with tempfile.TemporaryDirectory() as directory:
        settings = load_settings(data_dir=Path(directory), database_url=database_url)
        runner = ExportRunner(engine, settings.export)
        jobs = ExportJobStore(engine)

        now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        jobs.create(
            level="system",
            group_id="",
            request="profile",
            types=["Observation", "Patient"],
            since=None,
            transaction_time=now,
            who="bench",
            role="reader",
            notes=[],
        )
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        runner.step()
        profiler.disable()
        print(f"{name}: profiled export in {time.perf_counter() - started:.1f} s (cProfile slows it)")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=1_000_000, help="resources to load (default 1,000,000)")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="run one backend")
    parser.add_argument("--profile", action="store_true", help="profile a second export in process")
    args = parser.parse_args()

    redis_url = os.environ.get("HL7GW_REDIS_URL")
    embedded = None
    with tempfile.TemporaryDirectory() as scratch:
        if not redis_url:
            embedded = EmbeddedRedis(Path(scratch), persistent=False)
            embedded.start()
            redis_url = embedded.url
        try:
            if args.only != "postgresql":
                benchmark("sqlite", f"sqlite:///{scratch}/bench.sqlite3", redis_url, args)
            base = os.environ.get("HL7GW_TEST_DATABASE_URL")
            if base and args.only != "sqlite":
                with postgres_schema(base) as url:
                    benchmark("postgresql", url, redis_url, args)
        finally:
            if embedded is not None:
                embedded.stop()


if __name__ == "__main__":
    main()
