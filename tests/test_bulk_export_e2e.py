"""$export of 10,000 resources from ``hl7gw run`` (real Redis, SQLite and PostgreSQL): the gateway
is killed (every process at once) mid-way through the export, started again, and the export it
resumes ends with a manifest whose NDJSON files hold every stored resource exactly once, each line
valid against its R4 model (fhir.resources R4B)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import select

from gateway.db.engine import make_engine
from gateway.db.migrate import migrate
from gateway.db.schema import bulk_export, fhir_resource
from gateway.store.export_jobs import ExportState
from gateway.store.resources import ResourceStore
from tests.support.fhir_bundles import observation, patient, put, transaction
from tests.support.gateway_process import GatewayProcess

PATIENTS, PER_PATIENT = 2_000, 4  # 10,000 resources
KICK_OFF = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


def load(database_url: str) -> set[tuple[str, str]]:
    engine = make_engine(database_url)
    migrate(engine)
    store = ResourceStore(engine)
    for start in range(0, PATIENTS, 200):
        entries = []
        for n in range(start, start + 200):
            entries.append(put(patient(f"p{n:05}", f"MRN{n}", family=f"Family{n % 97}")))
            for k in range(PER_PATIENT):
                entries.append(put(observation(f"o{n:05}-{k}", f"p{n:05}", valueQuantity={"value": n + k})))
        store.apply_bundle(transaction(*entries))
    with engine.connect() as conn:
        stored = {(row.type, row.id) for row in conn.execute(select(fhir_resource.c.type, fhir_resource.c.id))}
    engine.dispose()
    assert len(stored) == PATIENTS * (PER_PATIENT + 1)
    return stored


def saved_state(database_url: str, job_id: str) -> tuple[str, ExportState]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            query = select(bulk_export.c.status, bulk_export.c.state).where(bulk_export.c.id == job_id)
            row = conn.execute(query).one()
    finally:
        engine.dispose()
    return row.status, ExportState.from_json(row.state)


def test_export_of_10000_resources_survives_a_kill(tmp_path: Path, database_url: str, redis_url: str) -> None:
    stored = load(database_url)
    gateway = GatewayProcess(tmp_path / "data", redis_url=redis_url, namespace=f"hl7gw-export-{uuid.uuid4().hex[:8]}")
    gateway.env.update(
        HL7GW_DATABASE_URL=database_url,
        HL7GW_WORKER_PROCESSES="1",
        # Small pages and files: the export lasts long enough to be killed in the middle, and
        # each type spans several files.
        HL7GW_EXPORT_PAGE_SIZE="1",
        HL7GW_EXPORT_FILE_RESOURCES="1500",
    )
    gateway.start()
    try:
        with gateway.client() as client:
            response = client.get("/fhir/$export", params={"_type": "Patient,Observation"}, headers=KICK_OFF)
            assert response.status_code == 202, response.text
            status_url = response.headers["content-location"]
            job_id = status_url.rsplit("/", 1)[1]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                status = client.get(status_url)
                assert status.status_code == 202, status.text  # not done yet: the kill must come mid-way
                if saved_state(database_url, job_id)[1].written >= 1_000:
                    break
                time.sleep(0.02)
    finally:
        gateway.kill_tree()
    status_then, state = saved_state(database_url, job_id)
    assert status_then == "running" and 1_000 <= state.written < len(stored), state.written

    gateway.start()
    try:
        with gateway.client() as client:
            deadline = time.monotonic() + 300
            while (status := client.get(status_url)).status_code == 202 and time.monotonic() < deadline:
                assert "retry-after" in status.headers and "x-progress" in status.headers
                time.sleep(0.2)
            assert status.status_code == 200, status.text
            manifest = status.json()
            assert manifest["requiresAccessToken"] is True and manifest["error"] == []
            seen: Counter[tuple[str, str]] = Counter()
            for item in manifest["output"]:
                lines = 0
                with client.stream("GET", item["url"], headers={"Accept": "application/fhir+ndjson"}) as file:
                    assert file.status_code == 200
                    assert file.headers["content-type"] == "application/fhir+ndjson"
                    for line in file.iter_lines():
                        resource = json.loads(line)
                        get_fhir_model_class(item["type"]).model_validate(resource)
                        seen[(resource["resourceType"], resource["id"])] += 1
                        lines += 1
                assert lines == item["count"]
            assert httpx.get(manifest["output"][0]["url"]).status_code == 401  # the token is required
    finally:
        gateway.stop()
    assert set(seen) == stored
    assert [key for key, times in seen.items() if times > 1] == []
    assert os.path.isdir(tmp_path / "data" / "export" / job_id)
