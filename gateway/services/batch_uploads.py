"""What POST /hl7/batch runs (gateway/api/hl7_batch.py BatchUploads): an uploaded batch file
imported as ``hl7gw import`` imports one (gateway/services/importer.py: the same feeder, intake,
queue, job record and log line), answered with its batch acknowledgement.

The importer (its intake: Redis connections, its triage: the mappings' message types) is made
once, on an event loop of its own in a thread, so that an import never holds up the API's loop;
uploads run on it side by side. An upload is imported as a stream: no resume by hash (the sender
waits for the acknowledgement; sent again, its messages are answered as duplicates).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gateway.api.hl7_batch import UPLOAD_DIR
from gateway.config import Settings
from gateway.hl7.batch import open_batch_file, read_batch
from gateway.journal.jobs import JobStore
from gateway.services.batch_answer import batch_acknowledgement, not_accepted
from gateway.services.importer import Importer
from gateway.store import audit
from gateway.store.audit import Entity, OperatorAction, Outcome

log = logging.getLogger(__name__)


class BatchUploads:
    def __init__(self, settings: Settings, redis_url: str, jobs: JobStore | None):
        self.settings, self.redis_url, self.jobs = settings, redis_url, jobs
        _remove_stale_uploads(settings.storage.data_dir / UPLOAD_DIR)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._importer: Importer | None = None

    def import_upload(self, path: Path, who: str, role: str) -> tuple[bytes, dict[str, Any]]:
        """Import the file at ``path`` (blocking: call it from a worker thread); recorded as an
        AuditEvent naming the token (``who``, ``role``) and the import's job."""
        loop = self._started()
        ack, summary = asyncio.run_coroutine_threadsafe(self._import(path, who), loop).result()
        if self.jobs is not None:
            outcome = (
                Outcome.serious_failure
                if summary["error"]
                else Outcome.minor_failure
                if summary["not_accepted"]
                else Outcome.success
            )
            text = f"read {summary['read']}, accepted {summary['accepted']}, duplicates {summary['duplicates']}, "
            text += f"not accepted {summary['not_accepted']}"
            entities = [Entity("job", summary["job"])] if summary["job"] else []
            audit.record(
                self.jobs.engine, OperatorAction.batch_upload, who, outcome, entities, role=role, outcome_text=text
            )
        return ack, summary

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="hl7gw-batch-uploads", daemon=True).start()
                self._loop = loop
            return self._loop

    async def _import(self, path: Path, who: str) -> tuple[bytes, dict[str, Any]]:
        if self._importer is None:
            # Every message not accepted is kept (with its bytes) for the acknowledgement: at most
            # the upload itself, which HL7GW_BATCH_MAX_UPLOAD_BYTES bounds.
            importer = Importer(
                self.settings, self.redis_url, jobs=self.jobs, who="POST /hl7/batch", max_problems=sys.maxsize
            )
            await importer.__aenter__()
            self._importer = importer
        importer = self._importer
        # The job record names the token (no await between this and the job's creation).
        importer.who = f"POST /hl7/batch ({who})"
        with open_batch_file(path) as stream:
            result = await importer.import_stream(stream, name="POST /hl7/batch")
        report = result.report
        rest = read_batch(open_batch_file(path)) if report.error else ()
        ack = await asyncio.to_thread(batch_acknowledgement, report, rest)
        summary: dict[str, Any] = {
            "job": result.job_id,
            "read": report.read + report.pieces,
            "accepted": report.accepted,
            "duplicates": report.duplicates,
            "not_accepted": not_accepted(report),
            "mismatch": report.mismatch,
            "error": report.error or None,
        }
        return ack, summary

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if self._importer is not None:
            asyncio.run_coroutine_threadsafe(self._importer.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


#: An upload's spooled body older than this is left over from an API process that died.
STALE_UPLOAD_S = 86_400


def _remove_stale_uploads(spool: Path) -> None:
    """Delete bodies a killed API process left in the spool (a day old: no upload takes that long)."""
    if not spool.is_dir():
        return
    for path in spool.glob("upload-*"):
        try:
            if time.time() - path.stat().st_mtime > STALE_UPLOAD_S:
                path.unlink()
                log.info("removed %s, an upload left by an API process that stopped", path.name)
        except OSError:
            continue
