"""The NDJSON files of one $export, under ``<export dir>/<job id>/``, written so that a crash never
leaves a line twice: the job's saved state names every file with its length at the last save, and
``ExportFiles.resume`` cuts each file back to that length and deletes files made after it, before
the export goes on from the saved position.

File names: ``<Type>-<n>.ndjson`` for resources, ``deleted-<n>.ndjson`` (Bundles of DELETE entries,
for ``_since``) and ``error-<n>.ndjson`` (OperationOutcomes). A file takes at most ``max_lines``
lines, then the next number starts.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import BinaryIO

from gateway import fhirjson
from gateway.store.export_jobs import ExportFile, ExportState

#: A file name the API serves: what ``ExportFiles`` makes, nothing else (no path, no dot files).
FILE_NAME = re.compile(r"[A-Za-z]{1,64}-[0-9]{1,9}\.ndjson")
#: Kinds of file and the resource type of their lines (the manifest's ``type``).
_DELETED, _ERROR = "deleted", "error"


def job_dir(root: Path, job_id: str) -> Path:
    return root / job_id


def remove_job_files(root: Path, job_id: str) -> None:
    shutil.rmtree(job_dir(root, job_id), ignore_errors=True)


class ExportFiles:
    """The open files of one running export; ``state.files`` is kept in step with what was written."""

    def __init__(self, root: Path, job_id: str, state: ExportState, max_lines: int):
        self.dir = job_dir(root, job_id)
        self.state = state
        self.max_lines = max_lines
        self._handles: dict[str, BinaryIO] = {}

    def resume(self) -> None:
        """Make the directory hold exactly the files of ``state``, each cut to its saved length. A
        file shorter than saved (a machine crash lost what the disk had not written) makes the
        export start again from nothing: the state is reset."""
        self.dir.mkdir(parents=True, exist_ok=True)
        known = {f.name: f for f in self.state.files}
        for path in self.dir.iterdir():
            if path.name not in known:
                path.unlink()
        for entry in self.state.files:
            path = self.dir / entry.name
            if not path.exists() or path.stat().st_size < entry.size:
                self.reset()
                return
            if path.stat().st_size > entry.size:
                os.truncate(path, entry.size)

    def reset(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state.files.clear()
        self.state.type_index, self.state.after = 0, ""

    def write_resources(self, resource_type: str, lines: list[str]) -> None:
        self._write("output", resource_type, lines)

    def write_deleted(self, resource_type: str, ids: list[str]) -> None:
        """One transaction Bundle with a DELETE entry per deleted resource (export.html, ``deleted``)."""
        bundles = [
            fhirjson.dumps(
                {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": _delete(resource_type, i)}]}
            ).decode()
            for i in ids
        ]
        self._write(_DELETED, "Bundle", bundles)

    def write_errors(self, outcomes: list[dict[str, object]]) -> None:
        self._write(_ERROR, "OperationOutcome", [fhirjson.dumps(outcome).decode() for outcome in outcomes])

    def flush(self) -> None:
        """Hand what was written to the operating system (a killed process loses none of it)."""
        for handle in self._handles.values():
            handle.flush()

    def sync(self) -> None:
        """Flush and fsync every open file (before the export is reported done)."""
        for handle in self._handles.values():
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def _write(self, kind: str, resource_type: str, lines: list[str]) -> None:
        start = 0
        while start < len(lines):
            entry = self._current(kind, resource_type)
            take = lines[start : start + self.max_lines - entry.count]
            data = ("\n".join(take) + "\n").encode()
            self._handle(entry).write(data)
            entry.count += len(take)
            entry.size += len(data)
            start += len(take)

    def _current(self, kind: str, resource_type: str) -> ExportFile:
        """The file of this kind and type lines go to now: the last one, or a new one when it is full."""
        same = [f for f in self.state.files if f.kind == kind and f.type == resource_type]
        if same and same[-1].count < self.max_lines:
            return same[-1]
        if same:
            self._close(same[-1].name)
        prefix = resource_type if kind == "output" else kind
        entry = ExportFile(kind, resource_type, f"{prefix}-{len(same) + 1}.ndjson")
        self.state.files.append(entry)
        return entry

    def _handle(self, entry: ExportFile) -> BinaryIO:
        handle = self._handles.get(entry.name)
        if handle is None:
            handle = open(self.dir / entry.name, "ab", buffering=1 << 20)  # noqa: SIM115 - kept open across pages
            self._handles[entry.name] = handle
        return handle

    def _close(self, name: str) -> None:
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.close()


def _delete(resource_type: str, resource_id: str) -> dict[str, str]:
    return {"method": "DELETE", "url": f"{resource_type}/{resource_id}"}
