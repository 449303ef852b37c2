"""Jobs: bulk replays, reprocesses and imports with their progress (the page refreshes it), pause,
resume and cancel, and a reprocess started here; all through the /admin API's desk."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from gateway.api.console.web import PREFIX, ConsoleError, act, checked_form, first, page, require, signed_in
from gateway.config import Role
from gateway.journal.filters import FilterError, parse_since
from gateway.journal.jobs import Job, JobStore

router = APIRouter(prefix=f"{PREFIX}/jobs", include_in_schema=False)
ACTIONS = ("pause", "resume", "cancel")
#: States in which a job still moves: its page keeps refreshing.
LIVE = frozenset({"pending", "running", "paused", "importing"})


def _job(request: Request, job_id: str) -> Job:
    found = JobStore(request.app.state.engine).get(job_id)
    if found is None:
        raise ConsoleError(404, "no such job")
    return found


@router.get("")
def jobs(request: Request) -> HTMLResponse:
    session = signed_in(request)
    return page(request, "jobs.html", session, jobs=JobStore(request.app.state.engine).list(limit=100), live=LIVE)


@router.post("/reprocess")
async def reprocess(request: Request) -> RedirectResponse:
    """A reprocess job: the archived messages the form matches through the current mappings."""
    session = signed_in(request)
    require(session, Role.operator)
    form = await checked_form(request, session)
    job_filter: dict[str, Any] = {k: first(form, k) for k in ("sender", "message_type", "status") if first(form, k)}
    for key in ("since", "until"):
        if first(form, key):
            try:
                job_filter[key] = parse_since(first(form, key))
            except FilterError as exc:
                raise ConsoleError(400, str(exc).replace("since", key, 1)) from None
    job = act(request, "start_job", "reprocess", job_filter, session.principal.name, session.principal.role.value)
    return RedirectResponse(f"{PREFIX}/jobs/{job['id']}", status_code=303)


@router.get("/{job_id}")
def job(job_id: str, request: Request) -> HTMLResponse:
    session = signed_in(request)
    return page(request, "job.html", session, job=_job(request, job_id), live=LIVE, actions=ACTIONS)


@router.get("/{job_id}/progress")
def progress(job_id: str, request: Request) -> HTMLResponse:
    """The job's figures alone, for the page's refresh."""
    session = signed_in(request)
    return page(request, "job_progress.html", session, job=_job(request, job_id), live=LIVE, actions=ACTIONS)


@router.post("/{job_id}/{action}")
async def control(job_id: str, action: str, request: Request) -> RedirectResponse:
    session = signed_in(request)
    require(session, Role.operator)
    await checked_form(request, session)
    if action not in ACTIONS:
        raise ConsoleError(404, "a job can be paused, resumed or cancelled")
    act(request, "control_job", job_id, action, session.principal.name, session.principal.role.value)
    return RedirectResponse(f"{PREFIX}/jobs/{job_id}", status_code=303)
