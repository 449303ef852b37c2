"""The console's session: an API token presented once at sign-in becomes a signed, expiring cookie.

The cookie holds the token's name, its role, when the session ends and a random session id, signed
with HMAC-SHA256 under a key kept in the data dir (``console.key``, mode 0600, made on first use):
no table, and every API process of the gateway reads the same key. It never holds the token. Each
request checks the signature, the expiry, and that a token of that name still has that role, so a
token removed from HL7GW_API_TOKENS ends its sessions at the next restart of the API.

CSRF: every form carries ``csrf_token``, an HMAC of the session id under the same key; the sign-in
form (before there is a session) one of a random nonce kept in a short-lived cookie of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.api.auth import Principal, TokenRegistry
from gateway.config import ROLE_RANK, Role
from gateway.filemodes import create_secret_file

#: The session cookie; its path is the console's, so it never travels to /fhir or /admin.
COOKIE = "hl7gw_console"
#: The sign-in form's nonce (double-submit CSRF before there is a session).
LOGIN_COOKIE = "hl7gw_console_login"
COOKIE_PATH = "/console"
#: How long a session lasts after sign-in (no sliding renewal: sign in again after a shift).
SESSION_TTL_S = 8 * 3600
LOGIN_TTL_S = 900
KEY_FILE_NAME = "console.key"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in operator: who (the token's name and role), the session id and when it ends."""

    principal: Principal
    session_id: str
    expires_at: int


def _same(presented: str, expected: str) -> bool:
    """Constant-time comparison of what a browser sent (any text) with what we made."""
    return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Makes and checks session cookies and CSRF tokens with the key in ``key_file``."""

    def __init__(self, key: bytes, tokens: TokenRegistry, ttl_s: int = SESSION_TTL_S):
        if len(key) < 32:
            raise ValueError("a console key has at least 32 bytes")
        self._key = key
        self._tokens = tokens
        self.ttl_s = ttl_s

    @classmethod
    def from_key_file(cls, key_file: Path, tokens: TokenRegistry) -> SessionSigner:
        """The signer of the key in ``key_file``, written (random, mode 0600) when there is none yet.
        When the data dir cannot hold it (read-only), a key of this process alone: sessions then
        end when it restarts."""
        try:
            create_secret_file(key_file, secrets.token_hex(32))
            return cls(bytes.fromhex(key_file.read_text(encoding="utf-8").strip()), tokens)
        except (OSError, ValueError) as exc:
            log.warning(
                "console: cannot use the key file %s (%s); sessions last until this process ends",
                key_file,
                type(exc).__name__,
            )
            return cls(secrets.token_bytes(32), tokens)

    def _mac(self, purpose: str, text: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}|{text}".encode(), hashlib.sha256).digest())

    def sign_in(self, token: str, now: float | None = None) -> tuple[Session, str] | None:
        """A new session and its cookie value for ``token``; None when the token is not known.
        The caller checks the role (a reader may not sign in)."""
        principal = self._tokens.principal_of(token)
        if principal is None:
            return None
        expires = int(now if now is not None else time.time()) + self.ttl_s
        session = Session(principal, secrets.token_urlsafe(18), expires)
        body = _b64(
            json.dumps({"n": principal.name, "r": principal.role.value, "e": expires, "s": session.session_id}).encode()
        )
        return session, f"{body}.{self._mac('session', body)}"

    def session_of(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie value carries; None when absent, forged, expired or its token gone."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        if not _same(mac, self._mac("session", body)):
            return None
        try:
            data = json.loads(_unb64(body))
            name, role, expires, session_id = str(data["n"]), Role(data["r"]), int(data["e"]), str(data["s"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires <= (now if now is not None else time.time()):
            return None
        current = self._tokens.principal_named(name)
        if current is None or current.role != role:
            return None
        return Session(current, session_id, expires)

    def csrf_token(self, session: Session) -> str:
        """The token every form of this session carries."""
        return self._mac("csrf", session.session_id)

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        return bool(presented) and _same(str(presented), self.csrf_token(session))

    def login_nonce(self) -> tuple[str, str]:
        """(cookie value, form token) for one sign-in form."""
        nonce = secrets.token_urlsafe(18)
        return nonce, self._mac("login", nonce)

    def login_ok(self, nonce: str | None, presented: str | None) -> bool:
        return bool(nonce) and bool(presented) and _same(str(presented), self._mac("login", str(nonce)))


def may_use_console(role: Role) -> bool:
    """Operators and admins; readers (and the metrics role) see no console."""
    return ROLE_RANK.get(role, -1) >= ROLE_RANK[Role.operator]
