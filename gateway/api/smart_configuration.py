"""SMART on FHIR discovery (smart-app-launch conformance.html): ``/.well-known/smart-configuration``
at the root and under the FHIR base (/fhir), made from the authorization server's discovery document,
and the ``rest.security`` of the CapabilityStatement. 404 when no HL7GW_OIDC_ISSUER is set; 503 while
the server's discovery document cannot be fetched (never cached as empty).

Capabilities claimed are those that hold: the scopes ``smart_scopes`` honours, and the client
authentication methods and OpenID Connect support the authorization server itself publishes.
Launches (EHR or standalone) and launch context are the authorization server's and an EHR's: the
gateway claims none.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.api.authorization_server import AuthorizationServer
from gateway.api.outcome import FHIRError

router = APIRouter(tags=["smart"])

#: The SMART scopes ``smart_scopes`` honours (reads and searches), v2 and v1.
HONOURED_SCOPES = ("patient/*.rs", "user/*.rs", "system/*.rs", "patient/*.read", "user/*.read", "system/*.read")
#: Scopes of the authorization server that are listed when it lists them.
_SERVER_SCOPES = ("openid", "fhirUser", "profile", "offline_access", "online_access", "launch/patient")
#: Passed on as the server publishes them.
_PASSED_ON = (
    "authorization_endpoint",
    "token_endpoint",
    "token_endpoint_auth_methods_supported",
    "registration_endpoint",
    "introspection_endpoint",
    "revocation_endpoint",
    "management_endpoint",
    "grant_types_supported",
    "response_types_supported",
)
_SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@router.get("/.well-known/smart-configuration")
@router.get("/fhir/.well-known/smart-configuration")
def smart_configuration(request: Request) -> JSONResponse:
    """The SMART configuration; needs no token (clients read it before they have one)."""
    server: AuthorizationServer | None = request.app.state.authorization_server
    if server is None:
        raise FHIRError(404, "no authorization server is configured (HL7GW_OIDC_ISSUER)")
    discovery = server.discovery()
    if discovery is None:
        raise FHIRError(503, "the authorization server's discovery document cannot be fetched now", "transient")
    return JSONResponse(smart_document(server, discovery), headers={"Cache-Control": "max-age=300"})


def smart_document(server: AuthorizationServer, discovery: dict[str, Any]) -> dict[str, Any]:
    settings = server.settings
    document: dict[str, Any] = {"issuer": settings.issuer, "jwks_uri": settings.jwks_url or discovery.get("jwks_uri")}
    document.update({name: discovery.get(name) for name in _PASSED_ON})
    listed = _strings(discovery.get("scopes_supported"))
    document["scopes_supported"] = [
        *(scope for scope in _SERVER_SCOPES if scope in listed),
        *HONOURED_SCOPES,
        *settings.role_scopes,
    ]
    document["capabilities"] = _capabilities(discovery)
    document["code_challenge_methods_supported"] = [
        method for method in _strings(discovery.get("code_challenge_methods_supported")) if method == "S256"
    ]
    return {name: value for name, value in document.items() if value not in (None, [], "")}


def security_extension(server: AuthorizationServer | None) -> dict[str, Any] | None:
    """``CapabilityStatement.rest.security``'s SMART part: the service coding and, while the discovery
    document can be had, the oauth-uris extension; None without an authorization server."""
    if server is None:
        return None
    security: dict[str, Any] = {
        "service": [{"coding": [{"system": _SECURITY_SERVICE, "code": "SMART-on-FHIR"}], "text": "SMART on FHIR"}]
    }
    discovery = server.discovery()
    if discovery is not None:
        uris = {"token": "token_endpoint", "authorize": "authorization_endpoint"}
        uris |= {"register": "registration_endpoint", "manage": "management_endpoint"}
        uris |= {"introspect": "introspection_endpoint", "revoke": "revocation_endpoint"}
        parts = [
            {"url": name, "valueUri": discovery[key]}
            for name, key in uris.items()
            if isinstance(discovery.get(key), str) and discovery[key]
        ]
        if parts:
            security["extension"] = [{"url": _OAUTH_URIS, "extension": parts}]
    return security


def _capabilities(discovery: dict[str, Any]) -> list[str]:
    methods = _strings(discovery.get("token_endpoint_auth_methods_supported"))
    found = ["permission-v1", "permission-v2", "permission-patient", "permission-user"]
    if "private_key_jwt" in methods:
        found.append("client-confidential-asymmetric")
    if {"client_secret_basic", "client_secret_post"} & set(methods):
        found.append("client-confidential-symmetric")
    if "none" in methods:
        found.append("client-public")
    if "openid" in _strings(discovery.get("scopes_supported")):
        found.append("sso-openid-connect")
    return found


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []
