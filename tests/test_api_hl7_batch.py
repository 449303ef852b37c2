"""POST /hl7/batch: an uploaded batch file imported through the intake on a real Redis, answered
with its HL7 batch acknowledgement; the operator role; what is refused and how."""

from __future__ import annotations

import gzip
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.hl7.batch import BatchEnd, BatchStart, ReadMessage, read_batch
from gateway.hl7.message import parse
from gateway.journal.jobs import JobStore
from gateway.services.batch_uploads import BatchUploads
from gateway.store.resources import ResourceStore
from tests.support.asgi_client import AsgiClient
from tests.support.messages import a04

TOKENS = "ro:r-token:reader,ana:o-token:operator"
HL7 = {"Content-Type": "application/hl7-v2"}


def bad(number: int) -> bytes:
    """An ADT^A04 in a version the receiver does not take: AR with ERR 203."""
    return a04(number).replace(b"|P|2.5.1\r", b"|P|9.9\r", 1)


def batch(*messages: bytes, control_id: str = "UP-1") -> bytes:
    bhs = f"BHS|^~\\&|REG|HOSP|GW|GW|20240501120000||||{control_id}\r".encode()
    return bhs + b"".join(messages) + f"BTS|{len(messages)}\r".encode()


@pytest.fixture
def uploads(tmp_path: Path, engine: Engine, redis_url: str, redis_namespace: str) -> Iterator[BatchUploads]:
    settings = load_settings(
        data_dir=tmp_path, api_tokens=TOKENS, redis_url=redis_url, redis_namespace=redis_namespace,
        batch_max_upload_bytes=64 * 1024,
    )  # fmt: skip
    made = BatchUploads(settings, redis_url, JobStore(engine))
    yield made
    made.close()


@pytest.fixture
def app(tmp_path: Path, engine: Engine, uploads: BatchUploads) -> FastAPI:
    return create_app(uploads.settings, engine, batch_uploads=uploads)


def test_a_batch_with_a_bad_message_gets_a_batch_ack_listing_only_it(app: FastAPI, engine: Engine) -> None:
    body = batch(a04(1), bad(2), a04(3), control_id="UP-42")
    answer = AsgiClient(app, token="o-token").request("POST", "/hl7/batch", content=body, headers=HL7)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/hl7-v2"
    items = list(read_batch(io.BytesIO(answer.content)))
    (start,) = [item for item in items if isinstance(item, BatchStart)]
    assert start.header is not None and start.header.reference == "UP-42"  # BHS-12 = the incoming BHS-11
    (end,) = [item for item in items if isinstance(item, BatchEnd)]
    assert end.declared == 1
    (ack,) = [item for item in items if isinstance(item, ReadMessage)]
    message = parse(ack.raw.decode())
    assert (message.get("MSA-1"), message.get("MSA-2")) == ("AR", "SINK-2")
    assert message.get("ERR-3").split("^")[0] == "203"
    job = JobStore(engine).get(answer.headers["x-import-job"])
    assert job is not None and job.kind == "import" and "ana" in job.created_by
    assert (job.status, job.done, json.loads(job.summary)["totals"]["rejected"]) == ("done", 2, 1)
    (event,) = ResourceStore(engine).search("AuditEvent", {"subtype": ["batch-upload"]})
    assert (event["outcome"], event["agent"][0]["altId"], event["action"]) == ("4", "ana", "C")  # done in part
    assert event["entity"][0]["what"]["identifier"]["value"] == job.id


def test_gzip_by_content_encoding_or_magic_and_a_resend_is_all_duplicates(app: FastAPI) -> None:
    client = AsgiClient(app, token="o-token")
    body = gzip.compress(batch(a04(7), a04(8)))
    first = client.request("POST", "/hl7/batch", content=body, headers={**HL7, "Content-Encoding": "gzip"})
    again = client.request("POST", "/hl7/batch", content=body, headers={"Content-Type": "application/octet-stream"})
    for answer in (first, again):
        assert answer.status_code == 200, answer.text
        assert answer.content.startswith(b"BHS|") and b"BTS|0" in answer.content


def test_who_may_post_and_what_is_refused(app: FastAPI) -> None:
    body = batch(a04(1))
    assert AsgiClient(app).request("POST", "/hl7/batch", content=body, headers=HL7).status_code == 401
    reader = AsgiClient(app, token="r-token").request("POST", "/hl7/batch", content=body, headers=HL7)
    assert reader.status_code == 403 and reader.json()["resourceType"] == "OperationOutcome"
    operator = AsgiClient(app, token="o-token")
    empty = operator.request("POST", "/hl7/batch", content=b"", headers=HL7)
    assert empty.status_code == 400 and "empty" in empty.json()["issue"][0]["diagnostics"]
    junk = operator.request("POST", "/hl7/batch", content=b"%PDF-1.7 not hl7\n" * 10, headers=HL7)
    assert junk.status_code == 400 and "not HL7" in junk.json()["issue"][0]["diagnostics"]
    large = operator.request("POST", "/hl7/batch", content=batch(*(a04(i) for i in range(1000))), headers=HL7)
    assert large.status_code == 413
    typed = operator.request("POST", "/hl7/batch", content=body, headers={"Content-Type": "application/json"})
    assert typed.status_code == 415
    encoded = operator.request("POST", "/hl7/batch", content=body, headers={**HL7, "Content-Encoding": "br"})
    assert encoded.status_code == 415


def test_without_uploads_the_route_says_so(tmp_path: Path, engine: Engine) -> None:
    app = create_app(load_settings(data_dir=tmp_path, api_tokens=TOKENS), engine)
    answer = AsgiClient(app, token="o-token").request("POST", "/hl7/batch", content=batch(a04(1)), headers=HL7)
    assert answer.status_code == 503


def test_the_route_is_described_in_openapi(app: FastAPI) -> None:
    operation = app.openapi()["paths"]["/hl7/batch"]["post"]
    assert "application/hl7-v2" in operation["requestBody"]["content"]
    assert {"200", "400", "403", "413"} <= set(operation["responses"])


def test_the_body_is_spooled_and_removed_and_a_stale_one_is_cleaned_at_start(
    tmp_path: Path, engine: Engine, uploads: BatchUploads, redis_url: str
) -> None:
    app = create_app(uploads.settings, engine, batch_uploads=uploads)
    answer = AsgiClient(app, token="o-token").request("POST", "/hl7/batch", content=batch(a04(4)), headers=HL7)
    assert answer.status_code == 200
    spool = tmp_path / "uploads"
    assert spool.is_dir() and list(spool.iterdir()) == []
    stale, fresh = spool / "upload-old.hl7", spool / "upload-new.hl7"
    for path in (stale, fresh):
        path.write_bytes(b"MSH|")
    os.utime(stale, (time.time() - 2 * 86_400,) * 2)
    BatchUploads(uploads.settings, redis_url, None).close()
    assert sorted(p.name for p in spool.iterdir()) == ["upload-new.hl7"]
