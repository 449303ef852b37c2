"""Replaying a dead letter: its raw message (or an operator's corrected copy) goes back on the queue
as a new envelope that names the letter it came from (issue 15).

The new envelope keeps the original receive time and sender sequence, so the store's ordering
decisions are the ones of the first attempt, and deterministic ids make a replay of something
already stored change nothing. Where it starts depends on where the letter failed: an intake
rejection is judged again by the intake rules as they are now; a ``deliver:<sink>`` letter goes to
that remote sink only; anything else runs the whole pipeline. The envelope is queued before the
letter is marked: a crash between the two leaves the letter open (replaying it again is harmless),
never a letter marked replayed with nothing queued. A replay that fails again becomes a new open
letter whose ``replay_of`` names this one: a chain an operator can follow.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.broker import Broker

from gateway import logcontext
from gateway.envelope import Envelope, Kind
from gateway.errors import OperatorRefused
from gateway.journal.dead_letters import REPLAY_OF, DeadLetter, DeadLetterStore
from gateway.journal.messages import MessageArchive
from gateway.keys import ACTOR, QUEUE
from gateway.metrics import recorder
from gateway.mllp.triage import Triage
from gateway.queue.broker import make_broker
from gateway.queue.entry import new_envelope_id
from gateway.services.pipeline import REPLAY_SINK
from gateway.stages import Stage, sink_stage
from gateway.store import audit
from gateway.store.audit import Entity, OperatorAction, Outcome

log = logging.getLogger(__name__)

#: Envelope meta: who replayed, and whether the raw message is an operator's edit.
REPLAYED_BY = "replayed_by"
EDITED = "edited"


class ReplayRefused(OperatorRefused):
    """The letter cannot be replayed (unknown, or not open); the text says why, without PHI."""


@dataclass(frozen=True, slots=True)
class Replayed:
    letter: DeadLetter
    envelope: Envelope
    #: False when the letter was marked by another replay meanwhile (this one was queued too).
    marked: bool


class Replayer:
    """Replays dead letters onto the queue through ``enqueue`` (the broker's, or a test's)."""

    def __init__(self, letters: DeadLetterStore, enqueue: Callable[[Envelope], None], triage: Triage | None = None):
        self.letters = letters
        self.archive = MessageArchive(letters.engine)
        self.enqueue = enqueue
        self.triage = triage or Triage()
        self.metrics = recorder()

    def replay(
        self, letter_id: str, who: str, raw: bytes | None = None, *, role: str | None = None, audited: bool = True
    ) -> Replayed:
        """Queue the letter's message again (``raw``: an operator's corrected copy; the letter keeps
        the bytes it was received with), mark the letter replayed and record the action as an
        AuditEvent (``audited``: a job records itself once, not each of its letters)."""
        action = OperatorAction.edit_replay if raw is not None else OperatorAction.replay
        letter = self.letters.get(letter_id)
        if letter is not None and _is_notification(letter):
            raise ReplayRefused(
                f"dead letter {letter_id} is a Subscription notification its endpoint refused: it is not a "
                "message to replay (the subscriber fetches what it missed from the history feed)"
            )
        if letter is None or letter.status != "open":
            why = f"no dead letter {letter_id}" if letter is None else f"dead letter {letter_id} is {letter.status}"
            if letter is not None and letter.replayed_as:
                why += f" (replayed as {letter.replayed_as})"
            if audited:
                audit.record(
                    self.letters.engine,
                    action,
                    who,
                    Outcome.serious_failure,
                    [Entity("dead-letter", letter_id)],
                    role=role,
                    outcome_text=why,
                )
            raise ReplayRefused(why, missing=letter is None)
        envelope = self.envelope_for(letter, who, raw)
        with logcontext.message_context(envelope.id, envelope.sender, envelope.control_id):
            self.enqueue(envelope)
            self.metrics.replayed("replay")
            note = "replayed with an edited message" if raw is not None else ""
            marked = self.letters.mark_replayed(letter.id, envelope.id, who, note)
            if audited:
                entities = [Entity("dead-letter", letter.id), Entity("message", envelope.id)]
                audit.record(self.letters.engine, action, who, Outcome.success, entities, role=role)
            log.info(
                "dead letter %s (sender %s, control id %s, stage %s) replayed as %s by %s",
                letter.id,
                letter.sender,
                letter.control_id,
                letter.stage,
                envelope.id,
                who,
                extra={"outcome": "replayed", "dead_letter_id": letter.id},
            )
        return Replayed(letter, envelope, marked)

    def replay_many(
        self, letters: list[DeadLetter], who: str, before_each: Callable[[], None] = lambda: None
    ) -> tuple[int, int]:
        """A job's slice: queue every letter's message (``before_each``: the job's pacing; archive
        rows read in one query), then mark them all replayed in one transaction; (replayed, skipped:
        not open any more)."""
        notifications = [letter for letter in letters if _is_notification(letter)]
        letters = [letter for letter in letters if not _is_notification(letter)]
        originals = self.archive.originals([letter.envelope_id for letter in letters])
        queued = []
        for letter in letters:
            before_each()
            envelope = self.envelope_for(letter, who, None, originals.get(letter.envelope_id))
            with logcontext.message_context(envelope.id, envelope.sender, envelope.control_id):
                self.enqueue(envelope)
                self.metrics.replayed("replay")
                log.debug("dead letter %s queued again by %s", letter.id, who, extra={"outcome": "replay-queued"})
            queued.append((letter.id, envelope.id))
        marked = self.letters.mark_replayed_many(queued, who)
        return marked, len(letters) - marked + len(notifications)

    def envelope_for(
        self, letter: DeadLetter, who: str, raw: bytes | None, original: tuple[int, int, str] | None = None
    ) -> Envelope:
        """The envelope a replay of ``letter`` queues: the original (receive time, sequence, message
        type) from the archive, so ordering decisions are the first attempt's."""
        if original is None:
            archived = self.archive.get(letter.envelope_id)
            original = (archived.received_at, archived.seq, archived.message_type) if archived else None
        received_at, seq, message_type = original if original is not None else (letter.created_at, 0, "")
        meta = {REPLAY_OF: letter.id, REPLAYED_BY: who[:128]}
        if raw is not None:
            meta[EDITED] = "1"
        body = raw if raw is not None else letter.raw
        kind, sender, control_id = Kind.MESSAGE, letter.sender, letter.control_id
        if letter.stage == Stage.INTAKE:
            # Judged again by the intake rules as they are now: accepted, or rejected once more
            # (a new letter, linked to this one).
            verdict = self.triage.decide(body)
            kind, sender, control_id = verdict.kind, verdict.sender or sender, verdict.control_id or control_id
            message_type = verdict.message_type or message_type
            if kind != Kind.MESSAGE:
                meta["reason"] = verdict.reason
        elif letter.stage == Stage.ARCHIVE:  # an incoming acknowledgement: kept again, never converted
            kind = Kind.ACK
        elif letter.stage.startswith(sink_stage("")):
            meta[REPLAY_SINK] = letter.stage.removeprefix(sink_stage(""))
        elif raw is not None:
            # An edited message may name another sender or control id: the envelope says what it holds.
            verdict = self.triage.decide(body)
            sender, control_id = verdict.sender or sender, verdict.control_id or control_id
        if message_type:
            meta["message_type"] = message_type
        return Envelope(new_envelope_id(), body, received_at, sender, control_id, "replay", seq, kind, meta)


def _is_notification(letter: DeadLetter) -> bool:
    """A Subscription notification refused by its endpoint (gateway/deliver/subscription_delivery.py)."""
    return letter.stage.startswith("subscription:")


def enqueue_on(broker: Broker, queue: str = QUEUE, actor: str = ACTOR) -> Callable[[Envelope], None]:
    """``enqueue(envelope)`` onto a pipeline queue, as the listener's intake would, but past
    intake's sequence and duplicate checks (a replay keeps the first attempt's)."""

    def enqueue(envelope: Envelope) -> None:
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queue, actor_name=actor, args=(envelope.to_json(),), kwargs={}, options={}
        )
        broker.enqueue(message)

    return enqueue


@contextlib.contextmanager
def queue_at(redis_url: str, namespace: str) -> Iterator[Callable[[Envelope], None]]:
    """``enqueue(envelope)`` onto the pipeline's queue at ``redis_url`` (an operator command's)."""
    broker = make_broker(redis_url, namespace=namespace)
    try:
        yield enqueue_on(broker)
    finally:
        broker.close()
