"""Every FHIR payload the API serves in a test, checked by two R4 validators: fhirkit (independent, Rust)
and fhir.resources' R4B models.

``PayloadCheck`` wraps ``FHIRResponse.render``, the one place FHIR JSON is written for an answer
(resources, Bundles, CapabilityStatement, OperationOutcome), so an in-process app under test is
covered whichever client calls it: tests/support/asgi_client.py, a uvicorn thread (fhirpy, fhirclient)
or Starlette's routes directly. Problems are collected, not raised inside the app (that would turn
the answer into a 500 in another thread); the autouse fixture in tests/conftest.py fails the test
with them. Gateways started as subprocesses (tests/support/gateway_process.py) are not covered.

A payload is checked once: identical bytes (the CapabilityStatement, a resource read again) are
remembered by digest, which keeps the check to a few percent of the FHIR API tests' time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import fhirkit
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from gateway import fhirjson
from gateway.api.outcome import FHIRResponse

_checked: set[bytes] = set()


def problems_in(payload: bytes) -> list[str]:
    """What fhirkit and fhir.resources find wrong with ``payload``, a FHIR JSON resource; empty when valid."""
    digest = hashlib.blake2b(payload, digest_size=16).digest()
    if digest in _checked:
        return []
    problems = [str(issue) for issue in fhirkit.validate(payload) if issue.severity == "error"]
    value = fhirjson.loads(payload)
    resource_type = value.get("resourceType") if isinstance(value, dict) else None
    if not isinstance(resource_type, str):
        problems.append("fhir.resources: no resourceType")
    else:
        try:
            get_fhir_model_class(resource_type).model_validate(value)
        except (KeyError, ValueError) as exc:  # an unknown type, or ValidationError (a ValueError)
            problems.append(f"fhir.resources: {_short(exc)}")
    if not problems:
        _checked.add(digest)
    return problems


class PayloadCheck:
    """Validates what ``FHIRResponse.render`` writes while installed; ``problems`` lists the failures."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked = 0

    @contextmanager
    def installed(self) -> Iterator[PayloadCheck]:
        original: Callable[[FHIRResponse, Any], bytes] = FHIRResponse.render

        def render(response: FHIRResponse, content: Any) -> bytes:
            body = original(response, content)
            if body:
                self.checked += 1
                for problem in problems_in(body):
                    self.problems.append(f"{_describe(body)}: {problem}")
            return body

        FHIRResponse.render = render  # type: ignore[method-assign]
        try:
            yield self
        finally:
            FHIRResponse.render = original  # type: ignore[method-assign]


def _describe(body: bytes) -> str:
    value = fhirjson.loads(body)
    if isinstance(value, dict):
        return f"{value.get('resourceType')}/{value.get('id', '-')} ({len(body)} bytes)"
    return f"a {type(value).__name__} ({len(body)} bytes)"


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
    return str(exc)[:300]
