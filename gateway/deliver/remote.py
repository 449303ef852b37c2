"""Send a transaction Bundle to a remote FHIR R4 server, and say whether a failure may pass on retry.

Mode ``transaction`` POSTs the Bundle to the base URL (http.html#transaction: the server applies
it all or nothing). Mode ``put`` sends each entry as its own ``PUT [type]/[id]`` or
``DELETE [type]/[id]``, in Bundle order; a DELETE answered 404 or 410 has nothing left to delete.

Failures: a timeout, a connection error, 408, 429 and 5xx may pass later (RemoteUnavailable,
with the server's Retry-After when it sent one); any other status is the server refusing the
content (RemoteRejected, with the OperationOutcome it returned).
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from gateway import fhirjson
from gateway.errors import DeliveryError, TransientDeliveryError
from gateway.metrics import recorder
from gateway.sinkspec import SinkSpec

FHIR_JSON = "application/fhir+json"
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MAX_REASON = 6000


class RemoteUnavailable(TransientDeliveryError):
    """The server did not take the Bundle now: down, overloaded, timed out."""

    def __init__(self, message: str, *, stage: str, retry_after: float | None = None, summary: str = ""):
        super().__init__(message)
        self.stage = stage
        #: Seconds the server asked us to wait (Retry-After), if it did.
        self.retry_after = retry_after
        self.summary = summary or message

    def safe_text(self) -> str:
        return self.summary


class RemoteRejected(DeliveryError):
    """The server refused the Bundle (a 4xx): sending it again cannot help."""

    def __init__(self, message: str, *, stage: str, status: int, outcome: dict[str, Any] | None, summary: str = ""):
        super().__init__(message)
        self.stage = stage
        self.status = status
        #: The OperationOutcome the server returned, if any.
        self.outcome = outcome
        self.summary = summary or message

    def safe_text(self) -> str:
        """Without the server's words: an OperationOutcome may quote the data it refused."""
        return self.summary


class RemoteSink:
    def __init__(self, spec: SinkSpec, transport: httpx.BaseTransport | None = None):
        self.spec = spec
        self.metrics = recorder()
        headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
        if spec.auth:
            headers["Authorization"] = spec.auth
        self.client = httpx.Client(
            base_url=spec.url + "/",
            headers=headers,
            timeout=httpx.Timeout(spec.timeout, connect=min(5.0, spec.timeout)),
            limits=httpx.Limits(max_connections=spec.concurrency * 2, max_keepalive_connections=spec.concurrency),
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    def send(self, bundle: dict[str, Any]) -> None:
        """Deliver ``bundle``; raises RemoteUnavailable or RemoteRejected."""
        if self.spec.mode == "transaction":
            self._request("POST", "", bundle)
            return
        for entry in bundle.get("entry", []):
            request = entry["request"]
            self._request(request["method"], request["url"], entry.get("resource"))

    def _request(self, method: str, url: str, body: dict[str, Any] | None) -> None:
        where = f"{method} {self.spec.url}/{url}".rstrip("/")
        content = fhirjson.dumps(body) if body is not None else None
        started = time.perf_counter()
        try:
            response = self.client.request(method, url, content=content)
        except httpx.TimeoutException as exc:
            raise RemoteUnavailable(f"{where} timed out ({type(exc).__name__})", stage=self.spec.stage) from None
        except httpx.TransportError as exc:
            raise RemoteUnavailable(f"{where} failed: {exc or type(exc).__name__}", stage=self.spec.stage) from None
        finally:
            self.metrics.sink_request(self.spec.name, time.perf_counter() - started)
        status = response.status_code
        if 200 <= status < 300 or (method == "DELETE" and status in (404, 410)):
            return
        outcome, text = _outcome(response)
        summary = f"{where}: HTTP {status}"
        reason = f"{summary}: {text}"[:_MAX_REASON]
        if status in _RETRYABLE_STATUS:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            raise RemoteUnavailable(reason, stage=self.spec.stage, retry_after=retry_after, summary=summary)
        raise RemoteRejected(reason, stage=self.spec.stage, status=status, outcome=outcome, summary=summary)


def _outcome(response: httpx.Response) -> tuple[dict[str, Any] | None, str]:
    """The OperationOutcome in a response (and its JSON text), or the body's start when there is none."""
    try:
        body = fhirjson.loads(response.content)
    except ValueError:  # orjson.JSONDecodeError and json.JSONDecodeError
        return None, response.text[:2000] or response.reason_phrase
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return body, fhirjson.dumps(body).decode()
    return None, response.text[:2000]


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After (RFC 9110 section 10.2.3) as seconds from now: delay-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))
