"""Search latency of the built-in FHIR store with a million resources.

    python benchmarks/search.py [--resources N] [--observations-per-patient K] [--queries Q] [--explain]

Builds N resources (N/(K+1) Patients, the rest Observations, K per patient) in a temporary SQLite
file, and in a temporary schema of HL7GW_TEST_DATABASE_URL when set, then prints the load time and
the p50/p99 latency of ``Patient?identifier=system|value`` and ``Observation?patient=&date=ge...``
through ResourceStore.find (the API's own search path), and of the issue 19 features: a chain
(``Observation?patient.identifier=``), a reverse chain (``Patient?identifier=&_has:Observation:...``)
and a quantity (``Observation?patient=&value-quantity=gt100``).

Loading goes through ResourceStore.apply_bundle, in transactions of 10,000 resources: the rows are
exactly the ones the gateway writes (a bulk path beside the write path would drift from it). A
sample is then read and searched back, and every query checks its answer against the data.
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

from gateway.db.engine import make_engine  # noqa: E402
from gateway.db.migrate import migrate
from gateway.store.resources import ResourceStore  # noqa: E402
from gateway.store.search import build_search  # noqa: E402

MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"
UCUM = "http://unitsofmeasure.org"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
BATCH_PATIENTS = 2500  # with 3 Observations each: 10,000 resources per transaction
FAMILIES = ["Smith", "Jones", "Müller", "Garcia", "Nguyen", "Okafor", "Rossi", "Kowalski"]


class Dataset:
    """Deterministic synthetic patients with heart-rate observations over 2020-2023."""

    def __init__(self, patients: int, per_patient: int, seed: int = 7):
        self.patients, self.per_patient, self.seed = patients, per_patient, seed
        #: Observations dated 2022 or later, per patient: the expected answer of the date query.
        self.recent = [0] * patients
        #: Observations with a value above 100, per patient: the expected answer of the quantity query.
        self.high = [0] * patients

    def bundles(self) -> Iterator[dict[str, Any]]:
        rnd = random.Random(self.seed)
        for start in range(0, self.patients, BATCH_PATIENTS):
            entries = []
            for number in range(start, min(start + BATCH_PATIENTS, self.patients)):
                entries.append(_put(self._patient(rnd, number)))
                for k in range(self.per_patient):
                    year = rnd.randint(2020, 2023)
                    self.recent[number] += year >= 2022
                    observation = self._observation(rnd, number, k, year)
                    self.high[number] += observation["valueQuantity"]["value"] > 100
                    entries.append(_put(observation))
            yield {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    @staticmethod
    def _patient(rnd: random.Random, number: int) -> dict[str, Any]:
        return {
            "resourceType": "Patient",
            "id": f"p{number}",
            "identifier": [{"system": MRN_SYSTEM, "value": f"MRN{number:08d}"}],
            "name": [{"family": rnd.choice(FAMILIES), "given": [rnd.choice(["Alex", "Sam", "Kim", "Ana"])]}],
            "gender": rnd.choice(["male", "female"]),
            "birthDate": f"{rnd.randint(1930, 2020)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
        }

    @staticmethod
    def _observation(rnd: random.Random, number: int, k: int, year: int) -> dict[str, Any]:
        day = f"{year}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
        return {
            "resourceType": "Observation",
            "id": f"o{number}-{k}",
            "status": "final",
            "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/p{number}"},
            "effectiveDateTime": f"{day}T10:00:00Z",
            "valueQuantity": {"value": rnd.randint(50, 120), "unit": "/min", "system": UCUM, "code": "/min"},
        }


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    url = f"{resource['resourceType']}/{resource['id']}"
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource, "request": {"method": "PUT", "url": url}}


def load(store: ResourceStore, dataset: Dataset) -> float:
    """Write every bundle through ResourceStore.apply_bundle: the rows are the store's own."""
    started = time.perf_counter()
    for bundle in dataset.bundles():
        store.apply_bundle(bundle)
    with store.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    return time.perf_counter() - started


def check_sample(store: ResourceStore, dataset: Dataset, samples: int = 200) -> None:
    """Read and search a sample of what was loaded; every answer must be the one the data implies."""
    rnd = random.Random(3)
    for number in (rnd.randrange(dataset.patients) for _ in range(samples)):
        resource = store.read("Patient", f"p{number}")
        assert resource and resource["identifier"][0]["value"] == f"MRN{number:08d}", number
        assert resource["meta"]["versionId"] == "1"
        recent = store.find("Observation", {"patient": [f"Patient/p{number}"], "date": ["ge2022-01-01"]})
        assert recent.total == dataset.recent[number], (number, recent.total, dataset.recent[number])


