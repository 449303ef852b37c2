"""The operator console (issue 20), in process: sign-in and its cookie, roles, CSRF on every form,
security headers, escaping, and each page on real data (a pipeline run, parked dead letters)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from gateway.api.app import create_app
from gateway.api.auth import TokenRegistry
from gateway.api.console.session import COOKIE, SessionSigner
from gateway.config import load_settings, parse_tokens
from gateway.convert.runtime.engine import Converter
from gateway.deliver.store_sink import StoreSink
from gateway.envelope import Envelope
from gateway.journal.dead_letters import DeadLetterStore, Letter
from gateway.journal.jobs import JobStore
from gateway.journal.messages import MessageArchive
from gateway.services.dead_letter_views import CurrentMappings
from gateway.services.operator_actions import OperatorDesk
from gateway.services.pipeline import Pipeline
from gateway.stages import Stage
from gateway.store.resources import ResourceStore
from tests.support.console import ConsoleClient, csrf_of
from tests.support.messages import adt
from tests.support.queue import parsed_envelope

TOKENS = "ro:r-token:reader,ana:o-token:operator,bo:a-token:admin,prom:m-token:metrics"
SCRIPT = "<script>alert(1)</script>"
PAGES = ["/console", "/console/messages", "/console/dead-letters", "/console/jobs", "/console/test-message"]


@pytest.fixture
def queued() -> list[Envelope]:
    return []


@pytest.fixture
def app(tmp_path: Path, engine: Engine, queued: list[Envelope]) -> FastAPI:
    settings = load_settings(data_dir=tmp_path, api_tokens=TOKENS)
    mappings = CurrentMappings()
    desk = OperatorDesk(engine, queued.append)
    return create_app(settings, engine, dry_run=mappings.dry_run, desk=desk, test_message=mappings.workbench)


@pytest.fixture
def operator(app: FastAPI) -> ConsoleClient:
    client = ConsoleClient(app)
    assert client.sign_in("o-token").status_code == 303
    return client


@pytest.fixture
def processed(engine: Engine) -> Iterator[Envelope]:
    """A message run through the pipeline: archived, its Patient (MRN MRN-7) stored."""
    sink = StoreSink(engine)
    envelope = parsed_envelope(adt("CTL-7", "Doe", mrn="MRN-7"), seq=1)
    Pipeline(Converter.load(), sink, MessageArchive(engine)).process(envelope)
    yield envelope
    sink.close()


def _letter(engine: Engine, family: str = "Doe", control: str = "DL-1", stage: str = Stage.CONVERT) -> str:
    letter = Letter(parsed_envelope(adt(control, family), seq=3), stage, "no map for this")
    DeadLetterStore(engine).park(letter)
    return letter.id


def test_sign_in_gives_a_strict_http_only_cookie_that_expires(app: FastAPI) -> None:
    client = ConsoleClient(app)
    answer = client.sign_in("o-token")
    assert answer.status_code == 303 and answer.headers["location"] == "/console"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}="))
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "max-age", "path", "samesite"} <= flags and "secure" not in flags
    assert "SameSite=strict" in cookie and "Path=/console" in cookie and "o-token" not in cookie
    assert client.get("/console").status_code == 200
    # Over TLS the cookie is Secure too.
    tls = ConsoleClient(app, base_url="https://testserver")
    secure = next(c for c in tls.sign_in("o-token").headers.get_list("set-cookie") if c.startswith(f"{COOKIE}="))
    assert "Secure" in secure


@pytest.mark.parametrize(
    ("token", "status", "says"), [("r-token", 403, "reader"), ("m-token", 403, "metrics"), ("nope", 401, "not known")]
)
def test_only_operators_and_admins_sign_in(app: FastAPI, token: str, status: int, says: str) -> None:
    client = ConsoleClient(app)
    answer = client.sign_in(token)
    assert answer.status_code == status and says in answer.text
    assert COOKIE not in client.cookies
    assert client.get("/console").status_code == 303  # still to the sign-in page


def test_a_refused_sign_in_is_audited(app: FastAPI, engine: Engine) -> None:
    assert ConsoleClient(app).sign_in("r-token").status_code == 403
    assert app.state.audit_trail.flush()
    events = ResourceStore(engine).search("AuditEvent", {"subtype": ["110122"]})  # DICOM Login
    refused = [(e["agent"][0].get("altId"), e["entity"][0]["description"]) for e in events]
    assert refused == [("ro", "POST /console/login")]


def test_without_a_session_every_page_goes_to_sign_in(app: FastAPI) -> None:
    client = ConsoleClient(app)
    for url in PAGES:
        answer = client.get(url)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/login", url
    refresh = client.get("/console/dashboard/panel", headers={"HX-Request": "true"})
    assert refresh.status_code == 204 and refresh.headers["hx-redirect"] == "/console/login"
    client.cookies.set(COOKIE, "e30.forged", domain="testserver.local", path="/console")
    assert client.get("/console").status_code == 303


def test_a_session_ends_when_it_expires_is_forged_or_its_token_goes() -> None:
    tokens = TokenRegistry(parse_tokens("ana:o-token:operator"))
    signer = SessionSigner(b"k" * 32, tokens, ttl_s=60)
    made = signer.sign_in("o-token", now=1000)
    assert made is not None
    session, cookie = made
    assert signer.session_of(cookie, now=1059) == session
    assert signer.session_of(cookie, now=1060) is None  # expired
    body, mac = cookie.split(".")
    assert signer.session_of(f"{body}x.{mac}", now=1001) is None  # changed
    assert SessionSigner(b"o" * 32, tokens).session_of(cookie, now=1001) is None  # another key
    demoted = TokenRegistry(parse_tokens("ana:o-token:reader"))
    assert SessionSigner(b"k" * 32, demoted).session_of(cookie, now=1001) is None  # role changed
    assert SessionSigner(b"k" * 32, TokenRegistry([])).session_of(cookie, now=1001) is None  # token gone
    assert signer.sign_in("nope") is None


def test_the_key_is_kept_private_in_the_data_dir(app: FastAPI, tmp_path: Path) -> None:
    key = tmp_path / "console.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(bytes.fromhex(key.read_text().strip())) == 32
    tokens = TokenRegistry(parse_tokens("ana:o-token:operator"))
    made = SessionSigner.from_key_file(key, tokens).sign_in("o-token")
    assert made is not None  # another API process with the same data dir accepts the session
    assert SessionSigner.from_key_file(key, tokens).session_of(made[1]) == made[0]
    # A data dir that cannot hold a key: a key of the process alone, and the console still works.
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    alone = SessionSigner.from_key_file(blocked / "console.key", tokens)
    again = alone.sign_in("o-token")
    assert again is not None and alone.session_of(again[1]) == again[0]


def test_every_page_has_the_security_headers_and_no_inline_script_or_style(
    operator: ConsoleClient, engine: Engine, processed: Envelope
) -> None:
    letter_id = _letter(engine)
    pages = PAGES + ["/console/login", f"/console/dead-letters/{letter_id}", f"/console/messages/{processed.id}"]
    pages.append("/console/dead-letters/nope")  # an error page too
    for url in pages:
        answer = operator.get(url, follow_redirects=True)
        csp = answer.headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, url
        assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"] == "no-store", url
        assert answer.headers["x-content-type-options"] == "nosniff"
        html = answer.text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), url
        assert "<style" not in html and " style=" not in html and " on" + "click=" not in html, url
    static = operator.get("/console/static/htmx.min.js")
    assert static.status_code == 200 and static.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("without", ["no token", "wrong token", "another session's token"])
def test_a_forged_form_without_the_csrf_token_is_refused(
    app: FastAPI, operator: ConsoleClient, engine: Engine, queued: list[Envelope], without: str
) -> None:
    letter_id = _letter(engine)
    form: dict[str, str] = {}
    if without == "wrong token":
        form["csrf_token"] = "é" * 43
    elif without == "another session's token":
        other = ConsoleClient(app)
        other.sign_in("o-token")
        form["csrf_token"] = csrf_of(other.get("/console").text)
    for action in (f"/console/dead-letters/{letter_id}/replay", "/console/dead-letters/replay", "/console/logout"):
        answer = operator.post(action, {**form, "letter": letter_id})
        assert answer.status_code == 403 and "CSRF" in answer.text, action
    assert queued == [] and DeadLetterStore(engine).get(letter_id).status == "open"  # type: ignore[union-attr]
    assert operator.get("/console").status_code == 200  # still signed in


def test_a_sign_in_form_from_elsewhere_is_refused(app: FastAPI) -> None:
    client = ConsoleClient(app)
    answer = client.post("/console/login", {"token": "o-token", "csrf_token": "made-up"})
    assert answer.status_code == 403 and COOKIE not in client.cookies
    client.get("/console/login")  # with the nonce cookie, but a token of other text
    assert client.post("/console/login", {"token": "o-token", "csrf_token": "ü"}).status_code == 403


def test_a_script_in_pid_5_renders_as_text(operator: ConsoleClient, engine: Engine) -> None:
    letter_id = _letter(engine, family=SCRIPT)
    letter = DeadLetterStore(engine).get(letter_id)
    assert letter is not None
    for url in (f"/console/dead-letters/{letter_id}", f"/console/messages/{letter.envelope_id}"):
        html = operator.get(url).text
        assert SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html, url


def test_the_dashboard_shows_each_sender(operator: ConsoleClient, engine: Engine, processed: Envelope) -> None:
    _letter(engine)
    _letter(engine, control="AR-1", stage=Stage.INTAKE)  # answered AR at the listener
    html = operator.get("/console").text
    (row,) = re.findall(r"<tr>\s*<td>ADT\|HOSP</td>(.*?)</tr>", html, re.S)
    # Today, the last hour, failed (each dead letter's message is archived as failed), rejected.
    assert re.findall(r'<td class="n[^"]*">(\d+)</td>', row)[:4] == ["3", "3", "2", "1"]
    assert ">2</a>" in row  # two open dead letters, linked
    assert 'hx-trigger="every 5s"' in html
    assert "ADT|HOSP" in operator.get("/console/dashboard/panel").text


def test_find_a_message_by_control_id_and_by_mrn(operator: ConsoleClient, processed: Envelope) -> None:
    by_control = operator.submit("/console/messages", "/console/messages", {"control_id": "CTL-7"})
    assert by_control.status_code == 200 and f"/console/messages/{processed.id}" in by_control.text
    assert "1 found" in by_control.text
    by_mrn = operator.submit("/console/messages", "/console/messages", {"mrn": "MRN-7"})
    assert f"/console/messages/{processed.id}" in by_mrn.text
    nothing = operator.submit("/console/messages", "/console/messages", {"mrn": "NOBODY"})
    assert "0 found" in nothing.text
    by_type = operator.submit("/console/messages", "/console/messages", {"message_type": "ADT^A08", "since": "1h"})
    assert f"/console/messages/{processed.id}" in by_type.text
    assert operator.submit("/console/messages", "/console/messages", {"since": "yesterday"}).status_code == 400


def test_a_message_page_lays_it_out_with_the_fhir_it_wrote(
    operator: ConsoleClient, engine: Engine, processed: Envelope
) -> None:
    html = operator.get(f"/console/messages/{processed.id}").text
    assert "Patient Name" in html and "PID-5.1 Family Name" in html and "Doe" in html
    assert "Patient Identifier List" in html and "PID-3.4 Assigning Authority" in html
    (link,) = re.findall(r'href="(/console/resources/Patient/[^"]+/1)"', html)
    resource = operator.get(link)
    assert resource.status_code == 200 and "&#34;resourceType&#34;: &#34;Patient&#34;" in resource.text
    assert "MRN-7" in resource.text


def test_edit_and_replay_from_the_letter_page(operator: ConsoleClient, engine: Engine, queued: list[Envelope]) -> None:
    letter_id = _letter(engine)
    page = operator.get(f"/console/dead-letters/{letter_id}").text
    assert "Replay edited message" in page and "no map for this" in page and "data-field-names" in page
    edited = adt("DL-1", "Doe", mrn="FIXED-1").decode().replace("\r", "\n")
    done = operator.submit(
        f"/console/dead-letters/{letter_id}",
        f"/console/dead-letters/{letter_id}/replay",
        {"edited": "1", "raw": edited},
    )
    assert done.status_code == 303 and done.headers["location"].endswith("?done=replayed")
    (envelope,) = queued
    assert envelope.raw == adt("DL-1", "Doe", mrn="FIXED-1") and envelope.meta["edited"] == "1"
    assert envelope.meta["replayed_by"] == "ana"
    after = operator.get(done.headers["location"]).text
    assert "replayed" in after and envelope.id in after and "Replay edited message" not in after
    again = operator.submit(f"/console/dead-letters/{letter_id}", f"/console/dead-letters/{letter_id}/replay")
    assert again.status_code == 409
    events = ResourceStore(engine).search("AuditEvent", {"subtype": ["edit-replay"]})
    assert [e["agent"][0]["altId"] for e in events] == ["ana"]


def test_select_many_and_replay(operator: ConsoleClient, engine: Engine, queued: list[Envelope]) -> None:
    ids = [_letter(engine, control=f"DL-{n}") for n in range(3)]
    done = operator.submit("/console/dead-letters", "/console/dead-letters/replay", {"letter": ids[:2]})
    assert done.status_code == 303 and "replayed=2" in done.headers["location"]
    assert sorted(e.meta["replay_of"] for e in queued) == sorted(ids[:2])
    assert DeadLetterStore(engine).get(ids[2]).status == "open"  # type: ignore[union-attr]


def test_replay_all_matching_starts_a_job_to_watch(operator: ConsoleClient, engine: Engine) -> None:
    _letter(engine)
    started = operator.submit("/console/dead-letters", "/console/dead-letters/replay-matching", {"sender": "ADT|HOSP"})
    assert started.status_code == 303
    job_id = started.headers["location"].rsplit("/", 1)[1]
    job = JobStore(engine).get(job_id)
    assert job is not None and job.kind == "replay" and job.filter == {"sender": "ADT|HOSP"} and job.created_by == "ana"
    page = operator.get(started.headers["location"]).text
    assert 'id="job-status">running' in page and f'hx-get="/console/jobs/{job_id}/progress"' in page
    paused = operator.submit(started.headers["location"], f"/console/jobs/{job_id}/pause")
    assert paused.status_code == 303 and JobStore(engine).get(job_id).status == "paused"  # type: ignore[union-attr]
    cancelled = operator.submit(started.headers["location"], f"/console/jobs/{job_id}/cancel")
    assert cancelled.status_code == 303
    finished = operator.get(f"/console/jobs/{job_id}/progress").text
    assert "hx-get" not in finished  # a finished job stops refreshing
    assert job_id in operator.get("/console/jobs").text


def test_only_an_admin_discards(app: FastAPI, operator: ConsoleClient, engine: Engine) -> None:
    letter_id = _letter(engine)
    url = f"/console/dead-letters/{letter_id}"
    assert "Discard" not in operator.get(url).text
    refused = operator.submit(url, f"{url}/discard", {"reason": "test feed"})
    assert refused.status_code == 403 and DeadLetterStore(engine).get(letter_id).status == "open"  # type: ignore[union-attr]
    admin = ConsoleClient(app)
    admin.sign_in("a-token")
    assert admin.submit(url, f"{url}/discard", {"reason": ""}).status_code == 400
    done = admin.submit(url, f"{url}/discard", {"reason": "test feed"})
    assert done.status_code == 303
    letter = DeadLetterStore(engine).get(letter_id)
    assert letter is not None and letter.status == "discarded" and letter.handled_by == "bo"


def test_the_test_message_page_converts_without_storing(operator: ConsoleClient, engine: Engine) -> None:
    raw = adt("WB-1", "Doe", mrn="WB-MRN").decode().replace("\r", "\n") + "ZZZ|1|custom\n"
    answer = operator.submit("/console/test-message", "/console/test-message", {"raw": raw})
    assert answer.status_code == 200 and "Converts:" in answer.text
    assert "ZZZ" in re.search(r'id="unused-segments">(.*?)<', answer.text).group(1)  # type: ignore[union-attr]
    assert "&#34;resourceType&#34;: &#34;Bundle&#34;" in answer.text and "WB-MRN" in answer.text
    assert ResourceStore(engine).search("Patient", {"identifier": ["WB-MRN"]}) == []
    bad = operator.submit("/console/test-message", "/console/test-message", {"raw": "not hl7"})
    assert bad.status_code == 200 and "Does not convert" in bad.text
    pasted = adt("WB-2", SCRIPT).decode()
    shown = operator.submit("/console/test-message", "/console/test-message", {"raw": pasted})
    assert SCRIPT not in shown.text and "&lt;script&gt;" in shown.text


def test_sign_out_ends_the_session(operator: ConsoleClient) -> None:
    assert operator.submit("/console", "/console/logout").status_code == 303
    assert operator.get("/console").status_code == 303


def test_a_reprocess_job_from_the_jobs_page(operator: ConsoleClient, engine: Engine) -> None:
    started = operator.submit("/console/jobs", "/console/jobs/reprocess", {"sender": "ADT|HOSP", "since": "1d"})
    assert started.status_code == 303
    job = JobStore(engine).get(started.headers["location"].rsplit("/", 1)[1])
    assert job is not None and job.kind == "reprocess" and job.filter["sender"] == "ADT|HOSP"
    assert isinstance(job.filter["since"], int)
    bad = operator.submit("/console/jobs", "/console/jobs/reprocess", {"status": "open"})
    assert bad.status_code == 400 and "processed or failed" in bad.text


def test_patient_data_is_not_shown_when_its_read_cannot_be_audited(
    app: FastAPI, operator: ConsoleClient, processed: Envelope
) -> None:
    app.state.audit_trail.close()
    refused = operator.submit("/console/messages", "/console/messages", {"mrn": "MRN-7"})
    assert refused.status_code == 503 and "audit trail" in refused.text and processed.id not in refused.text
    assert refused.headers["content-type"].startswith("text/html")


_SIGNER = SessionSigner(b"s" * 32, TokenRegistry(parse_tokens("ana:o-token:operator")))
_COOKIE = _SIGNER.sign_in("o-token", now=0)[1]  # type: ignore[index]


@given(st.text(max_size=300))
def test_no_made_up_cookie_is_a_session(text: str) -> None:
    assert _SIGNER.session_of(text, now=1) is None


@given(st.integers(min_value=0, max_value=len(_COOKIE) - 1), st.characters(codec="ascii"))
def test_a_cookie_changed_anywhere_is_no_session(position: int, character: str) -> None:
    changed = _COOKIE[:position] + character + _COOKIE[position + 1 :]
    assert _SIGNER.session_of(changed, now=1) is None or changed == _COOKIE
