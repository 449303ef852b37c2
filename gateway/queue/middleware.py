"""Dramatiq middleware: dead-lettering, in one place instead of in every actor."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.broker import Broker, MessageProxy

from gateway.deadletter import DeadLetterStore
from gateway.envelope import Envelope
from gateway.errors import stage_of
from gateway.queue.keys import ACTOR
from gateway.store.messages import MessageArchive

log = logging.getLogger(__name__)


class PermanentFailure(Exception):
    """Wraps a non-retryable failure so that dramatiq aborts it at once (the actor's ``throws``)
    and logs it as expected instead of with a traceback; ``cause`` is the real error."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class DeadLetters(dramatiq.Middleware):
    """When a message has failed for good (not retryable, or retries used up), park it.

    Runs after dramatiq's Retries middleware has decided, and before the message is acknowledged,
    so a message is only forgotten by the queue once its dead letter is committed.
    """

    def __init__(self, store: DeadLetterStore, archive: MessageArchive):
        self.store = store
        self.archive = archive

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: object = None, exception: BaseException | None = None
    ) -> None:
        if exception is None or not message.failed or message.actor_name != ACTOR:
            return  # remote sink deliveries park their own dead letters (gateway/deliver/sink_worker.py)
        try:
            envelope = Envelope.from_json(message.args[0])
        except Exception:  # noqa: BLE001 - a message we cannot even read stays in dramatiq's XQ
            log.critical("undecodable queue message %s failed: %s", message.message_id, exception)
            return
        if isinstance(exception, PermanentFailure):
            exception = exception.cause
        stage = stage_of(exception)
        # Retries has counted this attempt already; an aborted first attempt has no count.
        attempts = max(1, int(message.options.get("retries", 0)))
        try:
            letter_id = self.store.park(
                envelope,
                stage=stage,
                reason=str(exception) or type(exception).__name__,
                error_type=type(exception).__name__,
                attempts=attempts,
            )
            self.archive.record_outcome(envelope, "failed", f"{stage}: {exception}")
        except Exception:  # noqa: BLE001
            # The database is unreachable: dramatiq keeps the message in its own dead-letter set.
            log.critical("could not record dead letter for %s; it stays in the queue's XQ", envelope.id, exc_info=True)
            return
        log.warning(
            "dead letter %s: %s from %s failed at %s: %s",
            letter_id,
            envelope.control_id,
            envelope.sender,
            stage,
            exception,
        )