def measure(run: Callable[[], Any], queries: int) -> tuple[float, float]:
    for _ in range(min(50, queries)):  # warm caches and the connection pool
        run()
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
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN ANALYZE "
    with engine.connect() as conn:
        return "\n".join(" ".join(str(c) for c in row) for row in conn.execute(text(prefix + sql)))


def benchmark(name: str, engine: Engine, args: argparse.Namespace) -> None:
    migrate(engine)
    store = ResourceStore(engine)
    patients = max(1, args.resources // (1 + args.observations_per_patient))
    dataset = Dataset(patients, args.observations_per_patient)
    seconds = load(store, dataset)
    total = patients * (1 + args.observations_per_patient)
    print(f"{name}: loaded {total:,} resources ({patients:,} Patients) in {seconds:.1f} s ({total / seconds:,.0f}/s)")
    check_sample(store, dataset)
    rnd = random.Random(1)

    def by_identifier() -> None:
        number = rnd.randrange(patients)
        found = store.find("Patient", {"identifier": [f"{MRN_SYSTEM}|MRN{number:08d}"]})
        assert found.total == 1 and found.resources[0]["id"] == f"p{number}", found

    def by_patient_and_date() -> None:
        number = rnd.randrange(patients)
        found = store.find("Observation", {"patient": [f"Patient/p{number}"], "date": ["ge2022-01-01"]})
        assert found.total == dataset.recent[number]

    def by_chain() -> None:
        number = rnd.randrange(patients)
        found = store.find("Observation", {"patient.identifier": [f"{MRN_SYSTEM}|MRN{number:08d}"]})
        assert found.total == dataset.per_patient, found

    def by_reverse_chain() -> None:
        number = rnd.randrange(patients)
        params = {"identifier": [f"{MRN_SYSTEM}|MRN{number:08d}"], "_has:Observation:patient:code": ["8867-4"]}
        assert store.find("Patient", params).total == 1

    def by_quantity() -> None:
        number = rnd.randrange(patients)
        found = store.find("Observation", {"patient": [f"p{number}"], "value-quantity": [f"gt100|{UCUM}|/min"]})
        assert found.total == dataset.high[number]

    queries = (
        ("Patient?identifier=", by_identifier),
        ("Observation?patient=&date=ge", by_patient_and_date),
        ("Observation?patient.identifier=", by_chain),
        ("Patient?identifier=&_has:Obs..", by_reverse_chain),
        ("Observation?patient=&value-q..", by_quantity),
    )
    for label, run in queries[: 2 if args.before else None]:
        p50, p99 = measure(run, args.queries)
        print(f"{name}: {label:<30} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   ({args.queries} queries)")
    if args.explain:
        print(explain(engine, "Patient", {"identifier": [f"{MRN_SYSTEM}|MRN00000001"]}))
        print(explain(engine, "Observation", {"patient": ["Patient/p1"], "date": ["ge2022-01-01"]}))
        print(explain(engine, "Observation", {"patient.identifier": [f"{MRN_SYSTEM}|MRN00000001"]}))
        print(explain(engine, "Observation", {"patient": ["p1"], "value-quantity": [f"gt100|{UCUM}|/min"]}))


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
    parser.add_argument("--resources", type=int, default=1_000_000, help="resources to load (default 1,000,000)")
    parser.add_argument("--observations-per-patient", type=int, default=3)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--explain", action="store_true", help="print the query plans")
    parser.add_argument("--before", action="store_true", help="only the queries of the release before issue 19")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="run one backend")
    args = parser.parse_args()

    if args.only != "postgresql":
        with tempfile.TemporaryDirectory() as directory:
            engine = make_engine(f"sqlite:///{directory}/bench.sqlite3")
            try:
                benchmark("sqlite", engine, args)
            finally:
                engine.dispose()
    base = os.environ.get("HL7GW_TEST_DATABASE_URL")
    if base and args.only != "sqlite":
        with postgres_schema(base) as url:
            engine = make_engine(url)
            try:
                benchmark("postgresql", engine, args)
            finally:
                engine.dispose()


if __name__ == "__main__":
    main()
