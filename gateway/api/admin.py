"""The operators' read API under ``/admin`` (JSON, not FHIR; the operator role): dead letters and
messages, as ``hl7gw dlq list|show`` and ``hl7gw message`` show them.

Lists are newest first, ``_count`` rows a page (default 50, at most 500), and end with ``next``:
the URL of the following page (a ``cursor`` naming the last row) or null. Filters are query
parameters; one the route does not know, or a value it cannot read, is a 400. Raw messages are
PHI: only operators and admins reach these routes, and nothing here logs a response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from gateway.api.admin_errors import ADMIN_PREFIX
from gateway.api.auth import require_role
from gateway.api.outcome import FHIRError
from gateway.config import Role
from gateway.hl7.layout import raw_view
from gateway.journal.dead_letters import DeadLetterStore, edited_copy
from gateway.journal.filters import (
    LETTER_STATUSES,
    MESSAGE_STATUSES,
    Cursor,
    FilterError,
    LetterFilter,
    MessageFilter,
    parse_since,
)
from gateway.journal.message_life import life_of, search_messages, summary
from gateway.journal.messages import MessageArchive

#: raw message -> what converting it with the current mappings would give (services/dead_letter_views.py).
DryRun = Callable[[bytes], dict[str, Any]]

_ERROR = {"content": {"application/json": {"example": {"error": {"status": 400, "message": "status is one of ..."}}}}}
router = APIRouter(
    prefix=ADMIN_PREFIX,
    tags=["admin"],
    dependencies=[Depends(require_role(Role.operator))],
    responses={
        400: {"description": "a filter or cursor that cannot be read, or an unknown parameter", **_ERROR},
        401: {"description": "no bearer token, or one that is not valid", **_ERROR},
        403: {"description": "the token's role is below operator", **_ERROR},
        404: {"description": "no dead letter or message with that id", **_ERROR},
    },
)

MAX_COUNT = 500
Count = Annotated[int, Query(alias="_count", ge=1, le=MAX_COUNT, description="rows a page (default 50)")]
CursorText = Annotated[str | None, Query(description="the `next` link's cursor: the page after it")]
Since = Annotated[
    str | None, Query(description="ISO 8601 date-time (UTC unless it has an offset), or an age: 30m, 2h, 7d")
]
Sender = Annotated[str | None, Query(description="MSH-3|MSH-4 as the gateway names senders, e.g. `LAB|MAIN`")]


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _check_parameters(request: Request, known: set[str]) -> None:
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise FHIRError(
            400, f"unknown parameter(s) {', '.join(n[:40] for n in unknown)}; known: {', '.join(sorted(known))}"
        )


def _filters(
    status: str | None, statuses: frozenset[str], since: str | None, cursor: str | None
) -> tuple[int | None, Cursor | None]:
    if status is not None and status not in statuses:
        raise FHIRError(400, f"status is one of {', '.join(sorted(statuses))}")
    try:
        return (parse_since(since) if since else None), (Cursor.decode(cursor) if cursor else None)
    except FilterError as exc:
        raise FHIRError(400, str(exc)) from None


def _page(request: Request, items: list[dict[str, Any]], count: int, last: Cursor | None) -> JSONResponse:
    """``count`` items (one more was read to know whether a next page exists)."""
    following = None
    if len(items) > count and last is not None:
        following = str(request.url.include_query_params(cursor=last.encode()))
    return JSONResponse({"items": items[:count], "count": len(items[:count]), "next": following})


@router.get("/dead-letters")
def dead_letters(
    request: Request,
    status: Annotated[str | None, Query(description="open, replayed or discarded (default: any)")] = None,
    stage: Annotated[
        str | None, Query(description="parse, convert, validate, deliver (every sink), deliver:<sink>, ...")
    ] = None,
    sender: Sender = None,
    since: Since = None,
    count: Count = 50,
    cursor: CursorText = None,
) -> JSONResponse:
    """Dead letters, newest first, without their raw messages."""
    _check_parameters(request, {"status", "stage", "sender", "since", "_count", "cursor"})
    since_ms, after = _filters(status, LETTER_STATUSES, since, cursor)
    where = LetterFilter(status=status, stage=stage, sender=sender, since=since_ms)
    letters = DeadLetterStore(_engine(request)).list(where=where, limit=count + 1, after=after)
    last = Cursor(letters[count - 1].created_at, letters[count - 1].id) if len(letters) > count else None
    return _page(request, [d.summary() for d in letters], count, last)


@router.get("/dead-letters/{letter_id}")
def dead_letter(
    letter_id: str,
    request: Request,
    dry_run: Annotated[bool, Query(description="convert the raw message again with the current mappings")] = True,
) -> JSONResponse:
    """One dead letter: why it failed, its raw message (text and base64) laid out by segment and field
    with HL7's field names, its attempts, the message's life, and a dry run with the current mappings."""
    _check_parameters(request, {"dry_run"})
    engine = _engine(request)
    letter = DeadLetterStore(engine).get(letter_id)
    if letter is None:
        raise FHIRError(404, f"no dead letter {letter_id[:64]}")
    runner: DryRun | None = request.app.state.dry_run if dry_run else None
    message = MessageArchive(engine).get(letter.envelope_id)
    raw: dict[str, Any] = {"raw": None, "raw_base64": None, "layout": None, "layout_error": None}
    if letter.raw:  # else purged (hl7gw dlq purge): nothing to lay out or convert
        raw = raw_view(letter.raw)
    return JSONResponse(
        {
            **letter.summary(),
            **raw,
            "dry_run": runner(letter.raw) if runner is not None and letter.raw else None,
            "edited_raw": _text(edited_copy(MessageArchive(engine), letter)),
            "message": summary(message) if message is not None else None,
        }
    )


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", errors="replace") if raw is not None else None


@router.get("/messages")
def messages(
    request: Request,
    control_id: Annotated[str | None, Query(description="MSH-10")] = None,
    sender: Sender = None,
    status: Annotated[str | None, Query(description="received, processed, failed or ack")] = None,
    since: Since = None,
    count: Count = 50,
    cursor: CursorText = None,
) -> JSONResponse:
    """Archived messages, newest first, without their raw content."""
    _check_parameters(request, {"control_id", "sender", "status", "since", "_count", "cursor"})
    since_ms, after = _filters(status, MESSAGE_STATUSES, since, cursor)
    where = MessageFilter(control_id=control_id, sender=sender, status=status, since=since_ms)
    found = search_messages(_engine(request), where, limit=count + 1, after=after)
    last = Cursor(found[count - 1].received_at, found[count - 1].id) if len(found) > count else None
    return _page(request, [summary(m) for m in found], count, last)


@router.get("/messages/{message_id}")
def message(message_id: str, request: Request) -> JSONResponse:
    """One message's life: received, status, resource versions written or superseded, deliveries per
    remote sink, dead letters; its raw content laid out by segment and field."""
    _check_parameters(request, set())
    engine = _engine(request)
    found = MessageArchive(engine).get(message_id)
    if found is None:
        raise FHIRError(404, f"no message {message_id[:64]}")
    return JSONResponse({**life_of(engine, found).to_json(), **raw_view(found.raw)})
