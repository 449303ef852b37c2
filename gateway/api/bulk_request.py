"""A Bulk Data $export kick-off request, checked (Bulk Data IG v2, export.html#bulk-data-kick-off-request).

Headers: ``Accept: application/fhir+json`` and ``Prefer: respond-async`` are required (400
otherwise). Parameters, from the query string (GET) or a Parameters resource (POST):
``_outputFormat`` (application/fhir+ndjson, application/ndjson, ndjson), ``_since`` (an instant:
resources changed at or after it), ``_type`` (comma-separated types, may repeat). Parameters the
server does not support (``_elements``, ``patient``, ``_typeFilter``, ``includeAssociatedData``,
``organizeOutputBy``, anything unknown) and types it cannot export are refused with 400, unless
the request says ``Prefer: handling=lenient``: then they are ignored and each is named in a warning
OperationOutcome of the manifest's ``error`` files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import Request

from gateway.api.auth import ADMIN_ONLY_TYPES, Principal
from gateway.api.negotiation import FORMAT_PARAMETERS, is_lenient
from gateway.api.outcome import FHIR_JSON, FHIRError
from gateway.config import Role
from gateway.store.compartments import compartment_types
from gateway.store.fhir_dates import InvalidDate, date_range
from gateway.store.search_registry import supported_types

OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
#: Parameters of $export this server does not support (export.html#query-parameters).
UNSUPPORTED = ("_elements", "patient", "_typeFilter", "includeAssociatedData", "organizeOutputBy")


@dataclass(slots=True)
class KickOff:
    """What to export: ``types`` named by the client (None: every type the level allows)."""

    types: list[str] | None
    since: datetime | None
    #: Warnings for what was ignored under handling=lenient.
    notes: list[str] = field(default_factory=list)


def check_headers(request: Request) -> None:
    accept = [part.split(";")[0].strip().lower() for part in request.headers.get("accept", "").split(",")]
    if FHIR_JSON not in accept:
        raise FHIRError(400, f"a $export kick-off needs 'Accept: {FHIR_JSON}' (export.html#headers)")
    if not _prefers_async(request):
        raise FHIRError(400, "a $export kick-off needs 'Prefer: respond-async' (export.html#headers)")


def parse_kick_off(request: Request, params: list[tuple[str, str]], level: str, principal: Principal) -> KickOff:
    """The export asked by ``params`` (name, value pairs) at ``level``; raises FHIRError 400/403."""
    lenient = is_lenient(request)
    kick_off = KickOff(None, None)
    seen: set[str] = set()
    for name, value in params:
        if name in FORMAT_PARAMETERS:
            continue
        if name in ("_outputFormat", "_since") and name in seen:
            raise FHIRError(400, f"{name} may be given once")
        seen.add(name)
        if name == "_outputFormat":
            if value.replace(" ", "+") not in OUTPUT_FORMATS:
                raise FHIRError(400, f"_outputFormat must be one of {', '.join(OUTPUT_FORMATS)}", "not-supported")
        elif name == "_since":
            kick_off.since = _instant(value)
        elif name == "_type":
            kick_off.types = (kick_off.types or []) + [t.strip() for t in value.split(",") if t.strip()]
        else:
            what = "is not supported" if name in UNSUPPORTED else "is not a parameter of $export"
            _refuse_or_note(kick_off, lenient, f"parameter {name[:64]} {what}; it was ignored")
    if kick_off.types is not None:
        kick_off.types = _allowed_types(kick_off, lenient, level, principal)
    return kick_off


def parameters_body(body: Any, operation: str = "$export kick-off") -> list[tuple[str, str]]:
    """(name, value) pairs of a POSTed Parameters resource (valueString, valueInstant, valueCode,
    valueInteger...)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FHIRError(400, f"a POSTed {operation} takes a Parameters resource")
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        raise FHIRError(400, "Parameters.parameter is a list")
    pairs = []
    for parameter in parameters:
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise FHIRError(400, "each Parameters.parameter needs a name")
        values = [
            str(v)
            for k, v in parameter.items()
            if k.startswith("value") and (isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)))
        ]
        if not values:
            values = ["(a value that is not a string)"]
        pairs.append((parameter["name"], values[0]))
    return pairs


def _allowed_types(kick_off: KickOff, lenient: bool, level: str, principal: Principal) -> list[str]:
    known = set(supported_types())
    within = set(compartment_types()) if level != "system" else known
    allowed: list[str] = []
    for resource_type in kick_off.types or ():
        if resource_type in ADMIN_ONLY_TYPES and principal.role is not Role.admin:
            raise FHIRError(403, f"exporting {resource_type} needs the admin role", "forbidden")
        if resource_type not in known:
            _refuse_or_note(kick_off, lenient, f"type {resource_type[:64]} is not supported; it was left out")
        elif resource_type not in within:
            _refuse_or_note(kick_off, lenient, f"type {resource_type} is not in the Patient compartment; left out")
        elif resource_type not in allowed:
            allowed.append(resource_type)
    if not allowed:
        raise FHIRError(400, "_type names no type this export can hold", "not-supported")
    return allowed


def _refuse_or_note(kick_off: KickOff, lenient: bool, note: str) -> None:
    if not lenient:
        raise FHIRError(
            400, note.rsplit(";", 1)[0] + " (send 'Prefer: handling=lenient' to ignore it)", "not-supported"
        )
    kick_off.notes.append(note)


def _instant(value: str) -> datetime:
    try:
        return date_range(value)[0]
    except InvalidDate:
        raise FHIRError(400, "_since must be a FHIR instant, e.g. 2024-01-01T00:00:00Z") from None


def _prefers_async(request: Request) -> bool:
    for header in request.headers.getlist("prefer"):
        for preference in header.replace(";", ",").split(","):
            if preference.strip().lower() == "respond-async":
                return True
    return False
