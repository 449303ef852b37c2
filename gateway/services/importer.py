"""Importing batch files: identity, resume, the job record, the feeder, one log line per file.

A file is known by the SHA-256 of its bytes as given (a .gz file by its compressed bytes: the
file an operator holds, hashed without decompressing it). Its progress record in Redis
(import_progress.py) says where a killed import stopped: the next import of the same bytes, under
any name, reads on from the end of the last committed message; a finished one is recognised and
skipped unless ``again``. A stream (stdin) has no identity before it is read: it is imported from
the start every time (the duplicate check still answers resends).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from gateway.config import Settings
from gateway.hl7.batch import read_batch
from gateway.journal.jobs import JobStore
from gateway.keys import IMPORT_QUEUE, Keys
from gateway.mllp.profiles import Profiles
from gateway.mllp.triage import Triage
from gateway.queue.durability import DurabilityGuard
from gateway.queue.intake import Intake
from gateway.services.batch_feed import BatchFeeder, Committed
from gateway.services.import_progress import DONE, RUNNING, ProgressRecord
from gateway.services.import_report import FeedReport
from gateway.services.listener import configured_rules

log = logging.getLogger(__name__)
#: (file name, bytes of the file read, its size or 0 when unknown, items read)
Progress = Callable[[str, int, int, int], None]
_OUTCOME = {"done": {"outcome": "imported"}, "already-done": {"outcome": "skipped"}, "failed": {"outcome": "failed"}}


@dataclass
class ImportResult:
    name: str
    sha256: str = ""
    size: int = 0
    #: done | already-done (a finished file seen again, nothing sent) | failed (run it again: it resumes)
    status: str = "done"
    report: FeedReport = field(default_factory=FeedReport)
    #: Byte offset and items committed before this run (a resumed import), 0 from the start.
    resumed_at: int = 0
    resumed_items: int = 0
    #: Counts by outcome over every run of this file's import (the progress record's).
    totals: dict[str, int] = field(default_factory=dict)
    job_id: str = ""
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return self.totals.get("rejected", 0) + self.totals.get("not-stored", 0)

    def as_data(self, *, detail: bool = True) -> dict[str, Any]:
        return {
            "file": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "status": self.status,
            "job": self.job_id or None,
            "resumed_at": self.resumed_at,
            "resumed_items": self.resumed_items,
            "totals": self.totals,
            "seconds": round(self.seconds, 3),
            "this_run": self.report.as_data(detail=detail),
        }


def file_identity(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class Importer:
    """Imports files one after another through one intake (``async with`` starts and closes it)."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        *,
        jobs: JobStore | None = None,
        who: str = "hl7gw import",
        again: bool = False,
        on_progress: Progress | None = None,
        window: int = 8192,
        max_problems: int = 100_000,
    ):
        self.settings, self.redis_url, self.jobs, self.who = settings, redis_url, jobs, who
        self.again, self.on_progress, self.window = again, on_progress, window
        #: Messages not accepted kept in a report (with their bytes, for a batch acknowledgement).
        self.max_problems = max_problems
        self.keys = Keys(settings.storage.redis_namespace)
        self.intake = Intake(
            redis_url,
            namespace=settings.storage.redis_namespace,
            batch_max=settings.intake.batch_max,
            timeout=settings.intake.commit_timeout_s,
            dedup_window_s=settings.intake.dedup_window_s,
            queue=IMPORT_QUEUE,  # worked through at HL7GW_IMPORT_RATE, live traffic first
            durability=DurabilityGuard(settings.storage.allow_volatile_redis),
        )
        self.profiles = Profiles(Triage(configured_rules(settings)))

    async def __aenter__(self) -> Importer:
        await self.intake.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.intake.close()

    async def import_file(self, path: Path) -> ImportResult:
        started = time.monotonic()
        sha256, size = file_identity(path)
        result = ImportResult(path.name, sha256, size)
        progress = ProgressRecord(self.redis_url, self.keys, sha256)
        try:
            record = await progress.load()
            if record is not None and record["status"] == DONE and not self.again:
                result.status, result.totals, result.job_id = "already-done", record["counts"], record.get("job", "")
                result.report.batches = []
                self._log(result)
                return result
            resume = record is not None and record["status"] == RUNNING and not self.again
            if resume:
                assert record is not None
                result.resumed_at, result.resumed_items = record["offset"], record["count"]
                result.job_id = record.get("job", "")
                base: dict[str, int] = record["counts"]
                log.info(
                    "%s: resuming its import after byte %d (%d item(s) committed before)",
                    path.name,
                    record["offset"],
                    record["count"],
                )
            else:
                base = {}
                result.job_id = self._new_job(path.name, sha256, size)
                fields = {"name": path.name, "size": size, "job": result.job_id, "started": int(time.time() * 1000)}
                await progress.start({**fields, "offset": 0, "batch": 0, "index": 0, "count": 0})
            raw = path.open("rb")
            try:
                stream: BinaryIO = raw
                if path.suffix.lower() == ".gz" or raw.peek(2)[:2] == b"\x1f\x8b":
                    stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
                start = record["offset"] if resume and record else 0
                if start:
                    stream.seek(start)
                items = read_batch(
                    stream,
                    start=start,
                    start_batch=record["batch"] if resume and record else 0,
                    start_index=record["index"] if resume and record else 0,
                )
                await self._feed(result, items, raw, progress, base, record if resume else None)
            finally:
                raw.close()
        finally:
            await progress.close()
            result.seconds = time.monotonic() - started
        self._log(result)
        return result

    async def import_stream(self, stream: BinaryIO, name: str = "-") -> ImportResult:
        """A stream read once (stdin): no identity before it is read, so no resume; its job record
        gets the SHA-256 of what was read."""
        started = time.monotonic()
        result = ImportResult(name)
        hashing = _Hashing(stream)
        result.job_id = self._new_job(name, "", 0)
        await self._feed(result, read_batch(hashing), hashing, None, {}, None)  # type: ignore[arg-type]
        result.sha256, result.size = hashing.digest.hexdigest(), hashing.position
        self._save_job(result)
        result.seconds = time.monotonic() - started
        self._log(result)
        return result

    async def _feed(
        self,
        result: ImportResult,
        items: Any,
        position: IO[bytes] | _Hashing,
        progress: ProgressRecord | None,
        base: dict[str, int],
        record: dict[str, Any] | None,
    ) -> None:
        earlier_batches = {b["batch"]: b for b in record["batches"]} if record else {}

        def batches(report: FeedReport) -> list[dict[str, Any]]:
            merged = dict(earlier_batches)
            merged.update({b.batch: b.as_data() for b in report.batches})
            return [merged[number] for number in sorted(merged)]

        def on_commit(committed: Committed, report: FeedReport) -> None:
            if progress is not None:
                progress.advance(_fields(committed, base, batches(report)))

        def on_progress(_offset: int, items_read: int) -> None:
            if self.on_progress is not None:
                self.on_progress(result.name, position.tell(), result.size, result.resumed_items + items_read)

        feeder = BatchFeeder(
            self.intake, self.profiles, peer=f"import:{result.name}", window=self.window,
            max_problems=self.max_problems, on_commit=on_commit, on_progress=on_progress,
        )  # fmt: skip
        if record is not None:
            feeder.committed = Committed(record["offset"], record["batch"], record["index"], record["count"])
        report = await feeder.feed(items)
        result.report = report
        result.totals = _sum(base, feeder.committed.outcomes)
        result.totals["read"] = result.resumed_items + report.read + report.pieces
        result.status = "failed" if report.error else "done"
        if progress is not None:
            fields = _fields(feeder.committed, base, batches(report))
            if report.error:
                progress.advance(fields)
                await progress.flush()
            else:
                await progress.finish(fields)
        self._save_job(result, batches(report))

    def _new_job(self, name: str, sha256: str, size: int) -> str:
        if self.jobs is None:
            return ""
        return self.jobs.create("import", {"file": name, "sha256": sha256, "size": size}, self.who).id

    def _save_job(self, result: ImportResult, batches: list[dict[str, Any]] | None = None) -> None:
        if self.jobs is None or not result.job_id:
            return
        report = result.report
        listed = batches if batches is not None else [b.as_data() for b in report.batches]
        summary = {
            "totals": result.totals,
            "mismatch": report.file_mismatch or any(b["mismatch"] for b in listed),
            "mismatched_batches": [b for b in listed if b["mismatch"]],
            "file": report.as_data(detail=False)["file"],
            "error": report.error or None,
        }
        self.jobs.record_import(
            result.job_id,
            status="failed" if result.status == "failed" else "done",
            accepted=result.totals.get("accepted", 0),
            duplicates=result.totals.get("duplicate", 0),
            cursor=str(report.bytes_read),
            summary=json.dumps(summary, sort_keys=True),
        )

    def _log(self, result: ImportResult) -> None:
        """One line per file outcome: name, hash, counts, mismatches; no content."""
        totals = ", ".join(f"{k} {v}" for k, v in sorted(result.totals.items()))
        mismatched = len(result.report.mismatched_batches) + int(result.report.file_mismatch)
        level = logging.WARNING if result.status == "failed" else logging.INFO
        log.log(
            level,
            "import of %s (sha256 %s) %s in %.1f s: %s; %d count mismatch(es)%s",
            result.name,
            result.sha256[:16],
            result.status,
            result.seconds,
            totals or "nothing",
            mismatched,
            f"; {result.report.error}" if result.report.error else "",
            extra=_OUTCOME.get(result.status, {}),
        )


def _fields(committed: Committed, base: dict[str, int], batches: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "offset": committed.end,
        "batch": committed.batch,
        "index": committed.index,
        "count": committed.count,
        "counts": _sum(base, committed.outcomes),
        "batches": batches[-1000:],
    }


def _sum(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in sorted({*a, *b})}


class _Hashing:
    """A stream that hashes what is read from it and knows how far it is."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.digest, self.position = stream, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        self.position += len(data)
        return data

    def tell(self) -> int:
        return self.position
