"""Validate a transaction Bundle before it is delivered.

Each resource is checked with the fhir.resources R4B models (structure, cardinality, primitive
formats), plus what those models do not check: no empty elements, codes of a few required
bindings, the invariants of a few resources (Appointment app-1 to app-4), unique entries, and
references that resolve inside the bundle or name a FHIR resource type. Model validation is slow:
a resource whose shape the model accepted before only has its primitive values checked, each with
the model's own schema for its element (gateway/shapecheck.py), and every outcome is cached per
resource content (canonical JSON) in an LRU bounded in entries and bytes; a resource whose canonical
JSON is longer than ``MAX_CACHED_RESOURCE`` (a report's text, an attachment) is checked every time,
not kept.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import orjson
import pydantic
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource

from gateway import fhirjson
from gateway.errors import ValidationError
from gateway.lru import LRU
from gateway.shapecheck import Shape, ShapeRegistry, Walk

CACHE_SIZE = 8192
#: Bytes of canonical JSON the validation cache keeps at most (its keys are most of its size).
CACHE_BYTES = 32 * 1024 * 1024
#: Longest canonical JSON of a resource whose outcome is cached.
MAX_CACHED_RESOURCE = 16 * 1024
#: What a cache entry costs besides its key's bytes (its outcome, the LRU's links), about.
_ENTRY_OVERHEAD = 200

_RELATIVE_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")
_ABSOLUTE_REFERENCE = re.compile(r"^https?://\S+$")

# Required bindings fhir.resources does not enforce, for the elements the gateway writes (FHIR R4).
_REQUIRED_CODES: dict[tuple[str, ...], frozenset[str]] = {
    ("Observation", "status"): frozenset(
        "registered preliminary final amended corrected cancelled entered-in-error unknown".split()
    ),
    ("DiagnosticReport", "status"): frozenset(
        "registered partial preliminary final amended corrected appended cancelled entered-in-error unknown".split()
    ),
    ("Encounter", "status"): frozenset(
        "planned arrived triaged in-progress onleave finished cancelled entered-in-error unknown".split()
    ),
    ("Patient", "gender"): frozenset("male female other unknown".split()),
    ("Patient", "telecom", "system"): frozenset("phone fax email pager url sms other".split()),
    ("Patient", "telecom", "use"): frozenset("home work temp old mobile".split()),
    ("Patient", "name", "use"): frozenset("usual official temp nickname anonymous old maiden".split()),
    ("Patient", "address", "use"): frozenset("home work temp old billing".split()),
    ("Patient", "address", "type"): frozenset("postal physical both".split()),
    ("Observation", "valueQuantity", "comparator"): frozenset("< <= >= >".split()),
}


_cache: LRU[bytes, _Outcome] = LRU(CACHE_SIZE, max_bytes=CACHE_BYTES)
_shapes = ShapeRegistry()


def clear_cache() -> None:
    _cache.clear()
    _shapes.clear()


@functools.cache
def is_resource_type(name: str) -> bool:
    try:
        model = get_fhir_model_class(name)
    except ValueError:
        return False
    return isinstance(model, type) and issubclass(model, Resource)


def _model_problem(resource: dict[str, Any]) -> str | None:
    """What the R4B model says is wrong with ``resource`` (None when it validates)."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not is_resource_type(rtype):
        return f"resourceType {rtype!r} is not a FHIR resource type"
    model = get_fhir_model_class(rtype)
    try:
        model.model_validate(resource)
    except pydantic.ValidationError as exc:
        return pydantic_problems(exc)
    except (TypeError, ValueError) as exc:  # fhir.resources raises these for some malformed input
        return f"the R4B model refused it ({type(exc).__name__})"
    return None


def pydantic_problems(exc: pydantic.ValidationError) -> str:
    """The first problems pydantic found, by element and rule, never by value: pydantic's own
    messages describe the rule; a validator's words (value_error, assertion_error) may quote the
    value, so they are left out, and so is a key that is no element name."""
    problems = []
    for err in exc.errors()[:5]:
        location = ".".join(_element_name(p) for p in err["loc"]) or "(resource)"
        message = "invalid value" if err["type"] in _QUOTING_ERRORS else err["msg"]
        problems.append(f"{location}: {message}")
    return "; ".join(problems)


