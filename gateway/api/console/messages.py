"""The message browser: search (POST, so no control id or MRN ever lands in a URL or a log) by control
id, sender, type, status, time range or a patient's identifier (through the store); one message laid
out by segment, field and component with HL7's names, its stages, the FHIR it wrote (each version
readable here), superseded writes, deliveries per sink and dead letters."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gateway import fhirjson
from gateway.api.access_audit import record_access
from gateway.api.auth import ADMIN_ONLY_TYPES
from gateway.api.console.session import Session
from gateway.api.console.web import PREFIX, ConsoleError, checked_form, first, page, require, signed_in
from gateway.api.outcome import FHIRError
from gateway.config import Role
from gateway.hl7.fields import component_name, field_name
from gateway.hl7.layout import raw_view
from gateway.journal import provenance
from gateway.journal.filters import MESSAGE_STATUSES, FilterError, MessageFilter, parse_since
from gateway.journal.message_life import life_of, search_messages
from gateway.journal.messages import ArchivedMessage, MessageArchive
from gateway.store.access_events import Interaction
from gateway.store.search_values import SearchError

router = APIRouter(prefix=PREFIX, include_in_schema=False)
PAGE = 100
FIELDS = ("control_id", "sender", "message_type", "status", "since", "until", "mrn")


def _time(name: str, text: str) -> int | None:
    try:
        return parse_since(text) if text else None
    except FilterError as exc:
        raise ConsoleError(400, str(exc).replace("since", name, 1)) from None


def _audited(request: Request, session: Session, interaction: Interaction, answer: bytes) -> None:
    """Record a read of patient data as the FHIR API does (``answer``: its FHIR JSON); when the
    trail cannot take it, an error page instead of the data (fail closed)."""
    try:
        record_access(request, session.principal, interaction, Response(answer))
    except FHIRError as exc:
        raise ConsoleError(exc.status, exc.diagnostics) from None


def _by_patient(request: Request, session: Session, identifier: str) -> list[ArchivedMessage]:
    """The messages that wrote the Patients with ``identifier`` (a search of the store, audited as one)."""
    store = request.app.state.store
    try:
        patients = store.search("Patient", {"identifier": [identifier]})
    except SearchError as exc:
        raise ConsoleError(400, str(exc)) from None
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": p} for p in patients]}
    _audited(request, session, Interaction.search_type, fhirjson.dumps(bundle))
    engine = request.app.state.engine
    ids = dict.fromkeys(r.message_id for p in patients for r in provenance.for_resource(engine, "Patient", p["id"]))
    archive = MessageArchive(engine)
    found = [m for m in (archive.get(i) for i in list(ids)[:PAGE]) if m is not None]
    return sorted(found, key=lambda m: -m.received_at)


@router.get("/messages")
def browser(request: Request) -> HTMLResponse:
    """The search form and the latest messages."""
    session = signed_in(request)
    latest = search_messages(request.app.state.engine, MessageFilter(), limit=25)
    return page(request, "messages.html", session, found=latest, form={}, statuses=sorted(MESSAGE_STATUSES))


@router.post("/messages")
async def search(request: Request) -> HTMLResponse:
    session = signed_in(request)
    values = {k: first(await checked_form(request, session), k) for k in FIELDS}
    if values["status"] and values["status"] not in MESSAGE_STATUSES:
        raise ConsoleError(400, f"status is one of {', '.join(sorted(MESSAGE_STATUSES))}")
    if values["mrn"]:
        found = _by_patient(request, session, values["mrn"])
    else:
        where = MessageFilter(
            control_id=values["control_id"] or None,
            sender=values["sender"] or None,
            status=values["status"] or None,
            since=_time("since", values["since"]),
            until=_time("until", values["until"]),
            message_type=values["message_type"] or None,
        )
        found = search_messages(request.app.state.engine, where, limit=PAGE)
    return page(
        request, "messages.html", session, found=found, form=values, statuses=sorted(MESSAGE_STATUSES), searched=True
    )


def _separators(raw_text: str) -> tuple[str, str]:
    """(component, repetition) separators of a message (MSH-2), or HL7's defaults."""
    if raw_text.startswith("MSH") and len(raw_text) > 5:
        return raw_text[4], raw_text[5]
    return "^", "~"


def components(layout: list[dict[str, Any]], raw_text: str, version: str) -> list[dict[str, Any]]:
    """The layout with each field's repetitions and components named (``PID-5.1`` "Family Name")."""
    component, repetition = _separators(raw_text)
    for segment in layout:
        name = segment["segment"]
        for field in segment["fields"]:
            number = int(field["field"].rpartition("-")[2])
            if name == "MSH" and number <= 2:
                field["repetitions"] = []
                continue
            field["repetitions"] = [
                [
                    {"path": f"{name}-{number}.{n}", "name": component_name(name, number, n, version), "value": part}
                    for n, part in enumerate(value.split(component), 1)
                    if part
                ]
                for value in field["value"].split(repetition)
            ]
    return layout


def field_names(raw_text: str) -> dict[str, str]:
    """``{"PID-5": "Patient Name", ...}`` for every field place of the message's segments (for the
    editor, which names the field under the cursor)."""
    version = _version(raw_text)
    names: dict[str, str] = {}
    for line in raw_text.replace("\n", "\r").split("\r"):
        segment = line[:3]
        if len(segment) == 3 and segment.isalnum():
            for number in range(1, max(line.count(line[3]) if len(line) > 3 else 0, 0) + 6):
                if name := field_name(segment, number, version):
                    names[f"{segment}-{number}"] = name
    return names


def with_components(view: dict[str, Any]) -> dict[str, Any]:
    """``raw_view``'s answer with each field's components named."""
    if view.get("layout") is not None:
        view["layout"] = components(view["layout"], view["raw"], _version(view["raw"]))
    return view


def _version(raw_text: str) -> str:
    msh = raw_text.split("\r", 1)[0]
    fields = msh.split(msh[3]) if len(msh) > 3 else []
    return fields[11].split("^")[0] if len(fields) > 11 else ""


@router.get("/messages/{message_id}")
def message(message_id: str, request: Request) -> HTMLResponse:
    session = signed_in(request)
    engine = request.app.state.engine
    found = MessageArchive(engine).get(message_id)
    if found is None:
        raise ConsoleError(404, "no such message")
    view = with_components(raw_view(found.raw))
    life = life_of(engine, found).to_json()
    return page(request, "message.html", session, message=found, life=life, view=view)


@router.get("/resources/{resource_type}/{resource_id}/{version_id}")
def resource(resource_type: str, resource_id: str, version_id: int, request: Request) -> HTMLResponse:
    """One version of a resource as JSON (a vread, audited as the FHIR API's is)."""
    session = signed_in(request)
    if resource_type in ADMIN_ONLY_TYPES:
        require(session, Role.admin)
    stored = request.app.state.store.vread(resource_type, resource_id, version_id)
    if stored is None:
        raise ConsoleError(404, "no such resource version")
    pretty = ""
    if stored.resource is not None:
        _audited(request, session, Interaction.vread, fhirjson.dumps(stored.resource))
        pretty = fhirjson.dumps(stored.resource, option=orjson.OPT_INDENT_2).decode()
    reference = f"{resource_type}/{resource_id}"
    return page(request, "resource.html", session, reference=reference, version=version_id, json=pretty)
