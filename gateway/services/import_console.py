"""``hl7gw import`` on a terminal: the progress line, the summary, the exit code.

Exit codes: 0 every message was accepted (or was a duplicate, or an incoming ACK kept) and every
BTS-1/FTS-1 count matched; 1 the file(s) were imported but something was rejected (dead letters at
stage intake) or a count did not match: look at the report; 2 an import did not finish (the queue
did not answer, a file could not be read, no Redis): run the same command again, it resumes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from gateway.config import Settings
from gateway.journal.jobs import JobStore
from gateway.services.importer import Importer, ImportResult

OK, FLAGGED, UNFINISHED = 0, 1, 2


class ProgressLine:
    """One line on stderr, rewritten at most five times a second: bytes, messages, rate."""

    def __init__(self, out: TextIO):
        self.out = out
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, name: str, position: int, size: int, items: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        rate = items / max(now - self.started, 1e-9)
        share = f"{100 * position / size:5.1f}% " if size else ""
        mb = f"{position / 1e6:.1f}/{size / 1e6:.1f} MB" if size else f"{position / 1e6:.1f} MB"
        self.out.write(f"\r{name[:32]:32} {share}{mb}  {items:,} messages  {rate:,.0f}/s ")
        self.out.flush()
        self.shown = True

    def end(self) -> None:
        if self.shown:
            self.out.write("\n")
            self.out.flush()
            self.shown = False
        self.started = time.monotonic()


def files_of(target: str) -> Iterator[Path]:
    """A file, or every file of a directory (sorted, hidden ones skipped, not recursive)."""
    path = Path(target)
    if path.is_dir():
        yield from sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        yield path


def exit_code(results: list[ImportResult]) -> int:
    if any(r.status == "failed" for r in results):
        return UNFINISHED
    if any(r.rejected or r.report.mismatch for r in results):
        return FLAGGED
    return OK


def summary_line(result: ImportResult) -> str:
    report, totals = result.report, result.totals
    if result.status == "already-done":
        return f"{result.name}: imported before (sha256 {result.sha256[:12]}); nothing sent (--again for another pass)"
    parts = [f"read {totals.get('read', 0)}", f"accepted {totals.get('accepted', 0)}"]
    parts += [f"duplicates {totals.get('duplicate', 0)}", f"rejected {totals.get('rejected', 0)}"]
    if totals.get("ack-kept"):
        parts.append(f"acks kept {totals['ack-kept']}")
    line = f"{result.name}: {', '.join(parts)}"
    if result.resumed_at:
        line += f"; resumed after byte {result.resumed_at} ({result.resumed_items} committed before)"
    for batch in report.mismatched_batches:
        line += f"\n  batch {batch.batch} (BHS-11 {batch.control_id!r}): BTS-1 {batch.declared}, read {batch.read}"
    if report.file_mismatch:
        line += (
            f"\n  file (FHS-11 {report.file_control_id!r}): FTS-1 {report.file_declared}, batches {report.file_batches}"
        )
    for problem in report.problems[:20]:
        codes = ",".join(e.code for e in problem.errors)
        where = f"byte {problem.offset} (batch {problem.batch} #{problem.index}, MSH-10 {problem.control_id!r})"
        line += f"\n  rejected at {where}: {problem.ack_code} {codes}"
    if len(report.problems) > 20 or report.problems_omitted:
        line += f"\n  ... {len(report.problems) - 20 + report.problems_omitted} more (--json lists them)"
    if result.status == "failed":
        line += f"\n  NOT FINISHED: {report.error}; run the same import again to resume"
    if result.job_id:
        line += f"\n  job {result.job_id}"
    return line


def run_import(
    settings: Settings, redis_url: str, targets: list[str], *, jobs: JobStore | None, again: bool, as_json: bool
) -> int:
    bar = ProgressLine(sys.stderr) if sys.stderr.isatty() and not as_json else None

    async def main() -> list[ImportResult]:
        results: list[ImportResult] = []
        # No batch acknowledgement here: 10,000 rejections listed per file are enough to read.
        kept = 10_000
        async with Importer(
            settings, redis_url, jobs=jobs, again=again, on_progress=bar, max_problems=kept
        ) as importer:
            for target in targets:
                if target == "-":
                    print("hl7gw import: reading stdin: it cannot be resumed if interrupted", file=sys.stderr)
                    results.append(await importer.import_stream(sys.stdin.buffer))
                else:
                    for path in files_of(target):
                        try:
                            results.append(await importer.import_file(path))
                        except OSError as exc:
                            failed = ImportResult(path.name, status="failed")
                            failed.report.error = f"cannot read the file: {exc.strerror or exc}"
                            results.append(failed)
                        if bar is not None:
                            bar.end()
                if results and results[-1].status == "failed" and results[-1].report.not_stored:
                    break  # the queue does not answer: the next files would fail the same way
        return results

    results = asyncio.run(main())
    if as_json:
        print(json.dumps({"files": [r.as_data() for r in results], "exit_code": exit_code(results)}, indent=2))
    else:
        for result in results:
            print(summary_line(result))
    return exit_code(results)