def _element_name(part: object) -> str:
    """A part of an element's location as it may be written: a list index, or a name as FHIR's are
    (letters and digits); anything else, which only data could have made, as "?"."""
    if isinstance(part, int) or (isinstance(part, str) and _ELEMENT_NAME.match(part)):
        return str(part)
    return "?"


_ELEMENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
#: pydantic error types whose message is a validator's own text (which may quote the input).
_QUOTING_ERRORS = frozenset({"value_error", "assertion_error", "assertion_failed"})


def _content_problem(resource: dict[str, Any]) -> str | None:
    """Everything wrong with the resource on its own: empty elements, the model, required codes."""
    empty = next(_empty_elements(resource, ""), None)
    if empty is not None:
        return f"element {empty} is empty"
    problem = _model_problem(resource)
    if problem is not None:
        return problem
    return _code_problem(resource)


def _code_problem(resource: dict[str, Any]) -> str | None:
    """A code of a required binding the R4B models leave unchecked that is not in its value set, or
    a broken invariant."""
    rtype = resource["resourceType"]
    for (owner, *keys), allowed in _REQUIRED_CODES.items():
        if owner == rtype:
            for code in _values_at(resource, tuple(keys)):
                if code not in allowed:
                    return f"{'.'.join(keys)}: the code is not one of {sorted(allowed)}"
    invariants = _INVARIANTS.get(rtype)
    return invariants(resource) if invariants is not None else None


#: R4 Appointment app-3: only these statuses may lack start and end.
_APPOINTMENT_WITHOUT_TIMES = frozenset({"proposed", "cancelled", "waitlist"})


def _appointment_problem(resource: dict[str, Any]) -> str | None:
    """FHIR R4 Appointment invariants app-2 (start and end, or neither), app-3 (only a proposed,
    cancelled or waitlisted appointment may lack them), app-4 (a cancelationReason only on a
    cancelled appointment; the expression names 'no-show', which is no code) and app-1 (a
    participant has a type or an actor)."""
    has_start, has_end = "start" in resource, "end" in resource
    if has_start != has_end:
        return "app-2: an Appointment has both start and end, or neither"
    if not has_start and resource.get("status") not in _APPOINTMENT_WITHOUT_TIMES:
        return "app-3: only a proposed, cancelled or waitlisted Appointment may lack start and end"
    if "cancelationReason" in resource and resource.get("status") != "cancelled":
        return "app-4: cancelationReason is only for a cancelled Appointment"
    for participant in resource.get("participant") or ():
        if isinstance(participant, dict) and "type" not in participant and "actor" not in participant:
            return "app-1: an Appointment participant has a type or an actor"
    return None


#: FHIR R4 invariants the R4B models do not check, per resource type.
_INVARIANTS: dict[str, Callable[[dict[str, Any]], str | None]] = {"Appointment": _appointment_problem}


class _Outcome(NamedTuple):
    problem: str | None
    #: Every Reference.reference value in the resource.
    references: tuple[Any, ...]


def check_resource(resource: dict[str, Any]) -> _Outcome:
    """The content checks for one resource, from the cache when this content was seen before."""
    # The canonical JSON itself is the key: hashing it again would cost more than the lookup saves.
    digest = fhirjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
    outcome = _cache.data.get(digest)  # lock-free read of a dict (atomic in CPython); the LRU order is kept on writes
    if outcome is not None:
        return outcome
    _, outcome = _cache.get(digest)
    if outcome is not None:
        return outcome
    walk = Walk()
    shape = walk.shape(resource)
    outcome = _Outcome(_shape_problem(resource, walk, shape), tuple(walk.references))
    if len(digest) <= MAX_CACHED_RESOURCE:
        kept = bytes(memoryview(digest))  # its own size: orjson's output of a small value holds 4 KB
        _cache.put(kept, outcome, len(kept) + _ENTRY_OVERHEAD)
    return outcome


