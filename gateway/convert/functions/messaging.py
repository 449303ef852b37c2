"""Named functions of the MessageHeader (IG MSH[MessageHeader], MSA[MessageHeader]): what its rules
cannot say alone.

R4 requires ``MessageHeader.source.endpoint`` and ``destination.endpoint`` (url, 1..1), and a v2
header often names an application only by a local namespace (``MSH-3`` ``ADTAPP``), which is no
URL. The IG then gives the endpoint the data-absent-reason extension ``unknown`` (MSH-24 and
MSH-25 rows, HD[MessageHeader.source-endpoint] HD.3 row); these builders do that when neither the
network address nor the application gives a URL, so no endpoint is ever invented. And
``MessageHeader.response.identifier`` is an ``id``: an MSA-2 control id that is none makes no
response (``fhir_id``), rather than an invalid one.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.convert.functions.builders import identifier_system
from gateway.convert.functions.predicates import CONDITION_ARGUMENT
from gateway.convert.functions.registry import builder, condition
from gateway.convert.functions.text import text_of
from gateway.convert.model.context import Context
from gateway.convert.model.tables import Table
from gateway.hl7.message import Element, Segment

DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
#: A FHIR id (datatypes.html#id).
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _header(ctx: Context) -> Segment | None:
    seg = ctx.segment
    return seg if seg is not None and seg.name == "MSH" else None


def _absent_endpoint(msh: Segment, ctx: Context, addresses: tuple[int, ...]) -> dict[str, Any] | None:
    """``{"_endpoint": <unknown>}`` when none of the HD fields ``addresses`` is a URL (as the
    endpoint rules read them, HD[uri]); None when one is."""
    if any(identifier_system(msh.field(n), ctx, None) for n in addresses if msh.field(n)):
        return None
    return {"_endpoint": {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]}}


@builder(reads="segment", fields=("MSH-3", "MSH-24"))
def source_endpoint_absent(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """MessageHeader.source: endpoint unknown (data-absent-reason) when neither MSH-24 nor MSH-3 is a URL."""
    msh = _header(ctx)
    return _absent_endpoint(msh, ctx, (24, 3)) if msh is not None else None


@builder(reads="segment", fields=("MSH-5", "MSH-6", "MSH-23", "MSH-25"))
def destination_endpoint_absent(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """MessageHeader.destination: endpoint unknown when a receiver is named (MSH-5, 6, 23 or 25)
    but neither MSH-25 nor MSH-5 is a URL."""
    msh = _header(ctx)
    if msh is None or not any(msh.field(n) for n in (5, 6, 23, 25)):
        return None
    return _absent_endpoint(msh, ctx, (25, 5))


@condition("fhir_id")
def _fhir_id(element: Element) -> bool:
    """The value is a FHIR id (1-64 letters, digits, '-' and '.'), as a message control id may be."""
    return _FHIR_ID.fullmatch(text_of(element)) is not None


CONDITION_ARGUMENT["fhir_id"] = None  # {fhir_id: MSA-2} takes no argument
