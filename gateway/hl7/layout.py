"""A raw message laid out for an operator: each segment with its place, each field that holds
something with its HL7 name (gateway/hl7/fields.py) and its text as sent. The values are the
message's content (PHI): this is for operator screens, never for logs."""

from __future__ import annotations

import base64
from typing import Any

from gateway.errors import ParseError
from gateway.hl7.charset import decode_message
from gateway.hl7.fields import field_name
from gateway.hl7.message import parse


def decoded(raw: bytes) -> str:
    """The raw message as text in its declared character set, else UTF-8 with replacements."""
    try:
        return decode_message(raw)
    except ParseError:
        return raw.decode("utf-8", errors="replace")


def layout(raw: bytes) -> list[dict[str, Any]]:
    """``[{"segment": "PID", "position": 2, "fields": [{"field": "PID-3", "name": "Patient
    Identifier List", "value": "..."}]}]``; ParseError when the bytes are no HL7 message."""
    message = parse(decoded(raw))
    version = message.version
    segments = []
    for position, segment in enumerate(message.segments, 1):
        fields = [
            {"field": f"{segment.name}-{n}", "name": field_name(segment.name, n, version), "value": value}
            for n in range(1, len(segment) + 1)
            if (value := segment.field_raw(n)) != ""
        ]
        segments.append({"segment": segment.name, "position": position, "fields": fields})
    return segments


def raw_view(raw: bytes) -> dict[str, Any]:
    """``raw`` as text, base64 (the exact bytes) and laid out; ``layout`` None (and
    ``layout_error`` why) when it is no readable HL7 message."""
    view: dict[str, Any] = {"raw": decoded(raw), "raw_base64": base64.b64encode(raw).decode()}
    try:
        view["layout"], view["layout_error"] = layout(raw), None
    except ParseError as exc:
        view["layout"], view["layout_error"] = None, exc.safe_text()
    return view


def layout_lines(segments: list[dict[str, Any]]) -> list[str]:
    """The layout as text lines: ``PID#2`` then ``  PID-3  Patient Identifier List  12345^^^HOSP^MR``."""
    width = max((len(f["name"]) for s in segments for f in s["fields"]), default=0)
    lines = []
    for s in segments:
        lines.append(f"{s['segment']}#{s['position']}")
        lines += [f"  {f['field']:8} {f['name'] or '(no HL7 name)':{width}}  {f['value']}" for f in s["fields"]]
    return lines
