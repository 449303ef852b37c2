"""What an operator may do to dead letters and jobs, each recorded as an AuditEvent (who, what,
outcome, which letters or job): the command line and the /admin API call these, so both act and
audit alike. Replay is gateway/services/replay.py (it audits itself)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from gateway.envelope import Envelope
from gateway.errors import OperatorRefused, QueueUnavailable
from gateway.journal.dead_letters import DeadLetter, DeadLetterStore
from gateway.journal.jobs import Job, JobKind, JobStore
from gateway.mllp.triage import Triage
from gateway.services.jobs import check_filter
from gateway.services.replay import Replayer
from gateway.store import audit
from gateway.store.audit import Entity, OperatorAction, Outcome

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000
_JOB_ACTION = {"replay": OperatorAction.replay, "reprocess": OperatorAction.reprocess}


class ActionRefused(OperatorRefused):
    """The action does not apply (unknown id, wrong state, bad filter); the text says why, without PHI."""


def discard(engine: Engine, letter_id: str, who: str, reason: str, role: str | None = None) -> DeadLetter:
    """Mark an open letter discarded with who and why (nothing is deleted); returns it as now stored."""
    store = DeadLetterStore(engine)
    letter = store.get(letter_id)
    if not reason.strip():
        raise ActionRefused("a discard needs a reason", invalid=True)
    if letter is None or not store.discard(letter_id, who, reason):
        why = f"no dead letter {letter_id}" if letter is None else f"dead letter {letter_id} is {letter.status}"
        failed = [Entity("dead-letter", letter_id)]
        audit.record(engine, OperatorAction.discard, who, Outcome.serious_failure, failed, role=role, outcome_text=why)
        raise ActionRefused(why, missing=letter is None)
    discarded = [Entity("dead-letter", letter_id, {"reason": reason})]
    audit.record(engine, OperatorAction.discard, who, Outcome.success, discarded, role=role)
    done = store.get(letter_id)
    assert done is not None
    return done


def purge(engine: Engine, older_than_days: int, who: str, role: str | None = None) -> int:
    """Remove the raw messages of handled letters older than ``older_than_days``; how many."""
    if older_than_days < 1:
        raise ActionRefused("a purge keeps at least a day: older_than_days is 1 or more", invalid=True)
    count = DeadLetterStore(engine).purge(int(time.time() * 1000) - older_than_days * _DAY_MS)
    text = f"raw message removed from {count} handled letter(s) older than {older_than_days} days"
    audit.record(engine, OperatorAction.purge, who, Outcome.success, [], role=role, outcome_text=text)
    return count


def start_job(engine: Engine, kind: JobKind, filter: dict[str, Any], who: str, role: str | None = None) -> Job:
    """A replay or reprocess job over what ``filter`` matches, for the workers to run."""
    try:
        checked = check_filter(kind, filter)
    except ValueError as exc:
        raise ActionRefused(str(exc), invalid=True) from None
    job = JobStore(engine).create(kind, checked, who)
    detail = {key: str(value) for key, value in checked.items()}
    started = [Entity("job", job.id, detail)]
    audit.record(
        engine, _JOB_ACTION[kind], who, Outcome.success, started, role=role, outcome_text=f"{kind} job started"
    )
    return job


def control_job(engine: Engine, job_id: str, action: str, who: str, role: str | None = None) -> Job:
    """Pause, resume or cancel a job (a cancel is audited); returns the job as now stored."""
    jobs = JobStore(engine)
    if action not in ("pause", "resume", "cancel"):
        raise ActionRefused(f"a job can be paused, resumed or cancelled, not {action!r}", invalid=True)
    changed = jobs.control(job_id, action)
    if action == "cancel":
        outcome = Outcome.success if changed else Outcome.serious_failure
        audit.record(engine, OperatorAction.job_cancel, who, outcome, [Entity("job", job_id)], role=role)
    job = jobs.get(job_id)
    if job is None:
        raise ActionRefused(f"no job {job_id}", missing=True)
    if not changed:
        raise ActionRefused(f"job {job_id} is {job.status}: it cannot be {action}d")
    log.info("job %s %sd by %s", job_id, action, who)
    return job


class OperatorDesk:
    """The operator actions as the /admin API calls them (the API may not import services): replay
    onto the queue ``enqueue`` reaches (None: no queue configured for this process), discard, jobs."""

    def __init__(self, engine: Engine, enqueue: Callable[[Envelope], None] | None, triage: Triage | None = None):
        self.engine = engine
        self.enqueue = enqueue
        self.triage = triage

    def replay(self, letter_id: str, who: str, role: str, raw: bytes | None) -> dict[str, Any]:
        if self.enqueue is None:
            raise QueueUnavailable("no queue to replay onto: this API process has no HL7GW_REDIS_URL")
        done = Replayer(DeadLetterStore(self.engine), self.enqueue, self.triage).replay(letter_id, who, raw, role=role)
        letter = DeadLetterStore(self.engine).get(done.letter.id)
        assert letter is not None
        return {**letter.summary(), "replayed_as": done.envelope.id, "edited": raw is not None}

    def discard(self, letter_id: str, who: str, role: str, reason: str) -> dict[str, Any]:
        return discard(self.engine, letter_id, who, reason, role).summary()

    def start_job(self, kind: JobKind, filter: dict[str, Any], who: str, role: str) -> dict[str, Any]:
        return start_job(self.engine, kind, filter, who, role).as_data()

    def control_job(self, job_id: str, action: str, who: str, role: str) -> dict[str, Any]:
        return control_job(self.engine, job_id, action, who, role).as_data()
