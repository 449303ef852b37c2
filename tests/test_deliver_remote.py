"""RemoteSink: what goes over the wire, and which failures may pass on retry (faults injected with MockTransport)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable

import httpx
import orjson
import pytest

from gateway.deliver.remote import RemoteRejected, RemoteSink, RemoteUnavailable, retry_after_seconds
from gateway.errors import is_retryable, stage_of
from gateway.services.embedded_redis import free_port
from gateway.sinkspec import SinkSpec
from tests.support.fhir_bundles import delete, patient, put, transaction

BUNDLE = transaction(put(patient("p1", "M1")), delete("Observation", "o9"))
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad"}],
}


def sink(
    handler: Callable[[httpx.Request], httpx.Response], mode: str = "transaction"
) -> tuple[RemoteSink, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    spec = SinkSpec("hapi", "http://fhir.test/base", mode, "Bearer t0ken", 5.0)  # type: ignore[arg-type]
    return RemoteSink(spec, transport=httpx.MockTransport(record)), seen


def test_transaction_mode_posts_the_bundle_to_the_base() -> None:
    remote, seen = sink(lambda r: httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response"}))

    remote.send(BUNDLE)

    (request,) = seen
    assert (request.method, str(request.url)) == ("POST", "http://fhir.test/base/")
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers["content-type"] == "application/fhir+json"
    assert orjson.loads(request.content) == BUNDLE


def test_put_mode_sends_each_entry_in_order_and_a_missing_delete_is_done() -> None:
    remote, seen = sink(lambda r: httpx.Response(404 if r.method == "DELETE" else 200, json={}), mode="put")

    remote.send(BUNDLE)

    assert [(r.method, str(r.url)) for r in seen] == [
        ("PUT", "http://fhir.test/base/Patient/p1"),
        ("DELETE", "http://fhir.test/base/Observation/o9"),
    ]
    assert orjson.loads(seen[0].content) == patient("p1", "M1")
    assert seen[1].content == b""


def test_429_is_retryable_with_the_servers_retry_after() -> None:
    remote, _ = sink(lambda r: httpx.Response(429, headers={"Retry-After": "7"}, json=OUTCOME))

    with pytest.raises(RemoteUnavailable) as caught:
        remote.send(BUNDLE)

    assert caught.value.retry_after == 7.0
    assert is_retryable(caught.value) and stage_of(caught.value) == "deliver:hapi"
    assert "HTTP 429" in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_retryable(status: int) -> None:
    remote, _ = sink(lambda r: httpx.Response(status, text="upstream trouble"))
    with pytest.raises(RemoteUnavailable, match=f"HTTP {status}: upstream trouble") as caught:
        remote.send(BUNDLE)
    assert caught.value.retry_after is None


def test_a_timeout_is_retryable() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    remote, _ = sink(hang)
    with pytest.raises(RemoteUnavailable, match="timed out"):
        remote.send(BUNDLE)


def test_a_refused_connection_is_retryable() -> None:
    spec = SinkSpec("down", f"http://127.0.0.1:{free_port()}/fhir", timeout=2.0)
    remote = RemoteSink(spec)
    try:
        with pytest.raises(RemoteUnavailable, match="POST http://127.0.0.1") as caught:
            remote.send(BUNDLE)
    finally:
        remote.close()
    assert caught.value.stage == "deliver:down"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 412, 422])
def test_a_4xx_is_permanent_and_keeps_the_operation_outcome(status: int) -> None:
    remote, _ = sink(lambda r: httpx.Response(status, json=OUTCOME))

    with pytest.raises(RemoteRejected) as caught:
        remote.send(BUNDLE)

    assert not is_retryable(caught.value)
    assert caught.value.status == status and caught.value.outcome == OUTCOME
    assert '"diagnostics":"bad"' in str(caught.value)


def test_a_4xx_without_an_outcome_keeps_the_body_text() -> None:
    remote, _ = sink(lambda r: httpx.Response(400, text="<html>nope</html>"))
    with pytest.raises(RemoteRejected, match="HTTP 400: <html>nope</html>") as caught:
        remote.send(BUNDLE)
    assert caught.value.outcome is None


def test_retry_after_forms() -> None:
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds("120") == 120.0
    assert 28 <= (retry_after_seconds(date, now) or 0) <= 31
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    for bad in (None, "", "soon", "-5"):
        assert retry_after_seconds(bad) is None
