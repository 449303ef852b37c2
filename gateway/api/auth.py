"""Bearer-token authentication with roles reader < operator < admin (RFC 6750)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.outcome import FHIRError
from gateway.config import ROLE_RANK, Role, Settings, parse_tokens
from gateway.errors import ConfigError

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="A token from HL7GW_API_TOKENS or the admin token file")


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    #: A short digest of the token, to tell callers apart in logs without revealing the token.
    token_hint: str


class TokenRegistry:
    """Known tokens and their roles; lookups compare every token in constant time."""

    def __init__(self, tokens: dict[str, Role]):
        self._tokens = [(token.encode(), role) for token, role in tokens.items()]

    def __len__(self) -> int:
        return len(self._tokens)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenRegistry:
        """Tokens from HL7GW_API_TOKENS, or else the one admin token in the admin token file."""
        if settings.api.tokens:
            tokens = parse_tokens(settings.api.tokens)
            if not tokens:
                raise ConfigError("HL7GW_API_TOKENS holds no token:role entry")
            return cls(tokens)
        path = settings.storage.admin_token_file
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            log.warning("no API tokens configured and no admin token file at %s: every request is refused", path)
            return cls({})
        except OSError as exc:
            raise ConfigError(f"cannot read admin token file {path}: {exc}") from None
        if not token:
            raise ConfigError(f"admin token file {path} is empty")
        return cls({token: Role.admin})

    def role_of(self, token: str) -> Role | None:
        presented = token.encode()
        found = None
        for known, role in self._tokens:  # no early exit: timing does not tell which token matched
            if hmac.compare_digest(presented, known):
                found = role
        return found


def ensure_admin_token(settings: Settings) -> Path | None:
    """Create the admin token file (mode 0600) when no tokens are configured; return its path.

    Returns None when HL7GW_API_TOKENS is set. An existing file is left as it is.
    """
    if settings.api.tokens:
        return None
    path = settings.storage.admin_token_file
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write a private temporary file, then link it into place: the token file appears complete or not
    # at all, and when two processes race, the first link wins and the other keeps the winner's token.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)
    log.info("created admin API token in %s", path)
    return path


def require_role(minimum: Role) -> Callable[..., Principal]:
    """A FastAPI dependency admitting a bearer token whose role ranks at least ``minimum``."""

    def dependency(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
        if credentials is None:
            raise FHIRError(401, "a bearer token is required", "login", {"WWW-Authenticate": "Bearer"})
        registry: TokenRegistry = request.app.state.tokens
        role = registry.role_of(credentials.credentials)
        if role is None:
            challenge = 'Bearer error="invalid_token"'
            raise FHIRError(401, "the bearer token is not valid", "login", {"WWW-Authenticate": challenge})
        if ROLE_RANK[role] < ROLE_RANK[minimum]:
            raise FHIRError(403, f"this needs the {minimum.value} role; the token has {role.value}", "forbidden")
        return Principal(role, hashlib.sha256(credentials.credentials.encode()).hexdigest()[:8])

    return dependency
