"""FHIR Bulk Data $export in process: the async protocol's shapes (Bulk Data IG v2, export.html),
what the files hold (each resource once, as at transactionTime), compartments, _since and deleted,
cancel, expiry, the audit trail, and a crash mid-way resumed without a line twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.operationoutcome import OperationOutcome
from sqlalchemy import select

from gateway.api.app import create_app
from gateway.config import Settings, load_settings
from gateway.db.schema import fhir_resource
from gateway.services.exporter import ExportRunner
from gateway.store.export_jobs import ExportJobStore
from tests.support.asgi_client import AsgiClient
from tests.support.fhir_bundles import delete, observation, patient, put, transaction

READER, OTHER, ADMIN = "reader-token", "other-token", "admin-token"
KICK_OFF = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return load_settings(
        data_dir=tmp_path,
        database_url=database_url,
        api_tokens=f"me:{READER}:reader,other:{OTHER}:reader,boss:{ADMIN}:admin",
        export_file_resources=3,
        export_page_size=2,
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    app.state.store.apply_bundle(
        transaction(
            put(patient("p1", "MRN1")),
            put(patient("p2", "MRN2")),
            put(patient("p3", "MRN3")),
            put(observation("o1", "p1")),
            put(observation("o2", "p1")),
            put(observation("o3", "p2")),
            put(observation("o4", "p3")),
            put({"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Who"}]}),
        )
    )
    return app


@pytest.fixture
def client(app: FastAPI) -> AsgiClient:
    return AsgiClient(app, token=READER)


def runner(settings: Settings, app: FastAPI, **kwargs: Any) -> ExportRunner:
    return ExportRunner(app.state.engine, settings.export, **kwargs)


def kick_off(client: AsgiClient, path: str = "/fhir/$export", **params: str) -> httpx.Response:
    return client.get(path, params=params, headers=KICK_OFF)


def status_path(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    location = response.headers["content-location"]
    assert location.startswith("http://testserver/fhir/$export-status/")
    return location.removeprefix("http://testserver")


def export(client: AsgiClient, settings: Settings, app: FastAPI, path: str = "/fhir/$export", **params: str) -> dict:
    status = status_path(kick_off(client, path, **params))
    assert runner(settings, app).step()
    response = client.get(status)
    assert response.status_code == 200, response.text
    return response.json()


def lines_of(client: AsgiClient, manifest: dict, key: str = "output") -> dict[str, list[dict[str, Any]]]:
    """Every line of the manifest's ``key`` files by type, each checked against its R4 model."""
    found: dict[str, list[dict[str, Any]]] = {}
    for item in manifest[key]:
        response = client.get(item["url"].removeprefix("http://testserver"))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/fhir+ndjson"
        lines = response.text.splitlines()
        assert len(lines) == item["count"] and response.text.endswith("\n")
        for line in lines:
            resource = json.loads(line)
            assert resource["resourceType"] == item["type"]
            get_fhir_model_class(item["type"]).model_validate(resource)
            found.setdefault(item["type"], []).append(resource)
    return found


