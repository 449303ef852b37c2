"""The failure policy (gateway/errors.py) as one dramatiq middleware, for every actor alike.

* Each actor's function runs through outages: when it fails because the database or Redis does
  not answer, the thread waits for it (gateway/services/outages.py) and does the work again. The
  message stays in flight, owned by this worker, and no attempt is counted, however long it takes.
* While a dependency is down no thread starts a new message.
* Any other failure: a retryable one (and an outage-class one whose dependency did answer) is
  tried again with exponential backoff, ``max_retries`` times; then, or at once for a permanent
  one, the message becomes a dead letter (gateway/services/letters.py).
* The message is acknowledged only once its retry is queued or its dead letter written; it is
  never rejected into dramatiq's own dead-letter set (``.XQ``).

This replaces dramatiq's Retries middleware: there are no per-actor retry rules.

While a message is handled, its envelope id, sender and control id are the log context of the
worker thread (gateway/logcontext.py): every line logged meanwhile, the pipeline's, a sink's and
this policy's, names the message.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy

from gateway import logcontext
from gateway.envelope import Envelope
from gateway.errors import GatewayError, Policy, StageCrash, describe, policy_of, stage_of
from gateway.journal.dead_letters import Letter
from gateway.services.letters import LetterBox
from gateway.services.outages import Outages
from gateway.stages import Stage

log = logging.getLogger(__name__)

#: Builds the dead letter of one actor's message: (message, exception, attempts) -> Letter.
LetterFor = Callable[[MessageProxy, BaseException, int], Letter]


def reason_of(exc: BaseException) -> str:
    """A dead letter's reason: our own error's text, else ``describe`` (never the words of a
    foreign exception, which may quote data)."""
    return str(exc) if isinstance(exc, GatewayError) else describe(exc)


def envelope_letter(message: MessageProxy, exc: BaseException, attempts: int) -> Letter:
    """The dead letter of a pipeline message (its argument is an Envelope)."""
    return Letter(Envelope.from_json(message.args[0]), stage_of(exc), reason_of(exc), type(exc).__name__, attempts)


def unreadable_letter(message: MessageProxy, exc: BaseException, attempts: int) -> Letter:
    """The dead letter of a queue message nobody can read: its whole queue entry is the raw."""
    envelope = Envelope(message.message_id, message.encode(), int(message.message_timestamp))
    return Letter(envelope, Stage.QUEUE, reason_of(exc), type(exc).__name__, attempts)


def bind_message(message: MessageProxy) -> None:
    """Make the queued message's envelope id, sender and control id the log context of this
    thread: read from its argument, a pipeline Envelope or a SinkMessage (both JSON objects),
    never anything else of it."""
    payload = message.args[0] if message.args and isinstance(message.args[0], dict) else {}
    envelope_id = payload.get("message_id") or payload.get("id") or message.message_id
    logcontext.bind(envelope_id, payload.get("sender", ""), payload.get("control_id", ""))


class FailurePolicy(dramatiq.Middleware):
    def __init__(
        self,
        outages: Outages,
        letters: LetterBox,
        letter_for: dict[str, LetterFor],
        *,
        max_retries: int,
        min_backoff_ms: int = 500,
        max_backoff_ms: int = 60_000,
    ):
        self.outages = outages
        self.letters = letters
        self.letter_for = letter_for
        self.max_retries = max_retries
        self.min_backoff_ms = min_backoff_ms
        self.max_backoff_ms = max_backoff_ms

    @property
    def actor_options(self) -> set[str]:
        # dramatiq's worker logs an actor's failure at INFO without a traceback for these types;
        # every actor declares Exception: this middleware logs what it decides.
        return {"throws"}

    def before_declare_actor(self, broker: Broker, actor: Any) -> None:
        actor.fn = self._through_outages(actor.fn)

    def _through_outages(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        outages = self.outages

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            while True:
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    if not outages.hold(exc):
                        raise

        return run

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        bind_message(message)
        self.outages.wait_all()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        logcontext.clear()

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: object = None, exception: BaseException | None = None
    ) -> None:
        try:
            if exception is not None:
                self._failed(broker, message, exception)
        finally:
            logcontext.clear()

    def _failed(self, broker: Broker, message: MessageProxy, exception: BaseException) -> None:
        retries = int(message.options.get("retries", 0))
        if policy_of(exception) is not Policy.PERMANENT and retries < self.max_retries:
            message.options["retries"] = retries + 1
            delay = self._backoff_ms(retries)
            self._until_done(lambda: broker.enqueue(message.copy(), delay=delay), "queue a retry")
            # One line per message, not per attempt: a retry storm must not flood the log. The first
            # failure says it will be retried; the later ones are debug; the end is one more line
            # (the dead letter) or none (it passed).
            log.log(
                logging.INFO if retries == 0 else logging.DEBUG,
                "message %s: attempt %d of %d failed (%s); again in %.1f s",
                message.message_id,
                retries + 1,
                self.max_retries + 1,
                describe(exception),
                delay / 1000,
                extra={"outcome": "retry", "attempt": retries + 1, "stage": stage_of(exception)},
            )
            return
        letter = self._letter(message, exception, retries + 1)
        where = self._until_done(lambda: self.letters.post(letter), "write a dead letter")
        e = letter.envelope
        log.log(
            logging.ERROR if isinstance(exception, StageCrash) else logging.WARNING,
            "dead letter %s (%s): message %s, MSH-10 %s from %s, failed at %s after %d attempt(s): %s",
            letter.id,
            where,
            e.id,
            e.control_id or "?",
            e.sender or "?",
            letter.stage,
            letter.attempts,
            describe(exception),
            exc_info=exception if isinstance(exception, StageCrash) else None,
            extra={
                "outcome": "dead-letter",
                "dead_letter_id": letter.id,
                "stage": letter.stage,
                "error_type": letter.error_type,
                "attempt": letter.attempts,
            },
        )

    def _letter(self, message: MessageProxy, exc: BaseException, attempts: int) -> Letter:
        make = self.letter_for.get(message.actor_name, unreadable_letter)
        try:
            return make(message, exc, attempts)
        except Exception:  # noqa: BLE001 - an argument we cannot read still becomes a letter
            return unreadable_letter(message, exc, attempts)

    def _until_done(self, action: Callable[[], Any], what: str) -> Any:
        """Run ``action`` until it succeeds: through outages, and with backoff after anything
        else, since giving up would acknowledge a message that is stored nowhere."""
        delay = 1.0
        while True:
            try:
                return action()
            except Exception as exc:  # noqa: BLE001
                if self.outages.hold(exc):
                    continue
                log.error("could not %s (%s); trying again in %.0f s", what, describe(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, 60.0)

    def _backoff_ms(self, retries: int) -> int:
        """Exponential with jitter: the n-th retry waits between half and all of min * 2**n."""
        ceiling = min(self.max_backoff_ms, self.min_backoff_ms * 2 ** min(retries, 20))
        return int(random.uniform(ceiling / 2, ceiling))
