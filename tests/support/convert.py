"""Shared helpers for the converter tests: one compiled converter, messages from samples or lines."""

from __future__ import annotations

import functools

from gateway.convert.runtime.engine import Converter
from gateway.hl7.charset import decode_message
from gateway.hl7.message import Message, parse
from tests.conftest import sample


@functools.cache
def converter() -> Converter:
    return Converter.load()


def sample_message(path: str) -> Message:
    return parse(decode_message(sample(path)))


def message(*segments: str) -> Message:
    return parse("\r".join(segments))


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields set, e.g. segment("PID", {3: "1^^^H^MR", 29: "2003"})."""
    return "|".join([name] + [fields.get(n, "") for n in range(1, max(fields) + 1)])


def resources(bundle: dict, resource_type: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e.get("resource", {}).get("resourceType") == resource_type]


def referenced(bundle: dict, reference: dict) -> dict:
    """The resource a Reference (``{"reference": "Type/id"}``) names in the bundle."""
    resource_type, resource_id = reference["reference"].split("/")
    (found,) = [r for r in resources(bundle, resource_type) if r["id"] == resource_id]
    return found


def only(bundle: dict, resource_type: str) -> dict:
    found = resources(bundle, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, got {len(found)}"
    return found[0]


MSH_ADT = "MSH|^~\\&|App|Fac|Rcv|RcvFac|20240101120000+0100||ADT^A01^ADT_A01|CTRL1|P|2.5.1"
PID = "PID|1||12345^^^HOSP^MR||Doe^Jane||19800101|F"
PV1 = "PV1|1|I|||||||||||||||||V100^^^HOSP^VN|||||||||||||||||||||||||20240101110000+0100"


def message_provenance(bundle: dict) -> dict:
    """The message's own Provenance (MSH[Provenance]: the one naming the source message), not an
    order's (ORC[Provenance]) nor the patient record's last update (PID-33, IG PID[Provenance-Patient])."""
    found = [p for p in resources(bundle, "Provenance") if any(e.get("role") == "source" for e in p.get("entity", []))]
    assert len(found) == 1, f"expected one message Provenance, got {len(found)}"
    return found[0]
