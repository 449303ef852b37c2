"""End to end: ``hl7gw import`` beside a running ``hl7gw run`` (same HL7GW_DATA_DIR: it finds the
embedded Redis), every message converted and stored once, even across a SIGKILL of the import."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from gateway.db.engine import make_engine
from gateway.db.schema import fhir_resource, message_archive
from gateway.keys import Keys
from gateway.services.embedded_redis import EmbeddedRedis
from gateway.services.importer import file_identity
from tests.support.gateway_process import GatewayProcess
from tests.support.import_files import PATIENT_SAMPLES, batch, sample_copy, write_a04_batch

pytestmark = pytest.mark.slow


def _import(gateway: GatewayProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "import", *args], capture_output=True, timeout=600, env=gateway.env
    )


def _count(engine: object, query: object) -> int:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(query).scalar_one())


def test_a_batch_of_samples_is_imported_every_patient_found_and_a_second_import_changes_nothing(
    tmp_path: Path,
) -> None:
    copies = [sample_copy(PATIENT_SAMPLES[n % len(PATIENT_SAMPLES)], f"e2e-{n}") for n in range(30)]
    path = tmp_path / "samples.hl7"
    path.write_bytes(batch([raw for raw, _ in copies]))
    gateway = GatewayProcess(tmp_path / "data")
    gateway.env["HL7GW_IMPORT_RATE"] = "100000"  # the import queue unpaced: nothing else runs
    gateway.start()
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'hl7gw.sqlite3'}")
    try:
        first = _import(gateway, str(path))
        assert first.returncode == 0, first.stderr.decode()
        assert "read 30, accepted 30, duplicates 0, rejected 0" in first.stdout.decode()
        with gateway.client() as client:  # counted into hl7gw run's own /metrics (same data dir)
            metrics = client.get("/metrics").text
        assert 'hl7gw_import_messages_total{outcome="accepted"} 30.0' in metrics
        versions = {}
        for _, identifier in copies:
            bundle = gateway.wait_for(f"/fhir/Patient?identifier={identifier}", lambda b: b.get("total", 0) >= 1, 60)
            versions[identifier] = [e["resource"]["meta"]["versionId"] for e in bundle["entry"]]

        second = _import(gateway, str(path))
        assert second.returncode == 0 and "imported before" in second.stdout.decode()
        again = _import(gateway, str(path), "--again", "--json")
        assert again.returncode == 0, again.stderr.decode()
        [summary] = json.loads(again.stdout)["files"]
        assert summary["totals"] == {"duplicate": 30, "read": 30}
        time.sleep(3)  # anything queued by mistake would be stored by now
        assert _count(engine, select(func.count()).select_from(message_archive)) == 30
        for _, identifier in copies:
            with gateway.client() as client:
                bundle = client.get(f"/fhir/Patient?identifier={identifier}").json()
            assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == versions[identifier]
        jobs = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "jobs", "--json"], capture_output=True, env=gateway.env, timeout=60
        )
        imports = [job for job in json.loads(jobs.stdout)["jobs"] if job["kind"] == "import"]
        assert [(job["status"], job["queued"], job["skipped"]) for job in imports] == [("done", 0, 30), ("done", 30, 0)]
    finally:
        gateway.stop()
        engine.dispose()


def test_an_import_killed_with_sigkill_beside_hl7gw_run_is_resumed_and_each_message_applied_once(
    tmp_path: Path,
) -> None:
    count = 5_000  # the import queues ~thousands a second: killed after 800, most of the file is still to come
    path = write_a04_batch(tmp_path / "big.hl7", count, prefix="KILL")
    gateway = GatewayProcess(tmp_path / "data")
    gateway.env["HL7GW_IMPORT_RATE"] = "100000"  # the import queue unpaced: nothing else runs
    gateway.start()
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'hl7gw.sqlite3'}")
    redis_url = EmbeddedRedis.running_url(tmp_path / "data" / "redis")
    assert redis_url is not None
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    key = Keys().import_progress(file_identity(path)[0])
    try:
        log = (tmp_path / "import.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "import", str(path)], env=gateway.env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 180
        while int(client.hget(key, "count") or 0) < 800 and time.monotonic() < deadline:  # type: ignore[arg-type]
            assert process.poll() is None, (tmp_path / "import.log").read_text()
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert 0 < int(client.hget(key, "count")) < count  # type: ignore[arg-type]  # killed mid-way

        again = _import(gateway, str(path), "--json")
        assert again.returncode == 0, again.stderr.decode()
        [summary] = json.loads(again.stdout)["files"]
        assert summary["status"] == "done" and summary["resumed_at"] > 0

        def patients() -> int:
            return _count(
                engine, select(func.count()).select_from(fhir_resource).where(fhir_resource.c.type == "Patient")
            )

        deadline = time.monotonic() + 600
        while patients() < count and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(2)
        assert patients() == count, gateway.log()
        assert _count(engine, select(func.count()).select_from(message_archive)) == count  # each queued once
        versions = select(func.max(fhir_resource.c.version_id)).where(fhir_resource.c.type == "Patient")
        assert _count(engine, versions) == 1  # each applied once
    finally:
        client.close()
        gateway.stop()
        engine.dispose()
