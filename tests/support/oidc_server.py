"""A real OpenID Connect authorization server for tests, as far as a resource server sees one: its
discovery document and JWKS served over HTTP on a local port (a thread), keys the test generates,
and tokens it signs with PyJWT. It counts the requests it answers; ``stop`` takes it off the network."""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "https://fhir.example.org/fhir"


@dataclass
class SigningKey:
    kid: str
    private: Any
    algorithm: str

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(jwt.get_algorithm_by_name(self.algorithm).to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}


@functools.cache
def _private(kind: str, seed: str) -> Any:
    """One generated key per (kind, seed) for the whole run: RSA keys take a while to make."""
    return rsa.generate_private_key(65537, 2048) if kind == "RSA" else ec.generate_private_key(ec.SECP256R1())


def rsa_key(kid: str | None = None, seed: str | None = None) -> SigningKey:
    """An RS256 key; the same ``kid`` (or ``seed``) gives the same key within a run."""
    kid = kid or f"rsa-{uuid.uuid4().hex[:8]}"
    return SigningKey(kid, _private("RSA", seed or kid), "RS256")


def ec_key(kid: str | None = None) -> SigningKey:
    kid = kid or f"ec-{uuid.uuid4().hex[:8]}"
    return SigningKey(kid, _private("EC", kid), "ES256")


@dataclass
class OidcServer:
    """Serves ``/.well-known/openid-configuration`` and ``/jwks`` for the keys in ``published``."""

    published: list[SigningKey] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    discovery_extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                server.requests[self.path] = server.requests.get(self.path, 0) + 1
                if self.path == "/.well-known/openid-configuration":
                    body = server.discovery()
                elif self.path == "/jwks":
                    body = {"keys": [key.public_jwk() for key in server.published]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "scopes_supported": ["openid", "fhirUser", "launch/patient", "patient/*.rs"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256", "plain"],
            **self.discovery_extra,
        }

    def jwks_fetches(self) -> int:
        return self.requests.get("/jwks", 0)

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)

    def token(self, key: SigningKey | None = None, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        """A token signed with ``key`` (the first published by default); ``claims`` override the defaults,
        a claim given as None is left out."""
        key = key or self.published[0]
        now = int(time.time())
        body = {"iss": self.issuer, "aud": AUDIENCE, "sub": "app-1", "iat": now, "exp": now + 300, **claims}
        body = {name: value for name, value in body.items() if value is not None}
        return jwt.encode(body, key.private, algorithm=key.algorithm, headers={"kid": key.kid, **(headers or {})})
