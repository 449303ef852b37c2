"""Bearer tokens, roles, and the admin token file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI

from gateway.api.app import create_app
from gateway.api.auth import Principal, TokenRegistry, ensure_admin_token, require_role
from gateway.config import ApiToken, Role, legacy_token_name, load_settings
from gateway.errors import ConfigError
from tests.support.asgi_client import AsgiClient

TOKENS = "r-token:reader,o-token:operator,a-token:admin,alice:alice-token:operator,root:a:dmin:admin"


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    app = create_app(load_settings(data_dir=tmp_path, api_tokens=TOKENS))

    def operator_only(principal: Principal = Depends(require_role(Role.operator))) -> dict[str, str]:
        return {"role": principal.role.value, "name": principal.name}

    app.add_api_route("/operator-only", operator_only)
    return app


def outcome_code(body: dict) -> str:
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0]["code"])


def test_a_missing_token_is_401_with_a_bearer_challenge(app: FastAPI) -> None:
    response = AsgiClient(app).get("/fhir/Patient/p1")

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/fhir+json"
    assert outcome_code(response.json()) == "login"


@pytest.mark.parametrize(
    "header", ["Bearer wrong-token", "Bearer r-token-and-more", "Bearer R-TOKEN", "Basic ci10b2tlbjp4", "r-token"]
)
def test_a_wrong_token_is_401(app: FastAPI, header: str) -> None:
    response = AsgiClient(app).get("/fhir/Patient", headers={"Authorization": header})

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert outcome_code(response.json()) == "login"


def test_unknown_resource_types_are_not_revealed_before_auth(app: FastAPI) -> None:
    assert AsgiClient(app).get("/fhir/Spaceship").status_code == 401


@pytest.mark.parametrize("token", ["r-token", "o-token", "a-token"])
def test_every_role_may_read(app: FastAPI, token: str) -> None:
    assert AsgiClient(app, token).get("/fhir/Patient").status_code == 200


@pytest.mark.parametrize(("token", "status"), [("r-token", 403), ("o-token", 200), ("a-token", 200)])
def test_require_role_ranks_roles(app: FastAPI, token: str, status: int) -> None:
    response = AsgiClient(app, token).get("/operator-only")

    assert response.status_code == status
    if status == 403:
        assert outcome_code(response.json()) == "forbidden"
        assert "needs the operator role" in response.json()["issue"][0]["diagnostics"]
    else:
        assert response.json()["role"] in ("operator", "admin")


@pytest.mark.parametrize(
    ("token", "name", "role"),
    [
        ("alice-token", "alice", "operator"),
        ("a:dmin", "root", "admin"),  # a named token may contain ':'
        ("o-token", legacy_token_name("o-token"), "operator"),  # token:role: named by a digest
    ],
)
def test_the_principal_carries_the_tokens_name(app: FastAPI, token: str, name: str, role: str) -> None:
    response = AsgiClient(app, token).get("/operator-only")

    assert response.status_code == 200
    assert response.json() == {"role": role, "name": name}
    assert token not in response.json()["name"]


def test_a_named_token_with_too_low_a_role_is_403_and_without_a_token_401(tmp_path: Path) -> None:
    app = create_app(load_settings(data_dir=tmp_path, api_tokens="viewer:v-token:reader"))

    def operator_only(principal: Principal = Depends(require_role(Role.operator))) -> dict[str, str]:
        return {"name": principal.name}

    app.add_api_route("/operator-only", operator_only)

    assert AsgiClient(app, "v-token").get("/fhir/Patient").status_code == 200
    forbidden = AsgiClient(app, "v-token").get("/operator-only")
    assert forbidden.status_code == 403
    assert outcome_code(forbidden.json()) == "forbidden"
    assert AsgiClient(app).get("/operator-only").status_code == 401
    assert AsgiClient(app, "viewer").get("/operator-only").status_code == 401  # the name is not a token


def test_metadata_and_health_need_no_token(app: FastAPI) -> None:
    client = AsgiClient(app)
    assert client.get("/fhir/metadata").status_code == 200
    assert client.get("/health").status_code == 200


def test_ensure_admin_token_creates_a_private_file_once(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")

    path = ensure_admin_token(settings)

    assert path == settings.storage.admin_token_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 40
    assert ensure_admin_token(settings) == path
    assert path.read_text().strip() == token  # an existing file is kept
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_ensure_admin_token_does_nothing_when_tokens_are_configured(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, api_tokens=TOKENS)

    assert ensure_admin_token(settings) is None
    assert not settings.storage.admin_token_file.exists()


def test_the_admin_token_file_grants_admin(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    app = create_app(settings)  # creates the token file
    token = settings.storage.admin_token_file.read_text().strip()

    def admin_only(principal: Principal = Depends(require_role(Role.admin))) -> dict[str, str]:
        return {"role": principal.role.value, "name": principal.name}

    app.add_api_route("/admin-only", admin_only)

    assert AsgiClient(app, token).get("/admin-only").json() == {"role": "admin", "name": "admin-token-file"}
    assert AsgiClient(app, "not-" + token).get("/admin-only").status_code == 401


def test_an_empty_token_file_fails_loudly(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    settings.storage.admin_token_file.write_text("\n")

    with pytest.raises(ConfigError, match="is empty"):
        TokenRegistry.from_settings(settings)


def test_token_registry_lookup() -> None:
    registry = TokenRegistry([ApiToken("ann", "a", Role.reader), ApiToken("bob", "b", Role.admin)])

    assert registry.role_of("a") == Role.reader
    assert registry.role_of("b") == Role.admin
    assert registry.principal_of("b") == Principal(Role.admin, "bob")
    assert registry.principal_of("bob") is None
    assert registry.role_of("c") is None
    assert registry.role_of("") is None
    assert registry.role_of("é") is None  # non-ASCII input is compared as bytes, not rejected
