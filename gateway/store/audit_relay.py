"""The access audit trail as the API process sees it: each record goes over a pipe to a writer process
(gateway/store/audit_process.py), which finds the Patients, makes the AuditEvents and writes them.

Finding the Patients in an answer and writing their events cost a page of 50 Observations about
0.3 ms of processor; on a thread of the API process that time was taken from the requests (the
interpreter lock), +17 to +26% at the median on PostgreSQL. Here a request pays for a small header and
one write of the answer's bytes to a pipe (docs/observability.md, "What it costs").

The guarantees of gateway/store/audit_trail.py hold across the two processes:

* At most ``capacity`` records are in flight (sent, not yet written or dropped, as the writer
  reports); a full relay makes ``submit`` wait up to ``block_s``, then refuse: the API answers 503
  rather than release patient data whose access would go unrecorded. Failed authentications may
  use only half, and never wait.
* A writer process that ended (killed, crashed) loses what it held: counted in ``dropped`` and
  logged; the next record starts another. A writer that cannot start refuses the record.
* ``close`` tells the writer to drain (it tries for ``drain_s``) and waits for it. When the API
  process is killed, the writer sees its pipe close, writes what it holds and stops.

The writer starts from a fork server (multiprocessing's ``forkserver``, with this module's
writer preloaded): a clean process, not a fork of the API's threads, and quick to start again.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from gateway import fhirjson
from gateway.metrics import recorder
from gateway.store import audit_process
from gateway.store.audit_trail import Record

log = logging.getLogger(__name__)

#: How long a new writer may take to say it is ready (connecting to the database is not needed for that).
_START_TIMEOUT_S = 30.0
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["gateway.store.audit_process"])


@dataclass(eq=False)
class _Writer:
    """One writer process and what it was sent and reported."""

    process: BaseProcess
    conn: Connection
    sent: int = 0
    written: int = 0
    dropped: int = 0
    #: The number of the last flush it answered.
    flushed: int = 0
    reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def in_flight(self) -> int:
        return self.sent - self.written - self.dropped


class AuditRelay:
    """Hand AuditEvent records to a writer process; ``start`` and ``close`` bracket its life."""

    def __init__(
        self,
        database_url: str,
        *,
        retention_days: int = 0,
        capacity: int = 10_000,
        block_s: float = 2.0,
        drain_s: float = 8.0,
        linger_s: float = 1.0,
        log_level: str = "INFO",
        log_format: str = "text",
    ):
        self.database_url = database_url
        self.retention_days = retention_days
        self.capacity, self.block_s, self.drain_s = capacity, block_s, drain_s
        #: How long the writer lets records gather before a write (its trail's ``linger_s``): a second,
        #: as each SQLite commit makes every reading connection drop its page cache (docs/observability.md).
        self.linger_s = linger_s
        self.log_level, self.log_format = log_level, log_format
        #: Records written (committed), and records refused or lost, over every writer process.
        self.written = 0
        self.dropped = 0
        self._metrics = recorder()
        self._cond = threading.Condition()
        self._sending = threading.Lock()
        self._writer: _Writer | None = None
        self._closing = False
        self._flushes = 0

    @property
    def pending(self) -> int:
        """Records sent to the writer and not yet written or dropped."""
        writer = self._writer
        return writer.in_flight if writer is not None else 0

    def submit(self, record: Record, *, wait: bool = True) -> bool:
        """Send ``record`` to the writer; False when it was refused (full, closed, no writer): counted and logged."""
        message = audit_process.encode(record)
        limit = self.capacity if wait else self.capacity // 2
        refused = None
        with self._cond:
            if wait and not self._closing and self.pending >= limit:
                self._cond.wait_for(lambda: self.pending < limit or self._closing, timeout=self.block_s)
            writer = None
            if self._closing:
                refused = "closed"
            elif self.pending >= limit:
                refused = f"{limit} records waiting"
            else:
                writer = self._running_writer()
                if writer is None:
                    refused = "the writer process did not start"
            if writer is None:
                self.dropped += 1
                self._metrics.audit_dropped()
                count = self.dropped
            else:
                writer.sent += 1
                self._metrics.audit_pending(writer.in_flight)
        if writer is None:
            log.error("audit trail: a record was refused (%s; %d refused so far)", refused, count)
            return False
        try:
            with self._sending:
                writer.conn.send_bytes(message)
        except OSError:
            self._ended(writer)  # counts this record and what else it held as lost
            return False
        return True

    def start(self) -> None:
        """Start the writer process now (it purges expired AuditEvents at start and every hour)."""
        with self._cond:
            self._running_writer()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record sent so far is written (or dropped); False on timeout or a lost writer."""
        with self._cond:
            writer = self._writer
            if writer is None:
                return True
            self._flushes += 1
            number = self._flushes
        try:
            with self._sending:
                writer.conn.send_bytes(audit_process.FLUSH + str(number).encode())
        except OSError:
            self._ended(writer)
            return False
        with self._cond:
            return self._cond.wait_for(lambda: writer.flushed >= number or self._writer is not writer, timeout) and (
                writer.flushed >= number
            )

    def close(self) -> None:
        """Have the writer write what it holds (for at most ``drain_s``) and stop; then stop taking records."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            writer = self._writer
        if writer is None:
            return
        try:
            with self._sending:
                writer.conn.send_bytes(audit_process.CLOSE)
        except OSError:
            pass  # already gone: the reader counts what it held
        writer.process.join(self.drain_s + 5)
        if writer.process.is_alive():
            log.error("audit trail: the writer process did not stop in time; stopping it")
            writer.process.kill()
            writer.process.join(5)
        if writer.reader is not None:
            writer.reader.join(5)
        self._ended(writer)
        self._metrics.audit_pending(0)

    # -- the writer process -------------------------------------------------------------------------
    def _running_writer(self) -> _Writer | None:
        """The writer, started if there is none (the caller holds the lock); None if it cannot start."""
        if self._writer is not None:
            return self._writer
        ours, theirs = _CONTEXT.Pipe(duplex=True)
        process = _CONTEXT.Process(
            target=audit_process.serve,
            args=(theirs, self.database_url, self._trail_options(), self.log_level, self.log_format),
            name="hl7gw-audit-writer",
            daemon=True,
        )
        try:
            try:
                process.start()
            finally:
                theirs.close()  # the writer has its copy: its exit now ends the pipe
            ready = ours.poll(_START_TIMEOUT_S) and ours.recv_bytes()[:1] == audit_process.STATUS
        except (OSError, EOFError):  # could not fork, or it ended before it was ready
            ready = False
        if not ready:
            if process.is_alive():
                process.kill()
            if process.pid is not None:
                process.join(5)
            ours.close()
            log.error("audit trail: the writer process did not start (exit code %s)", process.exitcode)
            return None
        writer = _Writer(process, ours)
        writer.reader = threading.Thread(target=self._listen, args=(writer,), name="hl7gw-audit-relay", daemon=True)
        writer.reader.start()
        self._writer = writer
        return writer

    def _trail_options(self) -> dict[str, float]:
        """The writer's AuditTrail settings (gateway/store/audit_trail.py) as this relay has them now."""
        return {"retention_days": self.retention_days, "linger_s": self.linger_s, "drain_s": self.drain_s}

    def _listen(self, writer: _Writer) -> None:
        """Take the writer's reports until its end of the pipe closes."""
        while True:
            try:
                message = writer.conn.recv_bytes()
            except (EOFError, OSError):
                break
            with self._cond:
                if message[:1] == audit_process.STATUS:
                    written, dropped = fhirjson.loads(message[1:])
                    self._count(writer, written - writer.written, dropped - writer.dropped)
                elif message[:1] == audit_process.FLUSH:
                    writer.flushed = int(message[1:])
                self._cond.notify_all()
        self._ended(writer)

    def _count(self, writer: _Writer, written: int, dropped: int) -> None:
        writer.written += written
        writer.dropped += dropped
        self.written += written
        self.dropped += dropped
        if written:
            self._metrics.audit_written(written)
        if dropped:
            self._metrics.audit_dropped(dropped)
        self._metrics.audit_pending(writer.in_flight)

    def _ended(self, writer: _Writer) -> None:
        """``writer`` is gone: what it held and did not report is lost."""
        with self._cond:
            if self._writer is not writer:
                return
            self._writer = None
            lost = writer.in_flight
            self._count(writer, 0, lost)
            self._cond.notify_all()
        writer.conn.close()
        if lost:
            why = "before shutdown" if self._closing else "the writer process ended"
            log.error("audit trail: %d record(s) could not be written (%s)", lost, why)
