"""Deliver one queued message to one remote sink: once in effect, retried until it is too old.

For each queued message (gateway/deliver/fanout.py):

1. a message already delivered (or dead) for this sink is a queue duplicate: skipped;
2. older than HL7GW_SINK_MAX_AGE_S: a dead letter (stage ``deliver:<sink>``) with the last error;
3. entries whose resource the built-in store holds from a newer message are left out, so a
   retried older message never overwrites newer data on the server either;
4. while the sink's circuit breaker is open, the message goes back to the sink's delay queue
   without calling the server;
5. sent: success marks it delivered; a timeout, 5xx or 429 counts against the breaker and
   retries after an exponential backoff with full jitter (at least the server's Retry-After);
   a 4xx is final: a dead letter with the server's OperationOutcome.

One log line per outcome, not per attempt (the worker's log context names the message): delivered,
superseded, a dead letter; of the retries only the first failure is INFO (it says the message
waits), the later ones and the breaker's holds are DEBUG.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from gateway.deliver.breaker import CircuitBreaker
from gateway.deliver.fanout import SinkMessage
from gateway.deliver.remote import RemoteRejected, RemoteSink, RemoteUnavailable
from gateway.envelope import Envelope
from gateway.errors import describe
from gateway.journal.dead_letters import Letter
from gateway.journal.deliveries import PENDING, DeliveryState, DeliveryStates
from gateway.journal.messages import MessageArchive
from gateway.metrics import recorder
from gateway.store.resources import ResourceStore

log = logging.getLogger(__name__)

#: First retry waits up to this long (full jitter), doubling with each attempt.
BASE_BACKOFF_MS = 1_000

Reschedule = Callable[[SinkMessage, int], None]
#: Writes a dead letter (gateway/services/letters.py: to the database, or parked in Redis).
PostLetter = Callable[[Letter], object]
#: What ``handle`` returns -> the outcome hl7gw_sink_deliveries_total counts (the others are not
#: deliveries: a queue duplicate, nothing left to send, held back by the open breaker).
_COUNTED = {"delivered": "delivered", "retry": "retried", "rejected": "refused", "expired": "expired"}


class SinkWorker:
    def __init__(
        self,
        remote: RemoteSink,
        breaker: CircuitBreaker,
        states: DeliveryStates,
        store: ResourceStore,
        archive: MessageArchive,
        post_letter: PostLetter,
        reschedule: Reschedule,
        *,
        max_age_s: float,
        max_backoff_s: float,
        rng: random.Random | None = None,
    ):
        self.remote = remote
        self.spec = remote.spec
        self.breaker = breaker
        self.states = states
        self.store = store
        self.archive = archive
        self.post_letter = post_letter
        self.reschedule = reschedule
        self.max_age_ms = int(max_age_s * 1000)
        self.max_backoff_ms = int(max_backoff_s * 1000)
        self.rng = rng or random.Random()
        self.metrics = recorder()

    def handle(self, message: SinkMessage) -> str:
        """Process one queued message; returns what happened (for logs, metrics and tests)."""
        outcome = self._handle(message)
        counted = _COUNTED.get(outcome)
        if counted is not None:
            self.metrics.sink_delivery(self.spec.name, counted)
        return outcome

    def _handle(self, message: SinkMessage) -> str:
        state = self.states.get(message.message_id, self.spec.name)
        if state is not None and state.status != PENDING:
            log.debug("%s: already %s (queued twice)", self.spec.name, state.status, extra=self._fields("duplicate"))
            return "duplicate"
        deadline = message.received_at + self.max_age_ms
        if _now_ms() >= deadline:
            reason = f"not delivered to {self.spec.name} within {self.max_age_ms // 1000} s: {self._why(state)}"
            self._park(message, reason, "SinkMaxAgeExceeded", attempted=False)
            return "expired"
        bundle = self._current(message)
        if not bundle["entry"]:  # every entry is older than what the store holds: nothing to send
            self.states.delivered(message.message_id, self.spec.name)
            log.info("%s: nothing to send, newer data replaced it", self.spec.name, extra=self._fields("superseded"))
            return "superseded"
        wait = self.breaker.wait_ms()
        if wait > 0:
            self._later(message, wait + self.rng.randint(0, max(1_000, wait // 2)), deadline)
            log.debug("%s: circuit breaker open, again in %d ms", self.spec.name, wait, extra=self._fields("held"))
            return "breaker-open"
        try:
            self.remote.send(bundle)
        except RemoteRejected as exc:
            self.breaker.success()  # the server is up: it answered
            self._park(message, str(exc), type(exc).__name__, attempted=True)
            return "rejected"
        except RemoteUnavailable as exc:
            failures = self.breaker.failure(str(exc))
            delay = self._backoff_ms(message.attempts, exc.retry_after)
            self.states.attempted(message.message_id, self.spec.name, str(exc), _now_ms() + delay)
            log.log(
                logging.INFO if message.attempts == 0 else logging.DEBUG,
                "%s: message %s, attempt %d failed (%d in a row): %s; again in %.1f s",
                self.spec.name,
                message.message_id,
                message.attempts + 1,
                failures,
                describe(exc),
                delay / 1000,
                extra=self._fields("sink-retry", attempt=message.attempts + 1),
            )
            self._later(message.next_attempt(), delay, deadline)
            return "retry"
        self.breaker.success()
        self.states.delivered(message.message_id, self.spec.name)
        log.info(
            "delivered to %s after %d attempt(s)",
            self.spec.name,
            message.attempts + 1,
            extra=self._fields("delivered", attempt=message.attempts + 1),
        )
        return "delivered"

    def _fields(self, outcome: str, **more: object) -> dict[str, object]:
        """The structured fields of a delivery line (docs/observability.md, Logs)."""
        return {"outcome": outcome, "sink": self.spec.name, **more}

    def _why(self, state: DeliveryState | None) -> str:
        if state is not None and state.last_error:
            return state.last_error
        sink_error = self.breaker.last_error()
        if sink_error:  # held back by the open breaker: what keeps the sink down
            return f"{self.spec.name} unavailable (circuit breaker open): {sink_error}"
        return "no attempt was made"

    def _current(self, message: SinkMessage) -> dict[str, Any]:
        """The Bundle without the entries whose stored data comes from a newer message."""
        entries = message.bundle.get("entry", [])
        keys = [_key(entry) for entry in entries]
        newer = self.store.superseding([k for k in keys if k], message.source)
        if not newer:
            return message.bundle
        kept = [entry for entry, key in zip(entries, keys) if key not in newer]
        return {**message.bundle, "entry": kept}

    def _backoff_ms(self, attempts: int, retry_after: float | None) -> int:
        ceiling = min(self.max_backoff_ms, BASE_BACKOFF_MS * 2 ** min(attempts, 30))
        delay = self.rng.randint(0, ceiling)
        if retry_after is not None:
            delay = max(delay, int(retry_after * 1000))
        return max(delay, 50)

    def _later(self, message: SinkMessage, delay_ms: int, deadline: int) -> None:
        # Never sleep past the deadline: the message must wake up to become a dead letter.
        delay_ms = max(0, min(delay_ms, deadline - _now_ms() + 10))
        self.reschedule(message, delay_ms)

    def _park(self, message: SinkMessage, reason: str, error_type: str, *, attempted: bool) -> None:
        letter = self.letter(message, reason, error_type, attempted=attempted)
        self.post_letter(letter)
        log.warning(
            "dead letter %s: message %s, MSH-10 %s from %s, not delivered to %s: %s",
            letter.id,
            message.message_id,
            message.control_id or "?",
            message.sender or "?",
            self.spec.name,
            error_type,
            extra=self._fields(
                "sink-expired" if error_type == "SinkMaxAgeExceeded" else "sink-refused",
                dead_letter_id=letter.id,
                error_type=error_type,
            ),
        )

    def letter(self, message: SinkMessage, reason: str, error_type: str, *, attempted: bool) -> Letter:
        """The dead letter of ``message`` for this sink (its raw message from the archive)."""
        archived = self.archive.get(message.message_id)
        if archived is not None:
            envelope = Envelope(
                id=archived.id,
                raw=archived.raw,
                received_at=archived.received_at,
                sender=archived.sender,
                control_id=archived.control_id,
                seq=archived.seq,
            )
        else:
            envelope = Envelope(message.message_id, b"", message.received_at, message.sender, message.control_id)
        state = self.states.get(message.message_id, self.spec.name)
        attempts = (state.attempts if state else 0) + (1 if attempted else 0)
        return Letter(
            envelope,
            self.spec.stage,
            reason,
            error_type,
            max(1, attempts),
            sink=self.spec.name,
            sink_attempted=attempted,
        )


def _key(entry: dict[str, Any]) -> tuple[str, str] | None:
    url = (entry.get("request") or {}).get("url", "")
    resource_type, _, resource_id = url.strip("/").partition("/")
    return (resource_type, resource_id) if resource_type and resource_id else None


def _now_ms() -> int:
    return int(time.time() * 1000)
