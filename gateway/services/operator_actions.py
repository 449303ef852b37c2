"""What an operator may do to dead letters and jobs, each recorded as an AuditEvent (who, what,
outcome, which letters or job): the command line and the /admin API call these, so both act and
audit alike. Replay is gateway/services/replay.py (it audits itself)."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.engine import Engine

from gateway.errors import GatewayError
from gateway.journal.dead_letters import DeadLetter, DeadLetterStore
from gateway.journal.jobs import Job, JobKind, JobStore
from gateway.services.jobs import check_filter
from gateway.store import audit
from gateway.store.audit import Entity, OperatorAction, Outcome

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000
_JOB_ACTION = {"replay": OperatorAction.replay, "reprocess": OperatorAction.reprocess}


class ActionRefused(GatewayError):
    """The action does not apply (unknown id, wrong state, bad filter); the text says why, without PHI."""


def discard(engine: Engine, letter_id: str, who: str, reason: str, role: str | None = None) -> DeadLetter:
    """Mark an open letter discarded with who and why (nothing is deleted); returns it as now stored."""
    store = DeadLetterStore(engine)
    letter = store.get(letter_id)
    if not reason.strip():
        raise ActionRefused("a discard needs a reason")
    if letter is None or not store.discard(letter_id, who, reason):
        why = f"no dead letter {letter_id}" if letter is None else f"dead letter {letter_id} is {letter.status}"
        failed = [Entity("dead-letter", letter_id)]
        audit.record(engine, OperatorAction.discard, who, Outcome.serious_failure, failed, role=role, outcome_text=why)
        raise ActionRefused(why)
    discarded = [Entity("dead-letter", letter_id, {"reason": reason})]
    audit.record(engine, OperatorAction.discard, who, Outcome.success, discarded, role=role)
    done = store.get(letter_id)
    assert done is not None
    return done


def purge(engine: Engine, older_than_days: int, who: str, role: str | None = None) -> int:
    """Remove the raw messages of handled letters older than ``older_than_days``; how many."""
    if older_than_days < 1:
        raise ActionRefused("a purge keeps at least a day: older_than_days is 1 or more")
    count = DeadLetterStore(engine).purge(int(time.time() * 1000) - older_than_days * _DAY_MS)
    text = f"raw message removed from {count} handled letter(s) older than {older_than_days} days"
    audit.record(engine, OperatorAction.purge, who, Outcome.success, [], role=role, outcome_text=text)
    return count


def start_job(engine: Engine, kind: JobKind, filter: dict[str, Any], who: str, role: str | None = None) -> Job:
    """A replay or reprocess job over what ``filter`` matches, for the workers to run."""
    try:
        checked = check_filter(kind, filter)
    except ValueError as exc:
        raise ActionRefused(str(exc)) from None
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
        raise ActionRefused(f"a job can be paused, resumed or cancelled, not {action!r}")
    changed = jobs.control(job_id, action)
    if action == "cancel":
        outcome = Outcome.success if changed else Outcome.serious_failure
        audit.record(engine, OperatorAction.job_cancel, who, outcome, [Entity("job", job_id)], role=role)
    job = jobs.get(job_id)
    if job is None:
        raise ActionRefused(f"no job {job_id}")
    if not changed:
        raise ActionRefused(f"job {job_id} is {job.status}: it cannot be {action}d")
    log.info("job %s %sd by %s", job_id, action, who)
    return job
