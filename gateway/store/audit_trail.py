"""The access audit trail's writer: a bounded in-memory queue and one thread that writes it to the store
in batches, so an API request only appends to a list.

* ``submit`` queues an ``Access`` (its AuditEvents are made on the writer thread: finding the
  Patients in an answer costs more than the request should pay) or a ready AuditEvent.
* The thread wakes every ``linger_s`` (or when ``batch`` records wait) and writes what is queued in
  one transaction. A record waits at most ``linger_s`` plus one write in memory only: what a killed
  process (SIGKILL, power loss) loses. SIGTERM drains (``close``).
* A full queue (the database is down or far too slow) makes ``submit`` wait up to ``block_s`` for
  room; then the record is refused, counted in ``dropped`` and logged, and the caller decides: the
  API answers 503 rather than release patient data whose access would go unrecorded (fail closed).
  Failed authentications may use only ``capacity // 2`` of the queue, so a flood of bad tokens
  cannot crowd out reads; theirs are dropped (counted, logged) rather than waited for.
* A write that fails for an outage of the database is retried with backoff until it succeeds; one
  the database refuses (a defect, a missing table) is given up after three tries; on ``close``
  whatever still cannot be written after ``drain_s`` is given up. What is given up is counted in
  ``dropped`` and logged.
* Once an hour (and at ``start``) it deletes AuditEvents past the retention (gateway/store/audit_retention.py).

``pending``, ``written`` and ``dropped`` are the figures of hl7gw_audit_events_pending,
hl7gw_audit_events_written_total and hl7gw_audit_events_dropped_total (records: one read or
search, or one refused request, is one record and one AuditEvent).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from gateway.errors import GatewayError, Policy, describe, policy_of
from gateway.metrics import recorder
from gateway.store.access_events import Access, access_events
from gateway.store.audit_append import insert, prepare
from gateway.store.audit_retention import purge_expired
from gateway.store.resources import ResourceStore, delivery_error

log = logging.getLogger(__name__)

Record = Access | dict[str, Any]
#: Most AuditEvents per transaction.
_EVENTS_PER_WRITE = 500
_RETENTION_EVERY_S = 3600.0
#: The trail's thread sleeps this long after each record and event it makes (it holds the GIL meanwhile).
_PAUSE_S = 0.0001
_MAX_BACKOFF_S = 10.0
#: A batch the database refuses (not an outage) this many times is given up, counted and logged.
_REFUSALS = 3
#: A trail started by a first ``submit`` (an app served without its lifespan, as tests do) stops
#: its thread after this long with nothing to write, and starts it again on the next record.
_IDLE_EXIT_S = 5.0


class AuditTrail:
    """Queue AuditEvents and write them in the background; ``start`` and ``close`` bracket its life."""

    def __init__(
        self,
        store: ResourceStore,
        *,
        retention_days: int = 0,
        capacity: int = 10_000,
        batch: int = 200,
        linger_s: float = 0.25,
        block_s: float = 2.0,
        drain_s: float = 8.0,
        pause_s: float = _PAUSE_S,
    ):
        self.store = store
        self.retention_days = retention_days
        self.capacity, self.batch = capacity, batch
        self.linger_s, self.block_s, self.drain_s = linger_s, block_s, drain_s
        #: Sleep this long after each record and event made; 0 in a process of its own (gateway/store/audit_relay.py).
        self.pause_s = pause_s
        #: Records written (committed), and records refused or lost.
        self.written = 0
        self.dropped = 0
        self._metrics = recorder()
        self._queue: collections.deque[Record] = collections.deque()
        self._in_hand = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._persistent = False
        self._closing = False
        self._closing_at: float | None = None
        self._next_purge = 0.0
        self._lost_now = 0
        #: Set by flush: write what is queued now rather than at the next tick.
        self._hurry = False

    @property
    def pending(self) -> int:
        """Records queued or being written."""
        return len(self._queue) + self._in_hand

    # -- the API's side -----------------------------------------------------------------------------
    def submit(self, record: Record, *, wait: bool = True) -> bool:
        """Queue ``record``; False when it was refused (queue full, or closed): then it is counted and logged.

        ``wait`` False (failed authentications): no wait, and only half the queue may be used.
        """
        limit = self.capacity if wait else self.capacity // 2
        with self._cond:
            if len(self._queue) >= limit and wait and not self._closing:
                self._cond.wait_for(lambda: len(self._queue) < limit or self._closing, timeout=self.block_s)
            if len(self._queue) >= limit or self._closing:
                self.dropped += 1
                self._metrics.audit_dropped()
                refused = self.dropped
            else:
                self._queue.append(record)
                if len(self._queue) == self.batch:
                    self._cond.notify_all()
                self._ensure_thread()
                return True
        log.error(
            "audit trail: a record was refused (%s; %d refused so far)",
            "closed" if self._closing else f"{limit} records waiting",
            refused,
        )
        return False

    def start(self) -> None:
        """Run the writer thread until ``close``, purging expired events now and every hour."""
        with self._cond:
            self._persistent = True
            self._next_purge = time.monotonic()
            self._ensure_thread()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record queued so far is written (or refused); False on timeout."""
        with self._cond:
            self._hurry = True
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: not self._queue and not self._in_hand, timeout=timeout)
            self._hurry = False
            return done

    def close(self) -> None:
        """Write what is queued (trying for at most ``drain_s``), then stop the thread."""
        with self._cond:
            self._closing = True
            self._closing_at = time.monotonic()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(self.drain_s + 5)
        with self._cond:
            lost = len(self._queue)
            self._queue.clear()
            self.dropped += lost
            self._metrics.audit_dropped(lost)
            self._metrics.audit_pending(0)
        if lost:
            log.error("audit trail: %d record(s) could not be written before shutdown", lost)

    # -- the writer thread --------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        """Start the writer if it is not running (the caller holds the lock)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="hl7gw-audit-trail", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            if taken:
                self._write(taken)
            if self._persistent and self.retention_days and time.monotonic() >= self._next_purge:
                self._purge()

    def _take(self) -> list[Record] | None:
        """The next batch: what is queued at a tick of ``linger_s`` (or sooner when ``batch`` records wait,
        or on flush or close); [] when only the purge is due; None: stop. The writer wakes on its clock,
        not on each record, so a request never hands it the processor."""
        with self._cond:
            idle_since = time.monotonic()
            while True:
                if self._queue and (self._closing or self._hurry or len(self._queue) >= self.batch):
                    break
                if not self._queue:
                    if self._closing:
                        return None
                    if not self._persistent and time.monotonic() - idle_since >= _IDLE_EXIT_S:
                        self._thread = None  # a later submit starts another
                        return None
                    if self._persistent and self.retention_days and time.monotonic() >= self._next_purge:
                        return []
                if not self._cond.wait(timeout=self.linger_s) and self._queue:
                    break  # a whole tick passed with records waiting
            taken = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
            self._in_hand = len(taken)
            self._metrics.audit_pending(len(self._queue) + len(taken))
            self._hurry = bool(self._queue) and self._hurry
            self._cond.notify_all()  # room for waiting submitters
            return taken

    def _write(self, records: list[Record]) -> None:
        """Write ``records``' events, retrying with backoff; when closing, give up after ``drain_s``."""
        try:
            events = []
            for record in records:
                events += _events(record)
                self._pause()
        except Exception as exc:  # noqa: BLE001 - a record the builder cannot handle is a defect: say it, go on
            events = []
            self._lost(records, f"cannot make their AuditEvents: {type(exc).__name__}")
        backoff, refusals = 0.5, 0
        chunks = [events[start : start + _EVENTS_PER_WRITE] for start in range(0, len(events), _EVENTS_PER_WRITE)]
        while chunks:
            try:
                self._store(chunks[0])
            except (SQLAlchemyError, GatewayError) as exc:
                # An outage is waited out; a refusal (a defect, a schema that is not there) is tried a few times.
                refusals += policy_of(exc) is not Policy.OUTAGE
                closing_at = self._closing_at
                if refusals >= _REFUSALS or (closing_at is not None and time.monotonic() >= closing_at + self.drain_s):
                    self._lost(records, describe(exc))
                    break
                waiting = sum(len(chunk) for chunk in chunks)
                log.warning(
                    "audit trail: cannot write %d event(s), retrying in %.1f s (%s)", waiting, backoff, describe(exc)
                )
                with self._cond:  # close wakes it, and the drain has its own deadline
                    if self._closing_at is not None:
                        backoff = min(backoff, max(0.0, self._closing_at + self.drain_s - time.monotonic()))
                    self._cond.wait(timeout=backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            chunks.pop(0)
        with self._cond:
            self.written += len(records) - self._lost_now
            self._metrics.audit_written(len(records) - self._lost_now)
            self._lost_now = 0
            self._in_hand = 0
            self._metrics.audit_pending(len(self._queue))
            self._cond.notify_all()

    def _lost(self, records: list[Record], why: str) -> None:
        with self._cond:
            self.dropped += len(records)
            self._metrics.audit_dropped(len(records))
            self._lost_now = len(records)
        log.error("audit trail: %d record(s) lost: %s", len(records), why)

    def _store(self, events: list[dict[str, Any]]) -> None:
        prepared = prepare(events, _now(), self._pause)  # before the transaction: SQLite's write lock is held briefly
        with self.store.transaction() as conn:
            try:
                insert(conn, prepared)
            except SQLAlchemyError as exc:
                raise delivery_error(exc) from exc
            conn.commit()

    def _purge(self) -> None:
        self._next_purge = time.monotonic() + _RETENTION_EVERY_S
        before = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=self.retention_days)
        try:
            purged = purge_expired(self.store.engine, before)
        except SQLAlchemyError as exc:
            log.warning("audit trail: retention could not delete expired AuditEvents (%s)", describe(exc))
            return
        if purged:
            log.info("audit trail: deleted %d AuditEvent(s) recorded before %s", purged, before.date().isoformat())

    def _pause(self) -> None:
        """Let the API's threads have the interpreter: the trail's work is never urgent, a request's is."""
        if self.pause_s:
            time.sleep(self.pause_s)


def _events(record: Record) -> list[dict[str, Any]]:
    return access_events(record) if isinstance(record, Access) else [record]


def _now() -> datetime:
    """meta.lastUpdated as the store keeps it: naive UTC, whole milliseconds."""
    moment = datetime.now(UTC).replace(tzinfo=None)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
