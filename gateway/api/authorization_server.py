"""The external authorization server (HL7GW_OIDC_ISSUER): its discovery document and its signing keys
(JWKS), fetched with httpx when first needed, never at import, and kept for HL7GW_OIDC_JWKS_CACHE_S.

A token naming a key id the cached set lacks makes one fetch, so a key rotation is picked up at
once; such fetches, and retries after a failure, happen at most once per HL7GW_OIDC_JWKS_REFETCH_S,
so a flood of made-up key ids cannot hammer the server. While the server cannot be reached, keys
fetched before stay in use (up to ``STALE_LIMIT_S``); with none, ``KeysUnavailable``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from gateway.config import OidcSettings

log = logging.getLogger(__name__)

#: Keys fetched longer ago than this are not used, even while the server cannot be reached.
STALE_LIMIT_S = 24 * 3600.0
#: A discovery document or JWKS larger than this is refused.
_MAX_DOCUMENT_BYTES = 1 << 20
DISCOVERY_PATH = "/.well-known/openid-configuration"


class KeysUnavailable(Exception):
    """The signing keys cannot be fetched and none are cached: no token can be checked now."""


class UnknownKey(Exception):
    """The token names a key the authorization server does not publish."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One published signature key: the key, its type, the algorithm and curve its JWK declares."""

    kid: str | None
    kty: str
    #: The JWK's ``alg``; None when it names none (then the key's type decides what may use it).
    alg: str | None
    crv: str | None
    key: Any


class _Cached:
    """A document and when it was fetched; ``tried``: when a fetch was last attempted."""

    def __init__(self) -> None:
        self.value: Any = None
        self.fetched = 0.0
        self.tried: float | None = None


class AuthorizationServer:
    """Discovery document and signing keys of one issuer, cached; thread-safe (requests run in threads)."""

    def __init__(
        self,
        settings: OidcSettings,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ):
        self.settings = settings
        #: Seconds, monotonic; tests move it instead of sleeping.
        self.clock = clock
        self._client = httpx.Client(timeout=settings.timeout_s, transport=transport, follow_redirects=False)
        self._lock = threading.Lock()
        self._discovery = _Cached()
        self._keys = _Cached()

    def close(self) -> None:
        self._client.close()

    def discovery(self) -> dict[str, Any] | None:
        """The discovery document, or None when it cannot be fetched (logged)."""
        with self._lock:
            return self._discovered(self.clock())

    def key(self, kid: str | None) -> SigningKey:
        """The signing key ``kid`` (without a kid: the only key published). Raises UnknownKey, KeysUnavailable."""
        with self._lock:
            now = self.clock()
            cached = self._keys
            if cached.value is None or now - cached.fetched >= self.settings.cache_s:
                self._fetch_keys(now)
            if cached.value is None:
                raise KeysUnavailable
            found = _pick(cached.value, kid)
            if found is None and self._may_try(cached, now):
                self._fetch_keys(now)  # a rotation: the server may publish the key by now
                found = _pick(cached.value, kid) if cached.value is not None else None
            if found is None:
                raise UnknownKey
            return found

    def _may_try(self, cached: _Cached, now: float) -> bool:
        return cached.tried is None or now - cached.tried >= self.settings.refetch_s

    def _discovered(self, now: float) -> dict[str, Any] | None:
        cached = self._discovery
        fresh = cached.value is not None and now - cached.fetched < self.settings.cache_s
        if not fresh and self._may_try(cached, now):
            cached.tried = now
            url = self.settings.issuer.rstrip("/") + DISCOVERY_PATH
            document = self._get(url, "discovery document")
            if document is not None and str(document.get("issuer", "")).rstrip("/") != self.settings.issuer.rstrip("/"):
                log.warning("the discovery document of the authorization server names another issuer; not used")
                document = None
            if document is not None:
                cached.value, cached.fetched = document, now
        if cached.value is not None and now - cached.fetched > STALE_LIMIT_S:
            cached.value = None
        return dict(cached.value) if cached.value is not None else None

    def _fetch_keys(self, now: float) -> None:
        cached = self._keys
        if self._may_try(cached, now):
            url = self.settings.jwks_url
            if url is None:
                document = self._discovered(now)
                url = document.get("jwks_uri") if document else None
            cached.tried = now
            if isinstance(url, str) and url:
                keys = _key_set(self._get(url, "JWKS"))
                if keys is not None:
                    cached.value, cached.fetched = keys, now
            else:
                log.warning("no jwks_uri: the authorization server's discovery document is unavailable or has none")
        if cached.value is not None and now - cached.fetched > STALE_LIMIT_S:
            log.warning("the authorization server's keys are older than %d s and cannot be refreshed", STALE_LIMIT_S)
            cached.value = None

    def _get(self, url: str, what: str) -> dict[str, Any] | None:
        try:
            response = self._client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > _MAX_DOCUMENT_BYTES:
                raise ValueError("larger than 1 MiB")
            document = response.json()
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot fetch the authorization server's %s: %s", what, type(exc).__name__)
            return None
        return document


def _key_set(document: dict[str, Any] | None) -> list[SigningKey] | None:
    """The signature keys of a JWKS (keys for encryption, and keys PyJWT cannot use, left out)."""
    if document is None or not isinstance(document.get("keys"), list):
        return None
    keys: list[SigningKey] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
            continue
        try:
            parsed = jwt.PyJWK(entry)
        except Exception:  # noqa: BLE001 - a key PyJWT cannot use (any reason) is left out
            continue
        kid, alg, crv = (
            entry.get(name) if isinstance(entry.get(name), str) else None for name in ("kid", "alg", "crv")
        )
        keys.append(SigningKey(kid, str(entry["kty"]), alg, crv, parsed.key))
    if not keys:
        log.warning("the authorization server's JWKS holds no usable signature key")
    return keys


def _pick(keys: list[SigningKey], kid: str | None) -> SigningKey | None:
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    return next((key for key in keys if key.kid == kid), None)