def ids(found: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {kind: sorted(r["id"] for r in resources) for kind, resources in found.items()}


def test_system_export_follows_the_async_protocol(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    response = kick_off(client, _outputFormat="application/fhir+ndjson")
    status = status_path(response)
    OperationOutcome.model_validate(response.json())

    waiting = client.get(status)
    assert waiting.status_code == 202
    assert waiting.headers["x-progress"] == "waiting for a worker"
    assert waiting.headers["retry-after"] == "2"
    assert waiting.content == b""

    assert runner(settings, app).step()
    done = client.get(status)
    assert done.status_code == 200
    assert done.headers["content-type"] == "application/json"
    manifest = done.json()
    assert set(manifest) == {"transactionTime", "request", "requiresAccessToken", "output", "error"}
    assert manifest["request"] == "http://testserver/fhir/$export?_outputFormat=application%2Ffhir%2Bndjson"
    assert manifest["requiresAccessToken"] is True
    assert manifest["error"] == []
    moment = datetime.fromisoformat(manifest["transactionTime"])
    assert moment.tzinfo is not None and abs((datetime.now(UTC) - moment).total_seconds()) < 60
    expires = parsedate_to_datetime(done.headers["expires"])
    assert 23 * 3600 < (expires - datetime.now(UTC)).total_seconds() <= 24 * 3600
    # Three resources a file (export_file_resources): 3 Patients in one, 4 Observations in two.
    assert [(i["type"], i["count"]) for i in manifest["output"]] == [
        ("Observation", 3),
        ("Observation", 1),
        ("Patient", 3),
        ("Practitioner", 1),
    ]
    assert all(set(item) == {"type", "url", "count"} for item in manifest["output"])
    assert ids(lines_of(client, manifest)) == {
        "Observation": ["o1", "o2", "o3", "o4"],
        "Patient": ["p1", "p2", "p3"],
        "Practitioner": ["dr1"],
    }


def test_kick_off_refuses_what_the_ig_says_it_must(client: AsgiClient) -> None:
    for headers in ({"Prefer": "respond-async"}, {"Accept": "application/fhir+json"}, {}):
        response = client.get("/fhir/$export", headers=headers)
        assert response.status_code == 400, headers
        OperationOutcome.model_validate(response.json())
    assert kick_off(client, _outputFormat="text/csv").status_code == 400
    assert kick_off(client, _since="yesterday").status_code == 400
    assert kick_off(client, _type="Nonsense").status_code == 400
    assert kick_off(client, "/fhir/Patient/$export", _type="Practitioner").status_code == 400
    for unsupported in ("_elements", "patient", "_typeFilter", "includeAssociatedData", "whatever"):
        response = kick_off(client, **{unsupported: "x"})
        assert response.status_code == 400, unsupported
        assert unsupported in response.json()["issue"][0]["diagnostics"]
    assert kick_off(client, "/fhir/Group/nope/$export").status_code == 404
    assert kick_off(client, _type="AuditEvent").status_code == 403
    assert client.get("/fhir/$export", headers=KICK_OFF, token="").status_code == 401


def test_lenient_handling_ignores_and_says_so(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    lenient = {**KICK_OFF, "Prefer": "respond-async, handling=lenient"}
    response = client.get("/fhir/$export", params={"_typeFilter": "x", "_type": "Patient,Nonsense"}, headers=lenient)
    status = status_path(response)
    warnings = [i["diagnostics"] for i in response.json()["issue"] if i["severity"] == "warning"]
    assert len(warnings) == 2
    assert runner(settings, app).step()
    manifest = client.get(status).json()
    assert [i["type"] for i in manifest["output"]] == ["Patient"]
    errors = lines_of(client, manifest, "error")["OperationOutcome"]
    assert [e["issue"][0]["diagnostics"] for e in errors] == warnings


def test_post_kick_off_with_parameters(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Observation"},
            {"name": "_outputFormat", "valueString": "ndjson"},
        ],
    }
    response = client.request("POST", "/fhir/$export", json=body, headers=KICK_OFF)
    status = status_path(response)
    assert runner(settings, app).step()
    assert [i["type"] for i in client.get(status).json()["output"]] == ["Observation", "Observation"]


def test_files_are_as_at_transaction_time(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    status = status_path(kick_off(client))
    store = app.state.store
    store.apply_bundle(
        transaction(
            put(patient("p1", "MRN1", family="Changed")),
            delete("Patient", "p2"),
            put(patient("p9", "MRN9")),
            put(observation("o1", "p1", status="amended")),
        )
    )
    assert runner(settings, app).step()
    found = lines_of(client, client.get(status).json())
    assert ids(found)["Patient"] == ["p1", "p2", "p3"]
    by_id = {r["id"]: r for r in found["Patient"] + found["Observation"]}
    assert by_id["p1"]["name"][0]["family"] == "Doe" and by_id["p1"]["meta"]["versionId"] == "1"
    assert by_id["o1"]["status"] == "final"


def test_since_exports_changes_and_lists_deletions(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    with app.state.engine.connect() as conn:
        written = conn.execute(select(fhir_resource.c.last_updated).limit(1)).scalar_one()
    store = app.state.store
    import time

    time.sleep(0.01)  # a later millisecond than the first writes (not an assertion)
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Changed")), delete("Observation", "o3")))
    with app.state.engine.connect() as conn:
        later = conn.execute(select(fhir_resource.c.last_updated).where(fhir_resource.c.id == "p1")).scalar_one()
    assert later > written
    since = later.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    manifest = export(client, settings, app, _since=since)
    assert ids(lines_of(client, manifest)) == {"Patient": ["p1"]}
    deleted = lines_of(client, manifest, "deleted")["Bundle"]
    assert [b["entry"][0]["request"] for b in deleted] == [{"method": "DELETE", "url": "Observation/o3"}]


def test_patient_and_group_exports_take_compartments(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    everyone = export(client, settings, app, "/fhir/Patient/$export")
    assert ids(lines_of(client, everyone)) == {"Observation": ["o1", "o2", "o3", "o4"], "Patient": ["p1", "p2", "p3"]}

    group = {"resourceType": "Group", "id": "g1", "type": "person", "actual": True}
    group["member"] = [{"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Patient/p3"}}]
    app.state.store.apply_bundle(transaction(put(group)))
    members = export(client, settings, app, "/fhir/Group/g1/$export", _type="Patient,Observation")
    assert ids(lines_of(client, members)) == {"Observation": ["o1", "o2", "o4"], "Patient": ["p1", "p3"]}


def test_only_the_client_that_asked_sees_the_export(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    status = status_path(kick_off(client))
    assert runner(settings, app).step()
    manifest = client.get(status).json()
    file = manifest["output"][0]["url"].removeprefix("http://testserver")
    assert client.get(status, token=OTHER).status_code == 403
    assert client.get(file, token=OTHER).status_code == 403
    assert client.request("DELETE", status, token=OTHER).status_code == 403
    assert client.get(file, token=ADMIN).status_code == 200
    assert client.get(file.rsplit("/", 1)[0] + "/..%2Fadmin.token").status_code == 404
    assert client.get(file.rsplit("/", 1)[0] + "/Patient-99.ndjson").status_code == 404
    assert client.get("/fhir/$export-status/not-a-job").status_code == 404


def test_cancel_stops_and_deletes(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    status = status_path(kick_off(client))
    cancelled = client.request("DELETE", status)
    assert cancelled.status_code == 202
    OperationOutcome.model_validate(cancelled.json())
    assert client.get(status).status_code == 404
    assert client.request("DELETE", status).status_code == 404
    assert not runner(settings, app).step()  # nothing left to do

    status = status_path(kick_off(client))
    assert runner(settings, app).step()
    job_dir = settings.export.directory / status.rsplit("/", 1)[1]
    assert any(job_dir.iterdir())
    assert client.request("DELETE", status).status_code == 202
    assert not job_dir.exists()
    assert client.get(status).status_code == 404


def test_expired_files_are_deleted(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    status = status_path(kick_off(client))
    work = runner(settings, app)
    assert work.step()
    job_id = status.rsplit("/", 1)[1]
    assert ExportJobStore(app.state.engine).expired() == []
    assert ExportJobStore(app.state.engine).expired(now=2**62) == [job_id]
    with app.state.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE bulk_export SET expires_at = 1")
    assert work.sweep() == 1
    assert not (settings.export.directory / job_id).exists()
    assert client.get(status).status_code == 404


def test_kick_off_and_downloads_are_audited(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    manifest = export(client, settings, app, _type="Patient")
    file = manifest["output"][0]["url"]
    assert client.get(file.removeprefix("http://testserver")).status_code == 200
    assert app.state.audit_trail.flush()
    events = app.state.store.search("AuditEvent", {"_count": ["100"]})
    exports = [e for e in events if any(s["code"] == "export" for s in e.get("subtype", []))]
    get_fhir_model_class("AuditEvent").model_validate(exports[0])
    assert sorted(e["action"] for e in exports) == ["E", "R"]
    download = next(e for e in exports if e["action"] == "R")
    assert {"value": file} in [entity.get("what", {}).get("identifier") for entity in download["entity"]]
    assert all(agent["who"]["display"] != READER for agent in download["agent"])  # the name, never the token


class _Crash(BaseException):  # a kill: nothing in the runner catches it
    pass


def test_a_crash_mid_way_resumes_without_a_line_twice(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    """The first worker writes pages past its last save, then dies; the next one cuts the files back
    to the saved lengths and goes on from the saved position."""
    app.state.store.apply_bundle(transaction(*(put(observation(f"x{n:03}", "p1")) for n in range(40))))
    status = status_path(kick_off(client))
    first = runner(settings, app, save_every_s=0.0)
    pages = 0
    original_save = first.jobs.save

    def save_then_crash(*args: Any, **kwargs: Any) -> bool:
        nonlocal pages
        pages += 1
        if pages == 7:
            first.jobs.save = lambda *a, **k: True  # the next pages are written but never saved
        return original_save(*args, **kwargs)

    first.jobs.save = save_then_crash  # type: ignore[method-assign]
    import gateway.services.exporter as exporter

    reads = 0
    real_read = exporter.read_page

    def read_then_crash(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 12:
            raise _Crash
        return real_read(*args, **kwargs)

    exporter.read_page = read_then_crash  # type: ignore[assignment]
    try:
        with pytest.raises(_Crash):
            first.run_job(first.jobs.claim(first.owner, 60_000))  # type: ignore[arg-type]
    finally:
        exporter.read_page = real_read  # type: ignore[assignment]
    assert client.get(status).status_code == 202
    job = ExportJobStore(app.state.engine).get(status.rsplit("/", 1)[1])
    assert job is not None and job.status == "running"
    on_disk = sum(len(path.read_bytes().splitlines()) for path in (settings.export.directory / job.id).iterdir())
    assert on_disk > job.state.written + 1  # lines past the last save: the crash is mid-way, not at a save
    # The same host, a process that is gone: here the crashed owner had this pid, which counts as gone.
    second = runner(settings, app)
    assert second.step()
    found = lines_of(client, client.get(status).json())
    observations = ids(found)["Observation"]
    assert observations == sorted(["o1", "o2", "o3", "o4", *(f"x{n:03}" for n in range(40))])
    assert len(observations) == len(set(observations))


def test_a_cancel_while_running_stops_the_worker(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    status = status_path(kick_off(client))
    work = runner(settings, app, save_every_s=0.0)
    original_save = work.jobs.save
    saves = 0

    def cancel_on_second_save(*args: Any, **kwargs: Any) -> bool:
        nonlocal saves
        saves += 1
        if saves == 2:
            assert client.request("DELETE", status).status_code == 202
        return original_save(*args, **kwargs)

    work.jobs.save = cancel_on_second_save  # type: ignore[method-assign]
    assert work.step()
    assert saves == 2  # it stopped at the save that found the job cancelled
    assert not (settings.export.directory / status.rsplit("/", 1)[1]).exists()
    assert client.get(status).status_code == 404


def test_a_failed_export_answers_500_with_an_outcome(client: AsgiClient, settings: Settings, app: FastAPI) -> None:
    group = {"resourceType": "Group", "id": "g1", "type": "person", "actual": True}
    app.state.store.apply_bundle(transaction(put(group)))
    status = status_path(kick_off(client, "/fhir/Group/g1/$export"))
    app.state.store.apply_bundle(transaction(delete("Group", "g1")))  # gone before a worker starts
    assert runner(settings, app).step()
    failed = client.get(status)
    assert failed.status_code == 500
    assert failed.headers["content-type"] == "application/fhir+json"
    outcome = OperationOutcome.model_validate(failed.json())
    assert outcome.issue[0].code == "exception" and "LookupError" in (outcome.issue[0].diagnostics or "")
    assert not (settings.export.directory / status.rsplit("/", 1)[1]).exists()
