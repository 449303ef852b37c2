"""Bearer JWTs against a real authorization server on a local port: signature, claims, algorithms,
key rotation and the JWKS cache, and what scopes give."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.api.authorization_server import AuthorizationServer, KeysUnavailable
from gateway.api.bearer_jwt import InvalidToken, JwtVerifier, looks_like_jwt
from gateway.api.smart_scopes import Permission, Reach, smart_access
from gateway.config import OidcSettings, Role, load_settings
from gateway.errors import ConfigError
from tests.support.oidc_server import AUDIENCE, OidcServer, ec_key, rsa_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def idp() -> Iterator[OidcServer]:
    server = OidcServer([rsa_key("k1"), ec_key("k2")])
    yield server
    server.stop()


def settings_for(idp: OidcServer, **overrides: object) -> OidcSettings:
    settings = load_settings(oidc_issuer=idp.issuer, oidc_audience=AUDIENCE, **overrides).oidc
    assert settings is not None
    return settings


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(idp: OidcServer, clock: Clock) -> Iterator[JwtVerifier]:
    settings = settings_for(idp)
    server = AuthorizationServer(settings, clock=clock)
    yield JwtVerifier(settings, server)
    server.close()


def refused(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        verifier.grant(token)
    return str(caught.value)


def test_a_valid_rs256_or_es256_token_names_its_subject(idp: OidcServer, verifier: JwtVerifier) -> None:
    for key in idp.published:
        grant = verifier.grant(idp.token(key, scope="system/*.rs"))
        assert grant.name == "oidc:app-1"
        assert grant.role is Role.reader
        assert grant.access is not None and grant.access.unlimited
    assert idp.requests == {"/.well-known/openid-configuration": 1, "/jwks": 1}  # cached after the first


def test_client_id_names_a_token_without_sub(idp: OidcServer, verifier: JwtVerifier) -> None:
    assert verifier.grant(idp.token(sub=None, client_id="lab-app", scope="system/*.rs")).name == "oidc:lab-app"
    assert refused(verifier, idp.token(sub=None, scope="system/*.rs")) == "neither sub nor client_id"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"aud": "https://other.example.org/fhir"}, "wrong audience"),
        ({"iss": "https://evil.example.org"}, "wrong issuer"),
        ({"nbf": int(time.time()) + 600}, "not yet valid (nbf or iat)"),
        ({"iat": int(time.time()) + 600}, "not yet valid (nbf or iat)"),
        ({"exp": None}, "a required claim is missing"),
        ({"aud": None}, "a required claim is missing"),
    ],
)
def test_claims_are_checked(idp: OidcServer, verifier: JwtVerifier, claims: dict[str, object], reason: str) -> None:
    assert refused(verifier, idp.token(scope="system/*.rs", **claims)) == reason


def test_the_leeway_allows_a_little_clock_skew(idp: OidcServer, verifier: JwtVerifier) -> None:
    assert verifier.grant(idp.token(scope="system/*.rs", exp=int(time.time()) - 10)).role is Role.reader


def test_a_token_signed_by_another_key_with_a_published_kid_is_refused(idp: OidcServer, verifier: JwtVerifier) -> None:
    forged = rsa_key("k1", seed="forged")  # same kid, not the published key
    assert refused(verifier, idp.token(forged, scope="system/*.rs")) == "bad signature"


def test_a_changed_payload_breaks_the_signature(idp: OidcServer, verifier: JwtVerifier) -> None:
    header, _, signature = idp.token(scope="patient/*.rs", patient="p1").split(".")
    claims = {"iss": idp.issuer, "aud": AUDIENCE, "sub": "x", "iat": int(time.time()), "exp": int(time.time()) + 60}
    payload = base64.urlsafe_b64encode(json.dumps({**claims, "scope": "hl7gw/admin"}).encode()).rstrip(b"=")
    assert refused(verifier, f"{header}.{payload.decode()}.{signature}") == "bad signature"


def _unsigned(header: dict[str, object], claims: dict[str, object]) -> str:
    parts = [base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode() for part in (header, claims)]
    return ".".join(parts) + "."


def test_alg_none_is_refused(idp: OidcServer, verifier: JwtVerifier) -> None:
    claims = {"iss": idp.issuer, "aud": AUDIENCE, "sub": "x", "iat": int(time.time()), "exp": int(time.time()) + 60}
    token = _unsigned({"alg": "none", "kid": "k1", "typ": "JWT"}, {**claims, "scope": "hl7gw/admin"})
    assert looks_like_jwt(token)
    assert refused(verifier, token) == "algorithm not allowed"


def test_hs256_keyed_with_the_public_key_is_refused(idp: OidcServer, verifier: JwtVerifier) -> None:
    public = (
        idp.published[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    claims = {"iss": idp.issuer, "aud": AUDIENCE, "sub": "x", "iat": int(time.time()), "exp": int(time.time()) + 60}
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":"k1","typ":"JWT"}').rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps({**claims, "scope": "hl7gw/admin"}).encode()).rstrip(b"=")
    signing_input = header + b"." + payload
    signature = base64.urlsafe_b64encode(hmac.new(public, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    assert refused(verifier, (signing_input + b"." + signature).decode()) == "algorithm not allowed"


def test_an_allowed_algorithm_that_does_not_fit_the_key_is_refused(idp: OidcServer, clock: Clock) -> None:
    settings = settings_for(idp, oidc_algorithms="RS256,ES256,PS256")
    verifier = JwtVerifier(settings, AuthorizationServer(settings, clock=clock))
    rsa = idp.published[0]
    token = jwt.encode(
        {"iss": idp.issuer, "aud": AUDIENCE, "sub": "x", "iat": int(time.time()), "exp": int(time.time()) + 60},
        rsa.private,
        algorithm="PS256",
        headers={"kid": rsa.kid},
    )
    assert refused(verifier, token) == "the key is not for this algorithm"  # the JWK says RS256


def test_an_unknown_kid_refetches_once_and_a_flood_does_not_hammer_the_server(
    idp: OidcServer, verifier: JwtVerifier, clock: Clock
) -> None:
    assert verifier.grant(idp.token(scope="system/*.rs")).role is Role.reader
    assert idp.jwks_fetches() == 1
    stranger = rsa_key("not-published", seed="forged")
    clock.now += 60  # past HL7GW_OIDC_JWKS_REFETCH_S (30 s) since the first fetch
    for _ in range(50):
        assert refused(verifier, idp.token(stranger, scope="system/*.rs")) == "unknown key id"
    assert idp.jwks_fetches() == 2  # one refetch for the first unknown kid, none for the other 49


def test_a_rotated_key_is_picked_up_by_the_refetch(idp: OidcServer, verifier: JwtVerifier, clock: Clock) -> None:
    assert verifier.grant(idp.token(scope="system/*.rs")).role is Role.reader
    new = rsa_key("k3", seed="forged")
    idp.published = [new]  # the server rotates: k1 and k2 are gone
    clock.now += 31
    assert verifier.grant(idp.token(new, scope="system/*.rs")).role is Role.reader
    assert idp.jwks_fetches() == 2
    clock.now += 301  # the cache expires: k1 is no longer trusted
    assert refused(verifier, idp.token(rsa_key("k1"), scope="system/*.rs")) == "unknown key id"


def test_cached_keys_outlive_the_server_and_none_cached_is_keys_unavailable(idp: OidcServer, clock: Clock) -> None:
    settings = settings_for(idp)
    server = AuthorizationServer(settings, clock=clock)
    verifier = JwtVerifier(settings, server)
    token = idp.token(scope="system/*.rs")
    assert verifier.grant(token).role is Role.reader
    idp.stop()
    clock.now += 400  # past the cache's 300 s: the refresh fails, the keys fetched before stay in use
    assert verifier.grant(token).role is Role.reader
    cold = AuthorizationServer(settings, clock=clock)
    with pytest.raises(KeysUnavailable):
        JwtVerifier(settings, cold).grant(token)


def test_the_jwks_url_setting_overrides_discovery(idp: OidcServer, clock: Clock) -> None:
    settings = settings_for(idp, oidc_jwks_url=f"{idp.issuer}/jwks")
    verifier = JwtVerifier(settings, AuthorizationServer(settings, clock=clock))
    assert verifier.grant(idp.token(scope="system/*.rs")).role is Role.reader
    assert idp.requests == {"/jwks": 1}


def test_a_discovery_document_of_another_issuer_is_not_used(idp: OidcServer, clock: Clock) -> None:
    idp.discovery_extra = {"issuer": "https://evil.example.org"}
    settings = settings_for(idp)
    with pytest.raises(KeysUnavailable):
        JwtVerifier(settings, AuthorizationServer(settings, clock=clock)).grant(idp.token(scope="system/*.rs"))


@pytest.mark.parametrize(
    ("scope", "role", "restricted"),
    [
        ("hl7gw/admin patient/*.rs", Role.admin, False),
        ("hl7gw/operator hl7gw/reader", Role.operator, False),
        ("hl7gw/reader", Role.reader, False),
        ("user/*.rs", Role.reader, True),
        ("patient/Observation.read", Role.reader, True),
        ("hl7gw/metrics", Role.metrics, False),
        ("openid patient/*.cud", None, False),
        ("patient/Observation.rs?category=laboratory", None, False),
    ],
)
def test_scopes_give_roles(
    idp: OidcServer, verifier: JwtVerifier, scope: str, role: Role | None, restricted: bool
) -> None:
    grant = verifier.grant(idp.token(scope=scope))
    assert grant.role is role
    assert (grant.access is not None and grant.access.grants_anything) is restricted


def test_scp_lists_are_scopes_too(idp: OidcServer, verifier: JwtVerifier) -> None:
    assert verifier.grant(idp.token(scp=["hl7gw/operator"])).role is Role.operator


def test_smart_scopes_reach() -> None:
    access = smart_access(["patient/*.rs", "user/Practitioner.r", "system/Observation.s", "launch/patient"], "p1")
    assert access.reach("Condition", Permission.read) is Reach.compartment
    assert access.reach("Observation", Permission.search) is Reach.everywhere
    assert access.reach("Practitioner", Permission.read) is Reach.everywhere
    assert access.reach("Practitioner", Permission.search) is Reach.compartment
    assert not access.unlimited
    narrow = smart_access(["patient/Observation.r"], "p1")
    assert narrow.reach("Observation", Permission.search) is Reach.nowhere
    assert narrow.reach("Condition", Permission.read) is Reach.nowhere
    assert smart_access(["system/*.read"], None).unlimited


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"oidc_issuer": "http://idp.example.org"}, "https://"),
        ({"oidc_issuer": "https://idp.example.org"}, "HL7GW_OIDC_AUDIENCE"),
        ({"oidc_issuer": "https://idp.example.org", "oidc_audience": "x", "oidc_algorithms": "HS256"}, "never none"),
        ({"oidc_issuer": "https://idp.example.org", "oidc_audience": "x", "oidc_algorithms": "none"}, "never none"),
        ({"oidc_issuer": "https://idp.example.org", "oidc_audience": "x", "oidc_role_scopes": "a=root"}, "scope="),
        ({"oidc_audience": "https://fhir.example.org/fhir"}, "need HL7GW_OIDC_ISSUER"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(**settings)


def test_the_audience_defaults_to_the_public_fhir_base() -> None:
    oidc = load_settings(oidc_issuer="https://idp.example.org", public_base_url="https://gw.example.org/").oidc
    assert oidc is not None and oidc.audience == "https://gw.example.org/fhir"
    assert oidc.algorithms == ("RS256", "ES256")
    assert load_settings().oidc is None
