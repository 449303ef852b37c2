"""/fhir/Subscription: operators create, read, search, replace and delete; bad ones are 400s."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.subscription import Subscription

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.store.audit import OPERATOR_ACTION_SYSTEM
from tests.support.asgi_client import AsgiClient
from tests.support.subscriptions import subscription

ENDPOINT = "https://subscriber.example/notify"


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return create_app(load_settings(data_dir=tmp_path, api_tokens="r:reader-token:reader,o:operator-token:operator"))


@pytest.fixture
def client(app: FastAPI) -> AsgiClient:
    return AsgiClient(app, token="operator-token")


def test_an_operator_creates_reads_and_finds_a_subscription(client: AsgiClient) -> None:
    body = subscription(ENDPOINT, headers=["Authorization: Bearer s3cr3t"])
    body["id"] = "ignored"
    created = client.request("POST", "/fhir/Subscription", json=body)

    assert created.status_code == 201, created.text
    resource = created.json()
    Subscription.model_validate(resource)
    assert resource["id"] != "ignored"
    assert resource["status"] == "requested"
    assert resource["meta"]["versionId"] == "1"
    assert created.headers["Location"].endswith(f"/fhir/Subscription/{resource['id']}/_history/1")
    assert created.headers["ETag"] == 'W/"1"'

    read = client.get(f"/fhir/Subscription/{resource['id']}")
    assert read.status_code == 200
    assert read.json()["channel"]["header"] == ["Authorization: Bearer s3cr3t"]

    found = client.get("/fhir/Subscription", params={"status": "requested"}).json()
    Bundle.model_validate(found)
    assert [entry["resource"]["id"] for entry in found["entry"]] == [resource["id"]]
    assert client.get("/fhir/Subscription", params={"status": "active"}).json()["total"] == 0


def test_put_creates_then_updates_and_off_turns_it_off(app: FastAPI, client: AsgiClient) -> None:
    first = client.request("PUT", "/fhir/Subscription/glucose", json=subscription(ENDPOINT))
    assert first.status_code == 201
    second = client.request("PUT", "/fhir/Subscription/glucose", json=subscription(ENDPOINT, status="off"))
    assert second.status_code == 200
    assert second.json()["status"] == "off"
    assert second.json()["meta"]["versionId"] == "2"
    again = client.request("PUT", "/fhir/Subscription/glucose", json=subscription(ENDPOINT, status="active"))
    assert again.json()["status"] == "requested"  # the gateway makes it active, not the client

    assert client.request("DELETE", "/fhir/Subscription/glucose").status_code == 204
    assert client.get("/fhir/Subscription/glucose").status_code == 404
    assert client.request("DELETE", "/fhir/Subscription/glucose").status_code == 204

    # who did it is an operator action in the audit trail: three writes, one delete (not the second)
    found = app.state.store.search("AuditEvent", {"subtype": [f"{OPERATOR_ACTION_SYSTEM}|"], "_count": ["100"]})
    kinds = sorted(e["subtype"][0]["code"] for e in found)
    assert kinds == ["subscription-create", "subscription-delete", "subscription-update", "subscription-update"]
    assert {e["agent"][0]["name"] for e in found} == {"o"}


def test_readers_may_not_see_subscriptions(client: AsgiClient) -> None:
    client.request("PUT", "/fhir/Subscription/s1", json=subscription(ENDPOINT, headers=["X-Key: secret"]))
    for method, url in [
        ("GET", "/fhir/Subscription/s1"),
        ("GET", "/fhir/Subscription"),
        ("DELETE", "/fhir/Subscription/s1"),
    ]:
        response = client.request(method, url, token="reader-token")
        assert response.status_code == 403, url
        assert "secret" not in response.text
    response = client.request("POST", "/fhir/Subscription", json=subscription(ENDPOINT), token="reader-token")
    assert response.status_code == 403
    assert client.request("GET", "/fhir/Subscription/s1", token="").status_code == 401


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: s.update(criteria="Observation?bogus=1"), "unknown search parameter 'bogus'"),
        (lambda s: s.update(criteria="Nothing?x=1"), "resource type"),
        (lambda s: s.update(criteria="AuditEvent"), "cannot be subscribed"),
        (lambda s: s["channel"].update(type="websocket"), "rest-hook"),
        (lambda s: s["channel"].update(endpoint="ftp://x"), "http"),
        (lambda s: s["channel"].update(payload="application/xml"), "payload"),
        (lambda s: s["channel"].update(header=["no colon"]), "Name: value"),
        (lambda s: s["channel"].update(header=["Content-Type: text/plain"]), "set by the gateway"),
        (lambda s: s.update(status="sideways"), "status"),
        (lambda s: s.pop("reason"), "reason"),
        (lambda s: s.update(resourceType="Patient"), "Subscription resource"),
    ],
)
def test_a_bad_subscription_is_a_400_operation_outcome(client: AsgiClient, change, words: str) -> None:  # type: ignore[no-untyped-def]
    body = subscription(ENDPOINT)
    change(body)
    response = client.request("POST", "/fhir/Subscription", json=body)

    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert words in outcome["issue"][0]["diagnostics"]
    assert client.get("/fhir/Subscription").json()["total"] == 0


def test_bad_json_and_ids_are_400s(client: AsgiClient) -> None:
    assert client.request("POST", "/fhir/Subscription", content=b"{nope").status_code == 400
    assert client.request("PUT", "/fhir/Subscription/bad$id", json=subscription(ENDPOINT)).status_code == 400
    body = subscription(ENDPOINT)
    body["id"] = "other"
    assert client.request("PUT", "/fhir/Subscription/this", json=body).status_code == 400


def test_the_capability_statement_lists_subscription(client: AsgiClient) -> None:
    statement = client.get("/fhir/metadata").json()
    (subscription_entry,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription"]
    codes = {i["code"] for i in subscription_entry["interaction"]}
    assert codes == {"create", "read", "update", "delete", "search-type"}
