"""Content negotiation and request preferences of the FHIR API (http.html#mime-type, http.html#prefer).

JSON only: ``_format`` (json, application/json, application/fhir+json) wins over ``Accept``. The
answer is ``application/fhir+json``, or ``application/json`` when that alone was asked for.
``_pretty=true`` indents. ``Prefer: handling=lenient`` makes unknown parameters ignored instead of
refused (search.html#errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from gateway.api.outcome import FHIR_JSON, FHIRError, FHIRResponse

PLAIN_JSON = "application/json"
#: Query parameters about the response, not the search (http.html#parameters).
FORMAT_PARAMETERS = ("_format", "_pretty")

# _format values and Accept media types we answer, and what we answer them with. "application/json+fhir"
# is the DSTU2 name some clients still send.
_FORMATS = {
    "json": FHIR_JSON,
    FHIR_JSON: FHIR_JSON,
    "application/json+fhir": FHIR_JSON,
    PLAIN_JSON: PLAIN_JSON,
    "*/*": FHIR_JSON,
    "application/*": FHIR_JSON,
}


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    media_type: str = FHIR_JSON
    pretty: bool = False


def negotiate(request: Request) -> ResponseFormat:
    """The format to answer ``request`` in; raises 406 when only formats other than JSON are acceptable."""
    requested = request.query_params.get("_format")
    if requested is not None:
        media_type = _FORMATS.get(_media_type(requested.replace(" ", "+")))  # "+" may arrive as a space
        if media_type is None or requested.startswith("*"):
            raise FHIRError(406, f"_format {requested!r} is not supported; only JSON is", "not-supported")
    else:
        media_type = _from_accept(request.headers.get("accept", ""))
    pretty = request.query_params.get("_pretty", "false").lower()
    if pretty not in ("true", "false"):
        raise FHIRError(400, f"_pretty must be true or false, got {pretty!r}")
    chosen = ResponseFormat(media_type, pretty == "true")
    request.state.response_format = chosen
    return chosen


def respond(request: Request, body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> FHIRResponse:
    """A FHIR JSON response in the format negotiated for ``request``."""
    chosen: ResponseFormat = getattr(request.state, "response_format", None) or negotiate(request)
    return FHIRResponse(body, status_code, headers, chosen.media_type, pretty=chosen.pretty)


def is_lenient(request: Request) -> bool:
    """Whether the client asked for ``Prefer: handling=lenient`` (RFC 7240 preferences)."""
    for header in request.headers.getlist("prefer"):
        for preference in header.replace(";", ",").split(","):
            name, _, value = preference.strip().partition("=")
            if name.strip().lower() == "handling" and value.strip().strip('"').lower() == "lenient":
                return True
    return False


def _from_accept(header: str) -> str:
    """The best JSON type in an Accept header; no header means any (RFC 9110, 12.5.1)."""
    if not header.strip():
        return FHIR_JSON
    best: tuple[float, int, str] | None = None
    for item in header.split(","):
        media_range, *parameters = (part.strip() for part in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media_type = _FORMATS.get(media_range.lower())
        if media_type is None or quality <= 0:
            continue
        candidate = (quality, 1 if media_type == FHIR_JSON else 0, media_type)
        best = max(best, candidate) if best else candidate
    if best is None:
        raise FHIRError(406, f"cannot answer in {header!r}; this server speaks {FHIR_JSON} and {PLAIN_JSON}")
    return best[2]


def _media_type(value: str) -> str:
    return value.split(";")[0].strip().lower()
