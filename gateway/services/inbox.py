"""The watched inbox (HL7GW_INBOX_DIR): batch files put there are imported, then moved to ``done/``
or ``failed/`` with ``<name>.report.json`` beside them (docs/batch.md, The watched inbox).

A process of its own under ``hl7gw run`` (role ``inbox``, started only when HL7GW_INBOX_DIR is set;
``hl7gw inbox`` runs it alone): an import reads, hashes and commits as fast as the queue takes it,
which would otherwise share a core and an event loop with the listener's or the API's latency.
It imports one file at a time with the importer of ``hl7gw import`` (gateway/services/importer.py):
the same resumable progress by SHA-256, the same job records, the same queue.

- ``done/``: the file was imported, even with rejected messages (those are dead letters, listed
  in the report with their byte offsets and MSH-10), or it had been imported before (its hash
  says so: nothing is sent again; the report says ``already-imported``).
- ``failed/``: it could not be imported at all: not HL7 v2 (no MSH, BHS or FHS at its start, or
  no message in it), a gzip file that does not decompress, a file that cannot be read.
- Left where it is: the queue did not take its messages (Redis down). It is tried again, and
  its import resumes after the last committed message; so does one stopped half-way (SIGTERM,
  kill -9, a crash) when the inbox starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import signal
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import InboxSettings, Settings
from gateway.db.engine import make_engine
from gateway.errors import ConfigError
from gateway.hl7.batch_sniff import file_starts_like_hl7
from gateway.journal.jobs import JobStore
from gateway.metrics import recorder
from gateway.procutil import signal_ready
from gateway.services.importer import Importer, ImportResult
from gateway.services.inbox_scan import REPORT_SUFFIX, InboxScanner

log = logging.getLogger(__name__)
DONE, FAILED = "done", "failed"
#: Seconds before a file whose messages the queue did not take is tried again.
RETRY_S = 10.0
#: Messages not accepted listed in a report (beyond them, ``problems_omitted`` counts them).
REPORTED_PROBLEMS = 10_000


class Inbox:
    def __init__(self, settings: InboxSettings, importer: Importer):
        assert settings.directory is not None
        self.directory = Path(settings.directory)
        self.settings, self.importer = settings, importer
        for sub in (DONE, FAILED):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self.scanner = InboxScanner(self.directory, settings.settle_s)
        self._retry_at: dict[str, float] = {}
        self.metrics = recorder()

    async def watch(self, stop: asyncio.Event) -> None:
        """Scan and import until ``stop`` is set; an import under way is then cancelled (it resumes
        at the next start from its progress record)."""
        log.info("watching inbox %s (settle %g s)", self.directory, self.settings.settle_s)
        while not stop.is_set():
            for path in self.scanner.scan():
                if stop.is_set():
                    break
                if self._retry_at.get(path.name, 0.0) > time.monotonic():
                    continue
                task = asyncio.ensure_future(self.take(path))
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    log.info("inbox stopping: the import of %s resumes at the next start", path.name)
                    return
                task.result()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.poll_s)

    async def take(self, path: Path) -> str:
        """Import one file and move it away; returns done, failed, or "" (left to try again)."""
        name = path.name
        started = time.monotonic()
        result: ImportResult | None = None
        try:
            if path.stat().st_size == 0:
                return self._finish(path, FAILED, "empty file")
            if not await asyncio.to_thread(file_starts_like_hl7, path):
                return self._finish(path, FAILED, "not HL7 v2: the file does not start with an MSH, BHS or FHS segment")
            result = await self.importer.import_file(path)
        except FileNotFoundError:
            self.scanner.forget(name)  # taken away meanwhile
            return ""
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            return self._finish(path, FAILED, f"could not be read: {type(exc).__name__}: {exc}", result)
        if result.status == "failed":
            self._retry_at[name] = time.monotonic() + RETRY_S
            self.scanner.forget(name)
            log.warning("%s: %s; tried again in %.0f s (the import resumes)", name, result.report.error, RETRY_S)
            return ""
        if not result.totals.get("read", 0) and result.status == "done":
            return self._finish(path, FAILED, "no HL7 v2 message in the file", result)
        self._retry_at.pop(name, None)
        return self._finish(path, DONE, "", result, seconds=time.monotonic() - started)

    def _finish(
        self, path: Path, where: str, reason: str, result: ImportResult | None = None, seconds: float = 0.0
    ) -> str:
        target = _free_name(self.directory / where, path.name)
        status = (
            "failed"
            if where == FAILED
            else "already-imported"
            if result and result.status == "already-done"
            else "imported"
        )
        report: dict[str, Any] = {
            "file": path.name,
            "moved_to": f"{where}/{target.name}",
            "status": status,
            "reason": reason or None,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if result is not None:
            report["import"] = result.as_data(detail=True)
        # The report first, then the file: a crash in between leaves the file in the inbox, taken
        # again at the next start (recognised by its hash: nothing sent twice).
        _write_atomically(target.with_name(target.name + REPORT_SUFFIX), json.dumps(report, indent=2, sort_keys=True))
        os.replace(path, target)
        self.scanner.forget(path.name)
        self.metrics.inbox_file(status)
        totals = result.totals if result is not None else {}
        log.log(
            logging.WARNING if where == FAILED else logging.INFO,
            "inbox: %s %s -> %s/%s%s; %s",
            path.name,
            status,
            where,
            target.name,
            f" ({reason})" if reason else "",
            ", ".join(f"{k} {v}" for k, v in sorted(totals.items())) or "nothing imported",
            extra={"outcome": f"inbox-{status}"},
        )
        return where


def _free_name(directory: Path, name: str) -> Path:
    """``directory/name``, or ``stem-N.suffix`` when a file (or its report) has that name already."""
    candidate = directory / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 0
    while candidate.exists() or candidate.with_name(candidate.name + REPORT_SUFFIX).exists():
        n += 1
        candidate = directory / f"{stem}-{n}{suffix}"
    return candidate


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


async def serve(settings: Settings, redis_url: str) -> None:
    """The inbox process: watch HL7GW_INBOX_DIR until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine = make_engine(settings.storage.database_url)
    try:
        # As hl7gw import: the first 10,000 messages not accepted are listed in a file's report.
        async with Importer(
            settings, redis_url, jobs=JobStore(engine), who="inbox", max_problems=REPORTED_PROBLEMS
        ) as importer:
            inbox = Inbox(settings.inbox, importer)
            signal_ready()
            await inbox.watch(stop)
    finally:
        engine.dispose()


def run(settings: Settings, redis_url: str) -> None:
    if settings.inbox.directory is None:
        raise ConfigError("hl7gw inbox needs HL7GW_INBOX_DIR: the directory to watch")
    asyncio.run(serve(settings, redis_url))
