"""Bearer-token authentication with roles reader < operator < admin, and ``metrics``, which may read
/metrics only (RFC 6750): static tokens (HL7GW_API_TOKENS, the admin token file), and, when
HL7GW_OIDC_ISSUER is set, JWTs of that authorization server (``bearer_jwt``; docs/security.md)."""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.authorization_server import KeysUnavailable
from gateway.api.bearer_jwt import InvalidToken, JwtVerifier, looks_like_jwt
from gateway.api.outcome import FHIRError
from gateway.api.smart_scopes import SmartAccess
from gateway.config import ADMIN_TOKEN_FILE_NAME, METRICS_ROLES, ROLE_RANK, ApiToken, Role, Settings, parse_tokens
from gateway.errors import ConfigError
from gateway.filemodes import create_secret_file

log = logging.getLogger(__name__)

#: FHIR types only an admin may read, search or see included: who did what to which message.
ADMIN_ONLY_TYPES = frozenset({"AuditEvent"})

_bearer = HTTPBearer(
    auto_error=False,
    description="A token from HL7GW_API_TOKENS or the admin token file, or a JWT of HL7GW_OIDC_ISSUER",
)
#: How long a client is asked to wait when the authorization server's keys cannot be fetched.
_KEYS_RETRY_AFTER_S = 5


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the role and the name of the token presented (never the token itself)."""

    role: Role
    #: The token's name from HL7GW_API_TOKENS, a digest for a ``token:role`` entry,
    #: ``admin-token-file``, or ``oidc:`` and a JWT's ``sub``: what audit records and logs call the caller.
    name: str
    #: What a JWT's SMART scopes allow (gateway/api/smart_scopes.py); None: all the role may do.
    access: SmartAccess | None = None


class TokenRegistry:
    """Known tokens, their names and roles; lookups compare every token in constant time."""

    def __init__(self, tokens: list[ApiToken]):
        self._tokens = [(entry.token.encode(), Principal(entry.role, entry.name)) for entry in tokens]

    def __len__(self) -> int:
        return len(self._tokens)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenRegistry:
        """Tokens from HL7GW_API_TOKENS, or else the one admin token in the admin token file."""
        if settings.api.tokens:
            tokens = parse_tokens(settings.api.tokens)
            if not tokens:
                raise ConfigError("HL7GW_API_TOKENS holds no name:token:role entry")
            return cls(tokens)
        path = settings.storage.admin_token_file
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            log.warning("no API tokens configured and no admin token file at %s: every request is refused", path)
            return cls([])
        except OSError as exc:
            raise ConfigError(f"cannot read admin token file {path}: {exc}") from None
        if not token:
            raise ConfigError(f"admin token file {path} is empty")
        return cls([ApiToken(ADMIN_TOKEN_FILE_NAME, token, Role.admin)])

    def principal_of(self, token: str) -> Principal | None:
        """The role and name of ``token``, or None when it is not known."""
        presented = token.encode()
        found = None
        for known, principal in self._tokens:  # no early exit: timing does not tell which token matched
            if hmac.compare_digest(presented, known):
                found = principal
        return found

    def principal_named(self, name: str) -> Principal | None:
        """The principal of the token called ``name`` (a console session names its token, never holds it)."""
        return next((principal for _, principal in self._tokens if principal.name == name), None)

    def role_of(self, token: str) -> Role | None:
        principal = self.principal_of(token)
        return principal.role if principal else None


def ensure_admin_token(settings: Settings) -> Path | None:
    """Create the admin token file (mode 0600) when no tokens are configured; return its path.

    Returns None when HL7GW_API_TOKENS is set. An existing file is left as it is.
    """
    if settings.api.tokens:
        return None
    path = settings.storage.admin_token_file
    if path.exists():
        return path
    create_secret_file(path, secrets.token_urlsafe(32))
    log.info("created admin API token in %s", path)
    return path


def _authenticated(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    if credentials is None:
        raise FHIRError(401, "a bearer token is required", "login", {"WWW-Authenticate": "Bearer"})
    registry: TokenRegistry = request.app.state.tokens
    token = credentials.credentials
    principal = registry.principal_of(token)
    verifier: JwtVerifier | None = request.app.state.jwt_verifier
    if principal is None and verifier is not None and looks_like_jwt(token):
        principal = _jwt_principal(verifier, token)
    if principal is None:
        challenge = 'Bearer error="invalid_token"'
        raise FHIRError(401, "the bearer token is not valid", "login", {"WWW-Authenticate": challenge})
    request.state.principal = principal  # who a 403 refused, for the audit trail (api/access_audit.py)
    return principal


def _jwt_principal(verifier: JwtVerifier, token: str) -> Principal | None:
    """The principal of a valid JWT; None when it is not valid (the reason is logged, the token never).
    503 when its signature cannot be checked now; 403 when it is valid but its scopes give nothing."""
    try:
        grant = verifier.grant(token)
    except InvalidToken as exc:
        log.info("bearer JWT refused: %s", exc)
        return None
    except KeysUnavailable:
        raise FHIRError(
            503,
            "the authorization server's signing keys cannot be fetched now; try again later",
            "transient",
            {"Retry-After": str(_KEYS_RETRY_AFTER_S)},
        ) from None
    if grant.role is None:
        challenge = 'Bearer error="insufficient_scope"'
        raise FHIRError(
            403, "the token's scopes give no access to this server", "forbidden", {"WWW-Authenticate": challenge}
        )
    return Principal(grant.role, grant.name, grant.access)


def require_role(minimum: Role) -> Callable[..., Principal]:
    """A FastAPI dependency admitting a bearer token whose role ranks at least ``minimum``."""

    def dependency(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
        principal = _authenticated(request, credentials)
        check_role(principal, minimum)
        return principal

    return dependency


def require_metrics_reader(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Principal:
    """A FastAPI dependency admitting the ``metrics`` and ``admin`` roles (GET /metrics)."""
    principal = _authenticated(request, credentials)
    if principal.role not in METRICS_ROLES:
        raise FHIRError(403, f"this needs the metrics role; the token has {principal.role.value}", "forbidden")
    return principal


def check_role(principal: Principal, minimum: Role) -> None:
    """Raise 403 unless ``principal``'s role ranks at least ``minimum`` (for checks a route makes
    itself); a role outside the rank (``metrics``) ranks below every one in it."""
    if ROLE_RANK.get(principal.role, -1) < ROLE_RANK[minimum]:
        raise FHIRError(403, f"this needs the {minimum.value} role; the token has {principal.role.value}", "forbidden")
