"""Send one Subscription's queued notifications to its endpoint, in event-number order.

The queue is the subscription's rows in the outbox (gateway/store/subscription_outbox.py): durable,
and read head first, so a later event is never sent before an earlier one. Each ``step``:

1. the head is not due yet (a retry's backoff), or the circuit breaker is open: wait;
2. send the head, with the events behind it (up to ``batch_max``) in the same notification;
3. success: marked sent; the breaker closes; a subscription in ``error`` is ``active`` again;
4. a timeout, 5xx, 408 or 429: the events wait for an exponential backoff with full jitter (at
   least the endpoint's Retry-After), counted against the breaker; once the breaker opens the
   subscription's status is ``error`` with why;
5. another 4xx is the endpoint refusing: a notification of several events is split (sent one
   by one from then on, to find which one); a single event becomes a dead letter (stage
   ``subscription:<id>``, the notification Bundle as its raw bytes) and the queue moves on.

Nothing expires: a subscriber that is down for an hour gets every notification when it is back.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from gateway import fhirjson
from gateway.deliver.breaker import CircuitBreaker
from gateway.deliver.notification import notification_bundle
from gateway.deliver.remote import RemoteRejected, RemoteUnavailable
from gateway.deliver.rest_hook import RestHook
from gateway.envelope import Envelope
from gateway.journal.dead_letters import DeadLetterStore, Letter
from gateway.metrics import recorder
from gateway.store.subscription_outbox import Event, Outbox
from gateway.store.subscriptions import StoredSubscription, SubscriptionStore

log = logging.getLogger(__name__)

BASE_BACKOFF_MS = 1_000
#: Longest wait between two looks at an idle queue (new events also wake the sender at once).
IDLE_S = 1.0
#: Namespace of the envelope ids of notification dead letters (UUIDv5 of "<subscription>/<event>").
NOTIFICATION_NAMESPACE = uuid.UUID("0c6f3a52-3a41-4f55-8a0e-6a9d3f1b7e42")


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    base_url: str
    batch_max: int
    max_backoff_s: float


class SubscriptionDelivery:
    def __init__(
        self,
        stored: StoredSubscription,
        hook: RestHook,
        breaker: CircuitBreaker,
        outbox: Outbox,
        subscriptions: SubscriptionStore,
        letters: DeadLetterStore,
        policy: DeliveryPolicy,
        rng: random.Random | None = None,
        may_send: Callable[[], bool] = lambda: True,
    ):
        self.stored = stored
        self.spec = stored.spec()
        self.hook = hook
        self.breaker = breaker
        self.outbox = outbox
        self.subscriptions = subscriptions
        self.letters = letters
        self.policy = policy
        self.rng = rng or random.Random()
        #: False once this process may no longer hold the dispatcher's lease: another may send now.
        self.may_send = may_send
        self.metrics = recorder()
        #: Events up to this number go one per notification (a refused batch is being split).
        self._single_through = 0
        self._in_error = stored.status == "error"
        self._breaker_closed = False

    def close(self) -> None:
        self.hook.close()

    def step(self) -> float:
        """One attempt at the head of the queue; returns how long to wait before the next (0: now)."""
        if not self.may_send():
            return IDLE_S
        head = self.outbox.head(self.spec.id, self.policy.batch_max)
        if not head:
            return IDLE_S
        wait_ms = head[0].next_attempt_at - _now_ms()
        if wait_ms > 0:
            return wait_ms / 1000
        # The breaker is shared through Redis, but only this process sends for the subscription:
        # after a success it is closed until this process counts a failure.
        breaker_ms = 0 if self._breaker_closed else self.breaker.wait_ms()
        if breaker_ms > 0:
            return (breaker_ms + self.rng.randint(0, max(100, breaker_ms // 4))) / 1000
        batch = head[:1] if head[0].event_number <= self._single_through else _due(head)
        body = self.body(batch)
        numbers = [event.event_number for event in batch]
        try:
            self.hook.send(body)
        except RemoteRejected as exc:
            self._closed()  # the endpoint is up: it answered
            if len(batch) > 1:
                self._single_through = numbers[-1]
                log.info(
                    "Subscription/%s: a notification of %d events refused; sending them one by one",
                    self.spec.id,
                    len(batch),
                )
                return 0.0
            self._dead_letter(batch[0], body, exc)
            return 0.0
        except RemoteUnavailable as exc:
            self._breaker_closed = False
            failures = self.breaker.failure(exc.summary)
            delay = self._backoff_ms(batch[0].attempts, exc.retry_after)
            self.outbox.failed(self.spec.id, numbers, exc.summary, _now_ms() + delay)
            self.metrics.subscription_notification(self.spec.id, "retried", len(batch))
            if failures >= self.breaker.threshold and self.subscriptions.set_error(
                self.spec.id, f"the endpoint keeps failing: {exc.summary}"
            ):
                self._in_error = True
                log.warning("Subscription/%s: status error, %d failures in a row", self.spec.id, failures)
            log.log(
                logging.INFO if batch[0].attempts == 0 else logging.DEBUG,
                "Subscription/%s: event %d, attempt %d failed: %s; again in %.1f s",
                self.spec.id,
                numbers[0],
                batch[0].attempts + 1,
                exc.summary,
                delay / 1000,
            )
            return delay / 1000
        self._closed()
        self.outbox.sent(self.spec.id, numbers)
        self.metrics.subscription_notification(self.spec.id, "sent", len(batch))
        if self._in_error and self.subscriptions.set_recovered(self.spec.id):
            log.info("Subscription/%s: endpoint answering again, status active", self.spec.id)
        self._in_error = False
        return 0.0

    def _closed(self) -> None:
        if not self._breaker_closed:
            self.breaker.success()
            self._breaker_closed = True

    def body(self, batch: list[Event]) -> bytes:
        """The notification of ``batch`` as JSON bytes."""
        resources = self.outbox.contents(batch) if self.spec.payload == "full-resource" else {}
        since_start = max(self.stored.events, batch[-1].event_number)
        bundle = notification_bundle(
            self.policy.base_url, self.spec.id, "active", since_start, batch, self.spec.payload, resources
        )
        return fhirjson.dumps(bundle)

    def _dead_letter(self, event: Event, body: bytes, exc: RemoteRejected) -> None:
        envelope = Envelope(
            id=str(uuid.uuid5(NOTIFICATION_NAMESPACE, f"{self.spec.id}/{event.event_number}")),
            raw=body,
            received_at=int(event.occurred_at.timestamp() * 1000),
            sender=f"Subscription/{self.spec.id}",
            control_id=str(event.event_number),
        )
        letter = Letter(
            envelope,
            self.hook.stage,
            str(exc),
            type(exc).__name__,
            event.attempts + 1,
            subscription_event=(self.spec.id, event.event_number),
        )
        self.letters.park(letter)
        self.metrics.subscription_notification(self.spec.id, "refused", 1)
        self.metrics.dead_letter(self.hook.stage, type(exc).__name__)
        log.warning(
            "dead letter %s: Subscription/%s event %d refused by the endpoint (%s)",
            letter.id,
            self.spec.id,
            event.event_number,
            exc.summary,
            extra={"outcome": "subscription-refused", "dead_letter_id": letter.id},
        )

    def _backoff_ms(self, attempts: int, retry_after: float | None) -> int:
        ceiling = min(int(self.policy.max_backoff_s * 1000), BASE_BACKOFF_MS * 2 ** min(attempts, 30))
        delay = self.rng.randint(0, ceiling)
        if retry_after is not None:
            delay = max(delay, int(retry_after * 1000))
        return max(delay, 50)


def _due(head: list[Event]) -> list[Event]:
    """The head and the events right behind it that are not waiting for a later retry."""
    now = _now_ms()
    batch = [head[0]]
    for event in head[1:]:
        if event.next_attempt_at > now:
            break
        batch.append(event)
    return batch


def _now_ms() -> int:
    return int(time.time() * 1000)
