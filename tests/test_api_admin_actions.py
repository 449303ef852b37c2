"""The operators' actions under /admin (issue 15, item 5): replay (as it was, or edited), discard
(admin only), bulk replay and reprocess jobs, job control; each an AuditEvent naming the token."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.envelope import Envelope
from gateway.journal.dead_letters import DeadLetterStore, Letter
from gateway.journal.jobs import JobStore
from gateway.services.operator_actions import OperatorDesk
from gateway.stages import Stage
from gateway.store.resources import ResourceStore
from tests.support.asgi_client import AsgiClient
from tests.support.messages import adt
from tests.support.queue import parsed_envelope

TOKENS = "ro:r-token:reader,ana:o-token:operator,bo:a-token:admin"
POSTS = [
    "/admin/dead-letters/x/replay",
    "/admin/dead-letters/x/discard",
    "/admin/replays",
    "/admin/reprocess",
    "/admin/jobs/x/cancel",
]


@pytest.fixture
def queued() -> list[Envelope]:
    return []


@pytest.fixture
def app(tmp_path: Path, engine: Engine, queued: list[Envelope]) -> FastAPI:
    settings = load_settings(data_dir=tmp_path, api_tokens=TOKENS)
    return create_app(settings, engine, desk=OperatorDesk(engine, queued.append))


def _letter(engine: Engine, control: str = "A-1") -> str:
    letter = Letter(parsed_envelope(adt(control, "Doe"), seq=3), Stage.CONVERT, "no map")
    DeadLetterStore(engine).park(letter)
    return letter.id


@pytest.mark.parametrize("route", POSTS)
def test_every_action_needs_an_operator_token(app: FastAPI, route: str) -> None:
    assert AsgiClient(app).request("POST", route, json={}).status_code == 401
    reader = AsgiClient(app, token="r-token").request("POST", route, json={})
    assert reader.status_code == 403 and reader.headers["content-type"] == "application/json"


def test_replay_as_it_was_and_refused_the_second_time(app: FastAPI, engine: Engine, queued: list[Envelope]) -> None:
    letter_id = _letter(engine)
    operator = AsgiClient(app, token="o-token")
    done = operator.request("POST", f"/admin/dead-letters/{letter_id}/replay")
    assert done.status_code == 202, done.text
    (envelope,) = queued
    assert done.json()["replayed_as"] == envelope.id and done.json()["status"] == "replayed"
    assert envelope.meta["replay_of"] == letter_id and envelope.seq == 3
    again = operator.request("POST", f"/admin/dead-letters/{letter_id}/replay")
    assert again.status_code == 409 and "is replayed" in again.json()["error"]["message"]
    assert operator.request("POST", "/admin/dead-letters/nope/replay").status_code == 404
    events = ResourceStore(engine).search("AuditEvent", {"subtype": ["replay"]})
    assert sorted((e["outcome"], e["agent"][0]["altId"]) for e in events) == [("0", "ana"), ("8", "ana"), ("8", "ana")]


def test_an_edited_replay_keeps_the_original(app: FastAPI, engine: Engine, queued: list[Envelope]) -> None:
    letter_id = _letter(engine)
    fixed = adt("A-1", "Doe", mrn="M2").decode().replace("\r", "\n")  # as an editor saves it
    operator = AsgiClient(app, token="o-token")
    assert operator.request("POST", f"/admin/dead-letters/{letter_id}/replay", json={"raw": fixed}).status_code == 202
    assert queued[0].raw == adt("A-1", "Doe", mrn="M2") and queued[0].meta["edited"] == "1"
    assert DeadLetterStore(engine).get(letter_id).raw == adt("A-1", "Doe")  # type: ignore[union-attr]
    other = _letter(engine, "A-2")
    body = {"raw_base64": base64.b64encode(adt("A-2", "Roe")).decode()}
    assert operator.request("POST", f"/admin/dead-letters/{other}/replay", json=body).status_code == 202
    assert queued[1].raw == adt("A-2", "Roe")
    assert operator.request("POST", f"/admin/dead-letters/{other}/replay", json={"rwa": "x"}).status_code == 400
    assert ResourceStore(engine).search("AuditEvent", {"subtype": ["edit-replay"]})


def test_discard_is_for_admins_and_needs_a_reason(app: FastAPI, engine: Engine) -> None:
    letter_id = _letter(engine)
    route = f"/admin/dead-letters/{letter_id}/discard"
    assert AsgiClient(app, token="o-token").request("POST", route, json={"reason": "x"}).status_code == 403
    admin = AsgiClient(app, token="a-token")
    assert admin.request("POST", route, json={}).status_code == 400
    done = admin.request("POST", route, json={"reason": "vendor test message"})
    assert done.status_code == 200 and done.json()["status"] == "discarded" and done.json()["handled_by"] == "bo"
    assert admin.request("POST", route, json={"reason": "again"}).status_code == 409


def test_jobs_start_show_and_cancel(app: FastAPI, engine: Engine) -> None:
    operator = AsgiClient(app, token="o-token")
    started = operator.request("POST", "/admin/replays", json={"stage": "convert", "since": "2026-12-01"})
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["kind"] == "replay" and job["status"] == "running" and job["filter"]["stage"] == "convert"
    assert isinstance(job["filter"]["since"], int) and job["created_by"] == "ana"
    assert operator.request("POST", "/admin/replays", json={"colour": "red"}).status_code == 400
    assert operator.request("POST", "/admin/reprocess", json={"status": "ack"}).status_code == 400
    again = operator.request("POST", "/admin/reprocess", json={"sender": "ADT|HOSP"})
    assert again.status_code == 202 and again.json()["kind"] == "reprocess"

    assert {j["id"] for j in operator.get("/admin/jobs").json()["items"]} == {job["id"], again.json()["id"]}
    assert operator.get(f"/admin/jobs/{job['id']}").json()["filter"] == job["filter"]
    assert operator.get("/admin/jobs/nope").status_code == 404
    cancelled = operator.request("POST", f"/admin/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert operator.request("POST", f"/admin/jobs/{job['id']}/cancel").status_code == 409
    assert operator.request("POST", f"/admin/jobs/{job['id']}/explode").status_code == 404
    assert JobStore(engine).get(job["id"]).status == "cancelled"  # type: ignore[union-attr]
    subtypes = sorted(e["subtype"][0]["code"] for e in ResourceStore(engine).search("AuditEvent", {}))
    assert subtypes == ["job-cancel", "job-cancel", "replay", "reprocess"]


def test_without_a_queue_a_replay_is_503(tmp_path: Path, engine: Engine) -> None:
    settings = load_settings(data_dir=tmp_path, api_tokens=TOKENS)
    app = create_app(settings, engine, desk=OperatorDesk(engine, None))
    letter_id = _letter(engine)
    answer = AsgiClient(app, token="o-token").request("POST", f"/admin/dead-letters/{letter_id}/replay")
    assert answer.status_code == 503 and DeadLetterStore(engine).get(letter_id).status == "open"  # type: ignore[union-attr]
