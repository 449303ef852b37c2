"""POST a notification to a Subscription's rest-hook endpoint, with its ``channel.header`` headers.

Failures are judged as for remote sinks (gateway/deliver/remote.py): a timeout, a connection
error, 408, 429 and 5xx may pass later (RemoteUnavailable, with the endpoint's Retry-After); any
other status is the endpoint refusing the notification (RemoteRejected). Texts name the
subscription, never the endpoint's URL or headers (they may carry credentials).
"""

from __future__ import annotations

import httpx

from gateway.deliver.remote import FHIR_JSON, RemoteRejected, RemoteUnavailable, retry_after_seconds
from gateway.store.subscription_resource import SubscriptionSpec

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def subscription_stage(subscription_id: str) -> str:
    """The dead-letter stage of a subscription's notifications."""
    return f"subscription:{subscription_id}"


class RestHook:
    def __init__(self, spec: SubscriptionSpec, timeout_s: float, transport: httpx.BaseTransport | None = None):
        self.spec = spec
        self.stage = subscription_stage(spec.id)
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        headers.update(dict(spec.headers))
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    def send(self, body: bytes) -> None:
        """POST ``body``; raises RemoteUnavailable or RemoteRejected."""
        where = f"Subscription/{self.spec.id} endpoint"
        try:
            response = self.client.post(self.spec.endpoint, content=body)
        except httpx.TimeoutException as exc:
            raise RemoteUnavailable(f"{where} timed out ({type(exc).__name__})", stage=self.stage) from None
        except httpx.TransportError as exc:
            raise RemoteUnavailable(f"{where} failed ({type(exc).__name__})", stage=self.stage) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        summary = f"{where}: HTTP {status}"
        if status in _RETRYABLE_STATUS:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            raise RemoteUnavailable(summary, stage=self.stage, retry_after=retry_after, summary=summary)
        raise RemoteRejected(
            f"{summary}: {response.text[:2000]}", stage=self.stage, status=status, outcome=None, summary=summary
        )
