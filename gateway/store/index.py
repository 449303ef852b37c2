"""Extract search index values from a resource, by the paths in ``search_registry``.

Values are read by the shape of the element found (FHIR R4 search.html, "Search parameter types"):
a string or code, a Coding or CodeableConcept, an Identifier, a HumanName or Address, a Period,
a Reference. This keeps the extraction generic; new resource types need only new paths.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any

from gateway.lru import LRU
from gateway.store.fhir_dates import InvalidDate, date_range, period_range
from gateway.store.search_params import SearchParam
from gateway.store.search_registry import indexed_parameters

#: Longest text kept in an index column; longer values are cut the same way when searched.
MAX_INDEXED = 256

# Keys of complex types that hold codes or metadata, not searchable text (HumanName.use, Address.type).
_NOT_TEXT = frozenset({"id", "use", "type", "system", "period", "extension"})

# A path step keeping list items whose key equals a value: telecom.where(system=phone).
_WHERE = re.compile(r"where\((\w+)=(\w+)\)")
# A literal reference, relative or absolute, optionally versioned (references.html#literal).
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


@dataclass
class IndexRows:
    """Rows for the four search tables, as tuples in the order of ``COLUMNS`` (for bulk inserts)."""

    #: (type, id, param, system, code)
    tokens: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    #: (type, id, param, value, exact)
    strings: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    #: (type, id, param, low, high)
    dates: list[tuple[str, str, str, datetime, datetime]] = field(default_factory=list)
    #: (type, id, param, target_type, target_id)
    references: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    #: (type, id, param, system, code, unit, value)
    quantities: list[tuple[str, str, str, str, str, str, float]] = field(default_factory=list)

    def extend(self, other: IndexRows) -> None:
        self.tokens += other.tokens
        self.strings += other.strings
        self.dates += other.dates
        self.references += other.references
        self.quantities += other.quantities


#: The columns of each search table, in the order of the IndexRows tuples.
COLUMNS = {
    "token": ("type", "id", "param", "system", "code"),
    "string": ("type", "id", "param", "value", "exact"),
    "date": ("type", "id", "param", "low", "high"),
    "reference": ("type", "id", "param", "target_type", "target_id"),
    "quantity": ("type", "id", "param", "system", "code", "unit", "value"),
}


def text_param(name: str) -> str:
    """Where the texts of token parameter ``name`` are indexed (string rows), for ``:text``."""
    return f"{name}:text"


def of_type_param(name: str) -> str:
    """Where Identifier type and value of token parameter ``name`` are indexed (token rows ``system``,
    ``code|value``), for ``:of-type``."""
    return f"{name}:of-type"


def identifier_param(name: str) -> str:
    """Where Reference.identifier of reference parameter ``name`` is indexed (token rows), for ``:identifier``."""
    return f"{name}:identifier"


def normalize_text(text: str) -> str:
    """Lower case without accents, for string search (search.html#string: case and accent insensitive)."""
    if text.isascii():  # NFKD changes nothing and nothing is combining; casefold is lower
        return " ".join(text.lower().split())[:MAX_INDEXED]
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(stripped.casefold().split())[:MAX_INDEXED]


def parse_reference(value: str) -> tuple[str, str] | None:
    """``(type, id)`` of a literal reference such as ``Patient/1`` or ``http://x/fhir/Patient/1``."""
    match = _REFERENCE.search(value)
    return (match.group(1), match.group(2)) if match else None


def index_rows(
    resource_type: str, resource_id: str, resource: dict[str, Any], only: frozenset[str] | None = None
) -> IndexRows:
    """Every index row ``resource`` needs for the search parameters of ``resource_type`` (or, with
    ``only``, for the parameters of those index names: what a few searches need)."""
    rows = IndexRows()
    plan = _plan(resource_type)
    present = set(plan.always)
    for element in resource:
        found = plan.by_element.get(element)
        if found:
            present.update(found)
    for position in sorted(present):
        param = plan.params[position]
        if only is not None and param.name not in only:
            continue
        values = _values(resource, param.paths)
        if not values:
            continue
        name = param.name
        if param.kind == "token":
            tokens = dict.fromkeys(_tokens(values, []))
            rows.tokens += [(resource_type, resource_id, name, system, code) for system, code in tokens]
            _token_extras(rows, resource_type, resource_id, name, values)
        elif param.kind == "string":
            texts = dict.fromkeys(_strings(values, []))
            rows.strings += [
                (resource_type, resource_id, name, normalize_text(text), text[:MAX_INDEXED]) for text in texts
            ]
        elif param.kind == "date":
            rows.dates += [(resource_type, resource_id, name, low, high) for low, high in dict.fromkeys(_dates(values))]
        elif param.kind == "quantity":
            quantities = dict.fromkeys(_quantities(values))
            rows.quantities += [(resource_type, resource_id, name, *quantity) for quantity in quantities]
        else:
            targets = dict.fromkeys(_references(values, param))
            rows.references += [(resource_type, resource_id, name, kind, target) for kind, target in targets]
            logical = dict.fromkeys(_tokens([v["identifier"] for v in values if _has_dict(v, "identifier")], []))
            by_identifier = identifier_param(name)
            rows.tokens += [(resource_type, resource_id, by_identifier, system, code) for system, code in logical]
    return rows


def _token_extras(rows: IndexRows, resource_type: str, resource_id: str, name: str, values: list[Any]) -> None:
    """The texts of codes (for ``:text``) and the typed identifiers (for ``:of-type``) of a token parameter."""
    texts = dict.fromkeys(_code_texts(values, []))
    by_text = text_param(name)
    rows.strings += [(resource_type, resource_id, by_text, normalize_text(text), text[:MAX_INDEXED]) for text in texts]
    typed = dict.fromkeys(_typed_identifiers(values))
    by_type = of_type_param(name)
    rows.tokens += [(resource_type, resource_id, by_type, system, code) for system, code in typed]


def _has_dict(value: Any, key: str) -> bool:
    return isinstance(value, dict) and isinstance(value.get(key), dict)


def _code_texts(values: list[Any], out: list[str]) -> list[str]:
    """CodeableConcept.text, Coding.display and Identifier.type.text (search.html#modifiers, :text)."""
    for value in values:
        if not isinstance(value, dict):
            continue
        for key in ("text", "display"):
            text = value.get(key)
            if isinstance(text, str) and text.strip():
                out.append(text)
        coding = value.get("coding")
        if isinstance(coding, list):
            _code_texts(coding, out)
        if _has_dict(value, "type") and "value" in value:  # an Identifier
            _code_texts([{"text": value["type"].get("text")}], out)
    return out


def _typed_identifiers(values: list[Any]) -> list[tuple[str, str]]:
    """(type system, ``type code|value``) of each Identifier with a type (search.html#modifiers, :of-type)."""
    out = []
    for value in values:
        if not _has_dict(value, "type") or not isinstance(value.get("value"), str):
            continue
        for system, code in _tokens([value["type"]], []):
            out.append((system, f"{code}|{value['value']}"[:MAX_INDEXED]))
    return out


def _quantities(values: list[Any]) -> list[tuple[str, str, str, float]]:
    """(system, code, unit, value) of each Quantity with a number (the comparator is not kept)."""
    out = []
    for value in values:
        if not isinstance(value, dict):
            continue
        number = value.get("value")
        if isinstance(number, bool) or not isinstance(number, (int, float, Decimal)) or not math.isfinite(number):
            continue
        texts = [value.get(key) for key in ("system", "code", "unit")]
        system, code, unit = (text[:MAX_INDEXED] if isinstance(text, str) else "" for text in texts)
        out.append((system, code, unit, float(number)))
    return out


#: Index rows by (type, id, content hash): see ``rows_for_content``.
_remembered: LRU[tuple[str, str, str], IndexRows] = LRU(8192)


def rows_for_content(resource_type: str, resource_id: str, digest: str, resource: dict[str, Any]) -> IndexRows:
    """``index_rows`` remembered by content: ``digest`` (the sha256 of the resource without the store's ``meta``,
    which no search parameter reads) fixes the rows. Worker threads call it before the write
    transaction, so the writer, holding the database's one write lock, finds them made. The result
    is shared: extend another IndexRows with it, never change it."""
    key = (resource_type, resource_id, digest)
    _, rows = _remembered.get(key)
    if rows is None:
        rows = index_rows(resource_type, resource_id, resource)
        _remembered.put(key, rows)
    return rows


@dataclass(frozen=True)
class _Plan:
    """Which indexed parameters of a type can have values, by the resource's top-level elements."""

    params: list[SearchParam]
    #: Top-level element -> positions in ``params`` of the parameters with a path starting there.
    by_element: dict[str, tuple[int, ...]]
    #: Parameters with a path starting at a choice element (x[x]): always looked at.
    always: tuple[int, ...]


@cache
def _plan(resource_type: str) -> _Plan:
    params = indexed_parameters(resource_type)
    by_element: dict[str, list[int]] = {}
    always: list[int] = []
    for position, param in enumerate(params):
        for path in param.paths:
            step, choice, _ = _steps(path)[0]
            if choice:
                always.append(position)
            else:
                by_element.setdefault(step, []).append(position)
    return _Plan(params, {k: tuple(v) for k, v in by_element.items()}, tuple(always))


def _values(resource: dict[str, Any], paths: tuple[str, ...]) -> list[Any]:
    """The values of every path, in order (``walk``, with the common one-element path done inline)."""
    values: list[Any] = []
    for path in paths:
        steps = _steps(path)
        step, choice, where = steps[0]
        if len(steps) == 1 and not choice and not where:
            child = resource.get(step)
            if isinstance(child, list):
                values += [value for value in child if value is not None]
            elif child is not None:
                values.append(child)
        elif choice or step in resource:
            values += walk(resource, path)
    return values


def walk(node: Any, path: str) -> list[Any]:
    """Values at a dotted ``path`` below ``node``, descending into lists.

    ``x[x]`` is any choice of x (FHIR choice types); ``where(k=v)`` keeps the items whose k is v.
    """
    current = [node]
    for step, choice, where in _steps(path):
        if where:
            key, wanted = where
            current = [item for item in current if isinstance(item, dict) and item.get(key) == wanted]
            continue
        found: list[Any] = []
        for item in current:
            if not isinstance(item, dict):
                continue
            if choice:
                children = [v for k, v in item.items() if k.startswith(step) and k[len(step) : len(step) + 1].isupper()]
            else:
                children = [item[step]] if step in item else []
            for child in children:
                found.extend(child if isinstance(child, list) else [child])
        current = found
    return [value for value in current if value is not None]


@cache
def _steps(path: str) -> tuple[tuple[str, bool, tuple[str, str] | None], ...]:
    """``path`` parsed once: (element or choice stem, is a choice, where-filter) per step."""
    steps: list[tuple[str, bool, tuple[str, str] | None]] = []
    for step in path.split("."):
        where = _WHERE.fullmatch(step)
        if where:
            steps.append(("", False, (where.group(1), where.group(2))))
        elif step.endswith("[x]"):
            steps.append((step[:-3], True, None))
        else:
            steps.append((step, False, None))
    return tuple(steps)


def _tokens(values: list[Any], out: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(system, code) of each value, appended to ``out``."""
    for value in values:
        if isinstance(value, dict):
            coding = value.get("coding")
            if isinstance(coding, list):  # CodeableConcept
                _tokens(coding, out)
            # Coding.system|code; Identifier.system|value; ContactPoint.system|value
            code = value.get("code", value.get("value"))
            if isinstance(code, str) and code:
                system = value.get("system")
                out.append(((system if isinstance(system, str) else "")[:MAX_INDEXED], code[:MAX_INDEXED]))
        elif isinstance(value, bool):
            out.append(("", "true" if value else "false"))
        elif isinstance(value, str):
            out.append(("", value[:MAX_INDEXED]))
    return out


def _strings(values: list[Any], out: list[str]) -> list[str]:
    """The non-blank texts in each value (the text parts of a HumanName or Address), appended to ``out``."""
    for value in values:
        if isinstance(value, str):
            if value.strip():
                out.append(value)
        elif isinstance(value, list):
            _strings(value, out)
        elif isinstance(value, dict):
            _strings([v for k, v in value.items() if k not in _NOT_TEXT and not k.startswith("_")], out)
    return out


def _dates(values: list[Any]) -> list[tuple[datetime, datetime]]:
    out = []
    for value in values:
        try:
            if isinstance(value, str):
                out.append(_date_range(value))
            elif isinstance(value, dict) and ("start" in value or "end" in value):  # Period
                start, end = value.get("start"), value.get("end")
                if isinstance(start, (str, type(None))) and isinstance(end, (str, type(None))):
                    out.append(_period_range(start, end))
                else:
                    out.append(period_range(start, end))
        except InvalidDate:
            continue  # validation reports bad dates; the index just cannot use them
    return out


def _references(values: list[Any], param: SearchParam) -> list[tuple[str, str]]:
    out = []
    for value in values:
        if isinstance(value, dict):
            reference = value.get("reference")
            if isinstance(reference, str):
                target = _reference_target(reference)
                if target and (not param.targets or target[0] in param.targets):
                    out.append(target)
    return out


# The same dates and references recur across a batch's resources: parse each once.
_date_range = lru_cache(maxsize=8192)(date_range)
_period_range = lru_cache(maxsize=4096)(period_range)
_reference_target = lru_cache(maxsize=8192)(parse_reference)
