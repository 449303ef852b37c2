"""Bearer JWTs of the external authorization server (RFC 9068 access tokens, SMART on FHIR): the
signature against the server's published keys, then ``iss``, ``aud``, ``exp``, ``nbf`` and ``iat``;
then who the caller is (``sub``, else ``client_id``) and what its scopes give (docs/security.md).

PyJWT checks the claims; the algorithm is the header's only when it is one of HL7GW_OIDC_ALGORITHMS
(asymmetric, so never ``none`` nor an HMAC keyed with a public key) and fits the key's type.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.api.authorization_server import AuthorizationServer, SigningKey, UnknownKey
from gateway.api.smart_scopes import SmartAccess, smart_access
from gateway.config import ROLE_RANK, OidcSettings, Role

log = logging.getLogger(__name__)

#: Three base64url parts: what is tried as a JWT when it is not a static token.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
#: What a principal's name keeps of ``sub``: audit records and logs name the caller by it.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._@:|/+=-]")
_MAX_TOKEN_CHARS = 16_384
#: Names of JWT principals start with this; static token names cannot hold a ':', so the two never meet.
NAME_PREFIX = "oidc:"


class InvalidToken(Exception):
    """The JWT is not acceptable; the text says why, for the log (never the token or its claims)."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """Who a valid token names, and what it may do: a role from a role scope, or reader with its SMART scopes."""

    name: str
    #: None: the token is valid but its scopes give no role (403).
    role: Role | None
    #: None: the role's whole reach, as with a static token.
    access: SmartAccess | None


def looks_like_jwt(token: str) -> bool:
    return len(token) <= _MAX_TOKEN_CHARS and _JWT_SHAPE.fullmatch(token) is not None


class JwtVerifier:
    """Checks bearer JWTs of one authorization server."""

    def __init__(self, settings: OidcSettings, server: AuthorizationServer):
        self.settings = settings
        self.server = server

    def grant(self, token: str) -> TokenGrant:
        """The grant of a valid ``token``; raises InvalidToken, or KeysUnavailable when it cannot be checked now."""
        claims = self._claims(token)
        subject = claims.get("sub") or claims.get("client_id")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("neither sub nor client_id")
        scopes = _scopes(claims)
        role = _role(scopes, self.settings.role_scopes)
        access = None
        if role is None:
            patient = claims.get("patient")
            access = smart_access(scopes, patient if isinstance(patient, str) and patient else None)
            if access.grants_anything:
                role = Role.reader
            elif Role.metrics in (self.settings.role_scopes.get(scope) for scope in scopes):
                role, access = Role.metrics, None
        return TokenGrant(NAME_PREFIX + _NAME_UNSAFE.sub("_", subject)[:128], role, access)

    def _claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self.settings.algorithms:
            raise InvalidToken("algorithm not allowed")
        kid = header.get("kid")
        try:
            key = self.server.key(kid if isinstance(kid, str) else None)
        except UnknownKey:
            raise InvalidToken("unknown key id") from None
        if not _fits(algorithm, key):
            raise InvalidToken("the key is not for this algorithm")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("not yet valid (nbf or iat)") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.MissingRequiredClaimError:
            raise InvalidToken("a required claim is missing") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except (jwt.PyJWTError, TypeError, ValueError):
            raise InvalidToken("malformed") from None
        return claims


def _fits(algorithm: str, key: SigningKey) -> bool:
    """Whether ``key`` may sign with ``algorithm``: the one its JWK declares, else by its type (RSA keys
    RS*/PS*, EC keys ES* of their curve, OKP keys EdDSA)."""
    if key.alg is not None:
        return key.alg == algorithm
    if key.kty == "RSA":
        return algorithm.startswith(("RS", "PS"))
    if key.kty == "EC":
        return {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}.get(algorithm) == key.crv
    return key.kty == "OKP" and algorithm == "EdDSA"


def _scopes(claims: dict[str, Any]) -> list[str]:
    """``scope`` (a space-separated string, RFC 9068) or ``scp`` (a list, as some servers send)."""
    scope = claims.get("scope", claims.get("scp"))
    if isinstance(scope, str):
        return scope.split()
    if isinstance(scope, list):
        return [item for item in scope if isinstance(item, str)]
    return []


def _role(scopes: list[str], role_scopes: Any) -> Role | None:
    """The highest of reader, operator and admin that a role scope gives."""
    roles = [role_scopes[scope] for scope in scopes if role_scopes.get(scope) in ROLE_RANK]
    return max(roles, key=lambda role: ROLE_RANK[role]) if roles else None
