"""A Bulk Data client from PyPI exports from ``hl7gw run``: smart-fetch (SMART Health IT's bulk
export tool, ``pip install smart-fetch``), run as its users run it, with the admin bearer token.

smart-fetch pulls pyarrow, aiobotocore and fhirclient, so it is not one of our dependencies:
``.ci/run`` installs it in a venv of its own and names it in BULK_DATA_CLIENT; elsewhere the test
looks for ``smart-fetch`` on the PATH, and skips saying so when there is none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections import Counter
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from gateway.db.engine import make_engine
from gateway.db.migrate import migrate
from gateway.store.resources import ResourceStore
from tests.support.fhir_bundles import observation, patient, put, transaction
from tests.support.gateway_process import GatewayProcess


def smart_fetch() -> str:
    path = os.environ.get("BULK_DATA_CLIENT") or shutil.which("smart-fetch")
    if not path:
        pytest.skip("smart-fetch is not installed (pip install smart-fetch==1.0.3 in a venv; .ci/run does)")
    return path


def test_smart_fetch_exports_everything(tmp_path: Path, redis_url: str) -> None:
    client = smart_fetch()
    data = tmp_path / "data"
    database_url = f"sqlite:///{tmp_path / 'gateway.sqlite3'}"
    engine = make_engine(database_url)
    migrate(engine)
    ResourceStore(engine).apply_bundle(
        transaction(
            *(put(patient(f"p{n}", f"MRN{n}")) for n in range(60)),
            *(put(observation(f"o{n}", f"p{n % 60}")) for n in range(240)),
        )
    )
    engine.dispose()
    gateway = GatewayProcess(data, redis_url=redis_url, namespace=f"hl7gw-client-{uuid.uuid4().hex[:8]}")
    gateway.env.update(HL7GW_DATABASE_URL=database_url, HL7GW_WORKER_PROCESSES="1", HL7GW_EXPORT_FILE_RESOURCES="100")
    gateway.start()
    try:
        token = tmp_path / "token"
        token.write_text(gateway.token())
        out = tmp_path / "out"
        command = [client, "bulk", "--fhir-url", f"{gateway.base_url}/fhir", "--bearer-token", str(token)]
        command += ["--type", "Patient,Observation", "--no-default-filters", "--no-compression", str(out)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        gateway.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen: Counter[tuple[str, str]] = Counter()
    for path in sorted(out.glob("*.ndjson")):
        if path.name == "log.ndjson":
            continue
        for line in path.read_text().splitlines():
            resource = json.loads(line)
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            seen[(resource["resourceType"], resource["id"])] += 1
    expected = {("Patient", f"p{n}") for n in range(60)} | {("Observation", f"o{n}") for n in range(240)}
    assert set(seen) == expected and set(seen.values()) == {1}
    log = [json.loads(line) for line in (out / "log.ndjson").read_text().splitlines()]
    assert any(event["eventId"] == "export_complete" for event in log), [e["eventId"] for e in log]
