"""Search latency of the built-in FHIR store on synthetic data.

    python benchmarks/search.py [N] [--observations-per-patient K] [--queries Q] [--explain]

Loads N Patients with K Observations each into a temporary SQLite file (and into a temporary
schema of HL7GW_TEST_DATABASE_URL when set), then prints p50/p99 latency of
``Patient?identifier=system|value`` and ``Observation?patient=&date=ge...`` through ResourceStore.find.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from gateway.store.db import create_schema, make_engine  # noqa: E402
from gateway.store.resources import ResourceStore  # noqa: E402
from gateway.store.search import build_search  # noqa: E402

MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"
BATCH_PATIENTS = 250


def synthetic_bundles(patients: int, observations: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """Transaction bundles of BATCH_PATIENTS patients, each with ``observations`` heart rates over 2020-2023."""
    rnd = random.Random(seed)
    for start in range(0, patients, BATCH_PATIENTS):
        entries = []
        for number in range(start, min(start + BATCH_PATIENTS, patients)):
            pid = f"p{number}"
            entries.append(
                _put(
                    {
                        "resourceType": "Patient",
                        "id": pid,
                        "identifier": [{"system": MRN_SYSTEM, "value": f"MRN{number:08d}"}],
                        "name": [
                            {"family": rnd.choice(["Smith", "Jones", "Müller", "Garcia", "Nguyen"]), "given": ["Alex"]}
                        ],
                        "gender": rnd.choice(["male", "female"]),
                        "birthDate": f"{rnd.randint(1930, 2020)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
                    }
                )
            )
            for k in range(observations):
                entries.append(
                    _put(
                        {
                            "resourceType": "Observation",
                            "id": f"o{number}-{k}",
                            "status": "final",
                            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                            "subject": {"reference": f"Patient/{pid}"},
                            "effectiveDateTime": f"{rnd.randint(2020, 2023)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}T10:00:00Z",
                            "valueQuantity": {"value": rnd.randint(50, 120), "unit": "/min"},
                        }
                    )
                )
        yield {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    url = f"{resource['resourceType']}/{resource['id']}"
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource, "request": {"method": "PUT", "url": url}}


def load(store: ResourceStore, patients: int, observations: int) -> float:
    started = time.perf_counter()
    for bundle in synthetic_bundles(patients, observations):
        store.apply_bundle(bundle)
    return time.perf_counter() - started


def measure(run: Callable[[], Any], queries: int) -> tuple[float, float]:
    timings = []
    for _ in range(queries):
        started = time.perf_counter()
        run()
        timings.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(timings, n=100)
    return cuts[49], cuts[98]


def explain(engine: Engine, resource_type: str, params: dict[str, list[str]]) -> str:
    query = build_search(resource_type, params).page()
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        return "\n".join(" ".join(str(c) for c in row) for row in conn.execute(text(prefix + sql)))


def benchmark(name: str, engine: Engine, args: argparse.Namespace) -> None:
    create_schema(engine)
    store = ResourceStore(engine)
    seconds = load(store, args.patients, args.observations_per_patient)
    resources = args.patients * (1 + args.observations_per_patient)
    print(f"{name}: loaded {resources:,} resources in {seconds:.1f} s ({resources / seconds:,.0f}/s)")
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    rnd = random.Random(1)

    def by_identifier() -> None:
        number = rnd.randrange(args.patients)
        found = store.find("Patient", {"identifier": [f"{MRN_SYSTEM}|MRN{number:08d}"]})
        assert found.total == 1, found

    def by_patient_and_date() -> None:
        number = rnd.randrange(args.patients)
        store.find("Observation", {"patient": [f"Patient/p{number}"], "date": ["ge2022-01-01"]})

    for label, run in (("Patient?identifier=", by_identifier), ("Observation?patient=&date=ge", by_patient_and_date)):
        p50, p99 = measure(run, args.queries)
        print(f"{name}: {label:<30} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   ({args.queries} queries)")
    if args.explain:
        print(explain(engine, "Patient", {"identifier": [f"{MRN_SYSTEM}|MRN00000001"]}))
        print(explain(engine, "Observation", {"patient": ["Patient/p1"], "date": ["ge2022-01-01"]}))


@contextmanager
def postgres_schema(base: str) -> Iterator[str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        sep = "&" if "?" in base else "?"
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("patients", nargs="?", type=int, default=100_000)
    parser.add_argument("--observations-per-patient", type=int, default=3)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--explain", action="store_true", help="print the query plans")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        engine = make_engine(f"sqlite:///{directory}/bench.sqlite3")
        try:
            benchmark("sqlite", engine, args)
        finally:
            engine.dispose()
    base = os.environ.get("HL7GW_TEST_DATABASE_URL")
    if base:
        with postgres_schema(base) as url:
            engine = make_engine(url)
            try:
                benchmark("postgresql", engine, args)
            finally:
                engine.dispose()


if __name__ == "__main__":
    main()
