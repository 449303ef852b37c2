"""Dead letters: the list (filters, select many, replay them, or replay all that match as a job), one
letter (why, the message by segment and field, a dry run, the chain of attempts), replay as it was
or edited, discard with a reason (admin). Every action is the /admin API's, through the same desk."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from gateway.api.console.messages import field_names, with_components
from gateway.api.console.web import PREFIX, ConsoleError, act, checked_form, first, page, require, signed_in
from gateway.config import Role
from gateway.hl7.layout import raw_view
from gateway.journal.dead_letters import DeadLetterStore, edited_copy
from gateway.journal.filters import LETTER_STATUSES, FilterError, LetterFilter, parse_since
from gateway.journal.messages import MessageArchive

router = APIRouter(prefix=f"{PREFIX}/dead-letters", include_in_schema=False)
PAGE = 100
#: What the list filters by: none of it is patient data (senders are systems), so it may be in the URL.
FILTERS = ("status", "stage", "sender", "since")


def _filter(values: dict[str, str]) -> LetterFilter:
    status = values.get("status", "open") or None
    if status is not None and status not in LETTER_STATUSES:
        raise ConsoleError(400, f"status is one of {', '.join(sorted(LETTER_STATUSES))}")
    try:
        since = parse_since(values["since"]) if values.get("since") else None
    except FilterError as exc:
        raise ConsoleError(400, str(exc)) from None
    return LetterFilter(
        status=status, stage=values.get("stage") or None, sender=values.get("sender") or None, since=since
    )


@router.get("")
def letters(request: Request) -> HTMLResponse:
    session = signed_in(request)
    values = {k: request.query_params.get(k, "open" if k == "status" else "").strip() for k in FILTERS}
    where = _filter(values)
    found = DeadLetterStore(request.app.state.engine).list(where=where, limit=PAGE)
    done = {k: request.query_params.get(k, "") for k in ("replayed", "failed")}
    return page(
        request, "letters.html", session, letters=found, filters=values, statuses=sorted(LETTER_STATUSES), done=done
    )


@router.post("/replay")
async def replay_selected(request: Request) -> RedirectResponse:
    """Replay each selected letter as it was; back to the list saying how many went."""
    session = signed_in(request)
    require(session, Role.operator)
    form = await checked_form(request, session)
    ids = [i for i in form.get("letter", []) if i][:PAGE]
    if not ids:
        raise ConsoleError(400, "select at least one dead letter to replay")
    replayed = failed = 0
    for letter_id in ids:
        try:
            act(request, "replay", letter_id, session.principal.name, session.principal.role.value, None)
            replayed += 1
        except ConsoleError as exc:
            if exc.status == 503:
                raise
            failed += 1  # replayed meanwhile by someone else, or gone: the list shows it
    return RedirectResponse(f"{PREFIX}/dead-letters?replayed={replayed}&failed={failed}", status_code=303)


@router.post("/replay-matching")
async def replay_matching(request: Request) -> RedirectResponse:
    """A replay job over every open letter the list's filter matches; to its page, to watch it."""
    session = signed_in(request)
    require(session, Role.operator)
    form = await checked_form(request, session)
    job_filter: dict[str, Any] = {k: first(form, k) for k in ("stage", "sender") if first(form, k)}
    if first(form, "since"):
        job_filter["since"] = _filter({"status": "open", "since": first(form, "since")}).since
    job = act(request, "start_job", "replay", job_filter, session.principal.name, session.principal.role.value)
    return RedirectResponse(f"{PREFIX}/jobs/{job['id']}", status_code=303)


@router.get("/{letter_id}")
def letter(letter_id: str, request: Request) -> HTMLResponse:
    session = signed_in(request)
    engine = request.app.state.engine
    store = DeadLetterStore(engine)
    found = store.get(letter_id)
    if found is None:
        raise ConsoleError(404, "no such dead letter")
    view: dict[str, Any] = {"raw": None, "layout": None, "layout_error": None}
    if found.raw:
        view = with_components(raw_view(found.raw))
    dry = request.app.state.dry_run
    edited = edited_copy(MessageArchive(engine), found)
    return page(
        request,
        "letter.html",
        session,
        letter=found,
        view=view,
        dry_run=dry(found.raw) if dry is not None and found.raw and found.status == "open" else None,
        chain=store.chain(letter_id)[1:],
        later=[d for d in store.for_envelope(found.replayed_as) if d.replay_of == found.id]
        if found.replayed_as
        else [],
        edited_raw=edited.decode("utf-8", errors="replace") if edited is not None else None,
        done=request.query_params.get("done", ""),
        field_names=field_names(view["raw"]) if view["raw"] else {},
    )


@router.post("/{letter_id}/replay")
async def replay(letter_id: str, request: Request) -> RedirectResponse:
    """Replay as it was, or (a non-empty ``raw``) the edited copy; the letter keeps its own bytes."""
    session = signed_in(request)
    require(session, Role.operator)
    form = await checked_form(request, session)
    raw_text = form.get("raw", [""])[0]
    edited = None
    if first(form, "edited") == "1":
        if not raw_text.strip():
            raise ConsoleError(400, "the edited message is empty")
        edited = raw_text.replace("\r\n", "\r").replace("\n", "\r").encode("utf-8")  # as /admin reads it
    act(request, "replay", letter_id, session.principal.name, session.principal.role.value, edited)
    return RedirectResponse(f"{PREFIX}/dead-letters/{letter_id}?done=replayed", status_code=303)


@router.post("/{letter_id}/discard")
async def discard(letter_id: str, request: Request) -> RedirectResponse:
    session = signed_in(request)
    require(session, Role.admin)
    form = await checked_form(request, session)
    reason = first(form, "reason")
    if not reason:
        raise ConsoleError(400, "a discard needs a reason")
    act(request, "discard", letter_id, session.principal.name, session.principal.role.value, reason)
    return RedirectResponse(f"{PREFIX}/dead-letters/{letter_id}?done=discarded", status_code=303)
