"""Extract search index values from a resource, by the paths in ``search_registry``.

Values are read by the shape of the element found (FHIR R4 search.html, "Search parameter types"):
a string or code, a Coding or CodeableConcept, an Identifier, a HumanName or Address, a Period,
a Reference. This keeps the extraction generic; new resource types need only new paths.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime
from typing import Any, Iterator

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
    """Rows for the four search tables, ready for an executemany insert."""

    tokens: list[dict[str, Any]] = field(default_factory=list)
    strings: list[dict[str, Any]] = field(default_factory=list)
    dates: list[dict[str, Any]] = field(default_factory=list)
    references: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: "IndexRows") -> None:
        self.tokens += other.tokens
        self.strings += other.strings
        self.dates += other.dates
        self.references += other.references


def normalize_text(text: str) -> str:
    """Lower case without accents, for string search (search.html#string: case and accent insensitive)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(stripped.casefold().split())[:MAX_INDEXED]


def parse_reference(value: str) -> tuple[str, str] | None:
    """``(type, id)`` of a literal reference such as ``Patient/1`` or ``http://x/fhir/Patient/1``."""
    match = _REFERENCE.search(value)
    return (match.group(1), match.group(2)) if match else None


def index_rows(resource_type: str, resource_id: str, resource: dict[str, Any]) -> IndexRows:
    """Every index row ``resource`` needs for the search parameters of ``resource_type``."""
    rows = IndexRows()
    key = {"type": resource_type, "id": resource_id}
    for param in indexed_parameters(resource_type):
        values = [value for path in param.paths if _present(resource, path) for value in walk(resource, path)]
        if not values:
            continue
        if param.kind == "token":
            rows.tokens += [{**key, "param": param.name, "system": s, "code": c} for s, c in _unique(_tokens(values))]
        elif param.kind == "string":
            rows.strings += [
                {**key, "param": param.name, "value": normalize_text(text), "exact": text[:MAX_INDEXED]}
                for text in _unique(_strings(values))
            ]
        elif param.kind == "date":
            rows.dates += [{**key, "param": param.name, "low": lo, "high": hi} for lo, hi in _unique(_dates(values))]
        else:
            rows.references += [
                {**key, "param": param.name, "target_type": t, "target_id": i}
                for t, i in _unique(_references(values, param))
            ]
    return rows


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


@lru_cache(maxsize=None)
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


def _present(resource: dict[str, Any], path: str) -> bool:
    """A cheap first check: does the resource have the path's first element at all?"""
    step, choice, _ = _steps(path)[0]
    return choice or step in resource


def _tokens(values: list[Any]) -> Iterator[tuple[str, str]]:
    for value in values:
        if isinstance(value, bool):
            yield "", "true" if value else "false"
        elif isinstance(value, str):
            yield "", value[:MAX_INDEXED]
        elif isinstance(value, dict):
            if isinstance(value.get("coding"), list):  # CodeableConcept
                yield from _tokens(value["coding"])
            # Coding.system|code; Identifier.system|value; ContactPoint.system|value
            code = value.get("code", value.get("value"))
            if isinstance(code, str) and code:
                system = value.get("system")
                yield (system if isinstance(system, str) else "")[:MAX_INDEXED], code[:MAX_INDEXED]


def _strings(values: list[Any]) -> Iterator[str]:
    for value in values:
        if isinstance(value, str):
            if value.strip():
                yield value
        elif isinstance(value, list):
            yield from _strings(value)
        elif isinstance(value, dict):  # HumanName, Address: their text parts
            yield from _strings([v for k, v in value.items() if k not in _NOT_TEXT and not k.startswith("_")])


def _dates(values: list[Any]) -> Iterator[tuple[datetime, datetime]]:
    for value in values:
        try:
            if isinstance(value, str):
                yield date_range(value)
            elif isinstance(value, dict) and ("start" in value or "end" in value):  # Period
                yield period_range(value.get("start"), value.get("end"))
        except InvalidDate:
            continue  # validation reports bad dates; the index just cannot use them


def _references(values: list[Any], param: SearchParam) -> Iterator[tuple[str, str]]:
    for value in values:
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            target = parse_reference(value["reference"])
            if target and (not param.targets or target[0] in param.targets):
                yield target


def _unique(items: Iterator[Any]) -> list[Any]:
    return list(dict.fromkeys(items))