def _shape_problem(resource: dict[str, Any], walk: Walk, shape: Shape) -> str | None:
    """``_content_problem``, with the R4B model run only for a shape it has not accepted before."""
    if not walk.empty:
        checkers = _shapes.checkers(shape)
        if checkers is not None and all(check(value) for check, value in zip(checkers, walk.values)):
            return _code_problem(resource)
    problem = _content_problem(resource)  # an unknown shape, or a problem to explain: the model decides
    if problem is None:
        _shapes.accept(shape, resource)
    return problem


def _empty_elements(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict):
        if not value:
            yield path
        for key, item in value.items():
            yield from _empty_elements(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        if not value:
            yield path
        for n, item in enumerate(value):
            yield from _empty_elements(item, f"{path}[{n}]")
    elif value is None or (isinstance(value, str) and not value.strip()):
        yield path


def _values_at(value: Any, keys: tuple[str, ...]) -> Iterator[Any]:
    if not keys:
        yield value
        return
    if isinstance(value, list):
        for item in value:
            yield from _values_at(item, keys)
    elif isinstance(value, dict) and keys[0] in value:
        yield from _values_at(value[keys[0]], keys[1:])


def _references(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if key == "reference":
                yield where, item
            else:
                yield from _references(item, where)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from _references(item, f"{path}[{n}]")


def _check_reference(reference: Any, local: set[str], full_urls: set[str]) -> str | None:
    if not isinstance(reference, str):
        return "is not a string"
    if reference in local or reference in full_urls:
        return None
    if reference.startswith("urn:uuid:"):
        return "names no entry of this bundle"
    if reference.startswith("#") or _ABSOLUTE_REFERENCE.match(reference):
        return None
    m = _RELATIVE_REFERENCE.match(reference)
    if m is None:
        return "is not Type/id, an absolute URL or a bundle entry"
    if not is_resource_type(m.group(1)):
        return f"names {m.group(1)!r}, which is not a FHIR resource type"
    return None


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Raise ValidationError naming the resource and element of the first problem found."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ValidationError("not a Bundle")
    if bundle.get("type") != "transaction":
        raise ValidationError(f"Bundle.type is {bundle.get('type')!r}, expected 'transaction'")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise ValidationError("Bundle has no entries")
    local: set[str] = set()
    full_urls: set[str] = set()
    resources: list[tuple[str, dict[str, Any]]] = []
    for n, entry in enumerate(entries):
        request = (entry.get("request") if isinstance(entry, dict) else None) or {}
        if request.get("method") == "DELETE" and isinstance(entry, dict) and "resource" not in entry:
            # A DELETE entry (an ADT^A29, a problem delete) names what it deletes and carries nothing.
            url = request.get("url")
            m = _RELATIVE_REFERENCE.match(url) if isinstance(url, str) else None
            if m is None or not isinstance(url, str) or m.group(3) or not is_resource_type(m.group(1)):
                where = f"Bundle.entry[{n}].request: DELETE needs a url Type/id"
                raise ValidationError(f"{where}, not {url!r}", safe=where)
            if url in local:
                raise ValidationError(f"{url} appears twice in the bundle (Bundle.entry[{n}])")
            local.add(url)
            continue
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise ValidationError(f"Bundle.entry[{n}] has no resource")
        name = f"{resource.get('resourceType')}/{resource.get('id')}"
        if name in local:
            raise ValidationError(f"{name} appears twice in the bundle (Bundle.entry[{n}])")
        local.add(name)
        if request.get("method") != "PUT" or request.get("url") != name:
            raise ValidationError(f"{name}: Bundle.entry[{n}].request must be PUT {name}")
        if entry.get("fullUrl"):
            full_urls.add(entry["fullUrl"])
        resources.append((name, resource))
    for name, resource in resources:
        outcome = check_resource(resource)
        if outcome.problem is not None:
            raise ValidationError(f"{name}: {outcome.problem}")
        for reference in outcome.references:
            if reference in local or reference in full_urls:
                continue
            problem = _check_reference(reference, local, full_urls)
            if problem is not None:
                where = next(w for w, r in _references(resource, "") if r == reference)
                # The log's text leaves out what the reference names: a mapping may build one from data.
                safe = "names no FHIR resource type" if problem.startswith("names '") else problem
                raise ValidationError(
                    f"{name}: the reference at {where} {problem}", safe=f"{name}: the reference at {where} {safe}"
                )
