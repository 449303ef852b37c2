"""The access audit trail's writer process: what the API hands it over a pipe, and its loop.

The API process only encodes a small header and the answer's bytes as it sent them and writes them
to a pipe (gateway/store/audit_relay.py); this process finds the Patients, makes the AuditEvents and
writes them with an ``AuditTrail`` of its own (gateway/store/audit_trail.py), so none of that work
holds the API's interpreter lock.

Messages, one ``send_bytes`` each, the first byte saying what follows:

* API to writer: ``A`` an ``Access`` (a JSON header, a newline, the answer); ``E`` a ready AuditEvent
  (a failed authentication) as JSON; ``F`` a flush, with its number; ``C`` close: drain and stop.
* Writer to API: ``S`` the totals written and dropped (once when it is ready to take records, after
  each write, and before a flush's answer); ``F`` the number of a flush done.

The writer stops on ``C`` and on the end of the pipe (the API process is gone): in both cases it
first writes what it holds (for at most the trail's ``drain_s``).
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from gateway import fhirjson, logs, metrics
from gateway.db.engine import make_engine
from gateway.store.access_events import Access, Interaction
from gateway.store.audit_trail import AuditTrail, Record
from gateway.store.resources import ResourceStore

log = logging.getLogger(__name__)

ACCESS, EVENT, FLUSH, CLOSE, STATUS = b"A", b"E", b"F", b"C", b"S"
#: How often the writer tells the API its totals when they moved.
_REPORT_EVERY_S = 0.05


def encode(record: Record) -> bytes:
    """The message carrying ``record`` to the writer."""
    if not isinstance(record, Access):
        return EVENT + fhirjson.dumps(record)
    header = {
        "interaction": record.interaction.value,
        "who": record.who,
        "role": record.role,
        "client": record.client,
        "server": record.server,
        "request": record.request,
        "recorded": record.recorded.isoformat(),
        "what": record.what,
        "request_id": record.request_id,
        "parameters": record.parameters,
        "operation": record.operation,
    }
    return b"".join((ACCESS, fhirjson.dumps(header), b"\n", record.answer))


def decode(message: bytes) -> Record:
    """The record an ``A`` or ``E`` message carries."""
    if message[:1] == EVENT:
        event: dict[str, Any] = fhirjson.loads(message[1:])
        return event
    header_end = message.index(b"\n")
    header = fhirjson.loads(message[1:header_end])
    return Access(
        interaction=Interaction(header["interaction"]),
        who=header["who"],
        role=header["role"],
        client=header["client"],
        server=header["server"],
        request=header["request"],
        answer=message[header_end + 1 :],
        recorded=datetime.fromisoformat(header["recorded"]),
        what=header["what"],
        request_id=header["request_id"],
        parameters=header.get("parameters"),
        operation=header.get("operation"),
    )


def status(written: int, dropped: int) -> bytes:
    return STATUS + fhirjson.dumps([written, dropped])


def serve(conn: Connection, database_url: str, options: dict[str, Any], log_level: str, log_format: str) -> None:
    """The writer process's body: take records from ``conn`` until told to close or the API is gone.
    ``options``: the AuditTrail's ``retention_days``, ``linger_s`` and ``drain_s``."""
    # Ctrl-C reaches the whole process group: the API then closes the writer in order. SIGTERM (sent
    # to the writer alone, or by multiprocessing when the API exits without closing) writes what
    # it holds and stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    logs.setup(log_level, log_format, process="audit-writer")
    metrics.configure(False)  # the API process counts what the writer reports
    engine = make_engine(database_url)
    # The API bounds what is in flight; here nothing waits and nothing is refused for room.
    trail = AuditTrail(ResourceStore(engine), capacity=1 << 30, pause_s=0.0, **options)
    trail.start()
    sending = threading.Lock()
    stopped = threading.Event()
    unreadable = 0  # records that could not be decoded (a defect): dropped too

    def totals() -> bytes:
        return status(trail.written, trail.dropped + unreadable)

    def send(message: bytes) -> None:
        with sending:
            try:
                conn.send_bytes(message)
            except OSError:  # the API is gone: what is queued is still written
                stopped.set()

    def report() -> None:
        told = status(0, 0)
        while not stopped.wait(_REPORT_EVERY_S):
            now = totals()
            if now != told:
                send(now)
                told = now

    send(totals())  # ready: the API takes this first report as the sign that the writer runs
    reporter = threading.Thread(target=report, name="hl7gw-audit-report", daemon=True)
    reporter.start()
    try:
        while True:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                break
            kind = message[:1]
            if kind in (ACCESS, EVENT):
                unreadable += not _take(trail, message)
            elif kind == FLUSH:
                trail.flush()
                send(totals())
                send(message)
            elif kind == CLOSE:
                break
    finally:
        trail.close()
        stopped.set()
        reporter.join()
        send(totals())
        conn.close()
        engine.dispose()


def _stop(_signal: int, _frame: object) -> None:
    raise SystemExit(0)  # out of the loop: ``serve``'s finally writes what the trail holds


def _take(trail: AuditTrail, message: bytes) -> bool:
    """Queue the record of ``message``; False for one that cannot be read (a defect), which is logged."""
    try:
        record = decode(message)
    except (ValueError, KeyError, TypeError) as exc:
        log.error("audit trail: a record from the API could not be read (%s)", type(exc).__name__)
        return False
    trail.submit(record)  # never refused here: a refusal (closing) is counted by the trail
    return True
