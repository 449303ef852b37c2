"""Running FHIR Bulk Data $export jobs: a thread of every worker process (hl7gw run, hl7gw worker)
takes an accepted job from the database and writes its NDJSON files, one type after another,
reading the store in keyset pages; memory stays that of one page, whatever the store holds.

Progress (the type, the last id written, every file's length) is saved at most every
``save_every_s`` (and whenever a file is complete), after the files were handed to the operating
system; a job whose worker was killed is taken over from there (at once by a worker of the same
host that sees the owner's process gone, else when the lease runs out), its files cut back to the
saved lengths first (gateway/store/export_files.py): no line is written twice.

The operator-job machinery (services/jobs.py, table operator_job) was not reused: its rows hold a
filter and one cursor of 128 characters, and its runner paces items onto a queue; an export needs
its request, a position per type, a list of files and a lease renewed while pages are written.
The same lease pattern is used, in a table of its own (bulk_export).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from gateway.config import ExportSettings
from gateway.errors import describe
from gateway.store.export_files import ExportFiles, remove_job_files
from gateway.store.export_jobs import ExportJob, ExportJobStore, worker_identity
from gateway.store.export_read import ExportScope, group_members, read_page

log = logging.getLogger(__name__)

#: How often expired exports' files are looked for and deleted.
_SWEEP_EVERY_S = 60.0


class ExportRunner:
    """Works on one export job at a time, to its end (or until it is cancelled or taken over)."""

    def __init__(
        self, engine: Engine, settings: ExportSettings, *, owner: str | None = None, save_every_s: float = 1.0
    ):
        self.engine = engine
        self.settings = settings
        self.jobs = ExportJobStore(engine)
        self.owner = owner or worker_identity()
        self.save_every_s = save_every_s
        self._lease_ms = int(settings.lease_s * 1000)
        self._retention_ms = int(settings.retention_s * 1000)
        self._swept_at = 0.0
        self.stop = threading.Event()

    def step(self) -> bool:
        """Take a job and run it; False when none waits."""
        if time.monotonic() - self._swept_at >= _SWEEP_EVERY_S:
            self.sweep()
        job = self.jobs.claim(self.owner, self._lease_ms, self._dead_owners())
        if job is None:
            return False
        self.run_job(job)
        return True

    def run(self, stop: threading.Event, idle_s: float = 1.0) -> None:
        """Work on exports until ``stop``; a failed round (the database away) is tried again later."""
        self.stop = stop
        failing = False
        while not stop.is_set():
            try:
                busy = self.step()
            except Exception as exc:  # noqa: BLE001 - an export waits for the next round, the worker goes on
                if not failing:
                    log.warning("bulk exports wait: %s; trying again each %.0f s", describe(exc), idle_s)
                failing, busy = True, False
            else:
                if failing:
                    log.info("bulk exports going on")
                failing = False
            if not busy:
                stop.wait(idle_s)

    def sweep(self) -> int:
        """Delete the files of exports past their expiry; how many."""
        self._swept_at = time.monotonic()
        expired = self.jobs.expired()
        for job_id in expired:
            remove_job_files(self.settings.directory, job_id)
            self.jobs.mark_expired(job_id)
            log.info("export %s expired: its files were deleted", job_id)
        return len(expired)

    def run_job(self, job: ExportJob) -> None:
        """Write ``job``'s files from its saved state to the end; a database outage leaves it leased
        to this worker, to go on at the next round; any other failure fails the job."""
        files = ExportFiles(self.settings.directory, job.id, job.state, self.settings.file_resources)
        try:
            self._export(job, files)
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:  # noqa: BLE001 - the client is told; the worker goes on
            files.close()
            current = self.jobs.get(job.id)
            if current is None or current.status != "running" or current.lease_owner != self.owner:
                self._stopped(job, files)  # cancelled (its directory went away under the writes) or taken over
                return
            log.error("export %s failed: %s", job.id, describe(exc))
            remove_job_files(self.settings.directory, job.id)
            self.jobs.fail(job, self.owner, describe(exc), self._retention_ms)
        finally:
            files.close()

    def _export(self, job: ExportJob, files: ExportFiles) -> None:
        files.resume()
        state = files.state
        scope = self._scope(job)
        if scope is None:
            raise LookupError(f"Group/{job.group_id} is gone")
        if not state.files and job.notes:
            files.write_errors([_warning(note) for note in job.notes])
        log.info(
            "export %s: %s from type %d after %r",
            job.id,
            "resumed" if state.files else "started",
            state.type_index,
            state.after,
        )
        saved_at = time.monotonic()
        while state.type_index < len(job.types):
            if self.stop.is_set():
                files.flush()
                self.jobs.release(job, self.owner, state)
                return
            resource_type = job.types[state.type_index]
            with self.engine.connect() as conn:
                page = read_page(conn, resource_type, state.after, scope, self.settings.page_size)
            if page.last_id is None:
                state.type_index, state.after = state.type_index + 1, ""
                files.close()
            else:
                files.write_resources(resource_type, page.lines)
                if page.deleted:
                    files.write_deleted(resource_type, page.deleted)
                state.after = page.last_id
            if page.last_id is None or time.monotonic() - saved_at >= self.save_every_s:
                files.flush()
                if not self.jobs.save(job, self.owner, state, self._lease_ms):
                    self._stopped(job, files)
                    return
                saved_at = time.monotonic()
        files.sync()
        if self.jobs.finish(job, self.owner, state, self._retention_ms):
            log.info("export %s done: %d resource(s) in %d file(s)", job.id, state.written, len(state.files))
        else:
            self._stopped(job, files)

    def _stopped(self, job: ExportJob, files: ExportFiles) -> None:
        """The job was cancelled (its files go) or taken over by another worker (they stay)."""
        files.close()
        current = self.jobs.get(job.id)
        if current is None or current.status == "cancelled":
            remove_job_files(self.settings.directory, job.id)
            log.info("export %s cancelled", job.id)
        else:
            log.warning("export %s: lease lost to another worker; it goes on there", job.id)

    def _scope(self, job: ExportJob) -> ExportScope | None:
        members = None
        if job.level == "group":
            with self.engine.connect() as conn:
                members = group_members(conn, job.group_id)
            if members is None:
                return None
        return ExportScope(job.level, job.transaction_time, job.since, members)

    def _dead_owners(self) -> frozenset[str]:
        """Lease owners that were processes of this host and are gone (or were this process before:
        a pid reused in a restarted container), whose jobs may be taken over without waiting."""
        host, dead = socket.gethostname()[:40], set()
        for owner in self.jobs.lease_owners():
            owner_host, _, rest = owner.partition(":")
            pid_text = rest.partition(":")[0]
            if owner_host != host or not pid_text.isdigit() or owner == self.owner:
                continue
            if int(pid_text) == os.getpid() or not _alive(int(pid_text)):
                dead.add(owner)
        return frozenset(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _warning(note: str) -> dict[str, object]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "informational", "diagnostics": note}],
    }
