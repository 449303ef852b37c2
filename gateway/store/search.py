"""Turn FHIR search parameters into one SQL query over the resource table and the search index.

Semantics follow FHIR R4 search.html: repeated parameters are ANDed, comma-separated values ORed;
token ``[system]|[code]``; string prefix match ignoring case and accents (``:exact``, ``:contains``);
date prefixes against the value's implicit range; references ``[type]/id``, ``id``, ``:Type``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, and_, exists, false, func, or_, select

from gateway.store.fhir_dates import InvalidDate, date_range
from gateway.store.index import MAX_INDEXED, normalize_text, parse_reference
from gateway.store.resource_tables import SEARCH_TABLES, fhir_resource
from gateway.store.search_params import COMMON_PARAMETERS, RESULT_PARAMETERS, SEARCH_PARAMETERS, SearchParam

DEFAULT_COUNT = 50
MAX_COUNT = 1000

_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{1,63}")
# Which kind of condition should pick the candidate rows; the rest are checked per candidate.
_SELECTIVITY = {"_id": 0, "reference": 1, "token": 2, "string": 3, "date": 4, "_lastUpdated": 5}


class SearchError(ValueError):
    """A search the store cannot run; ``code`` is the OperationOutcome issue type (valueset-issue-type)."""

    def __init__(self, message: str, code: str = "invalid"):
        super().__init__(message)
        self.code = code


class UnknownResourceType(SearchError):
    def __init__(self, resource_type: str):
        super().__init__(f"resource type {resource_type!r} is not supported", code="not-supported")


@dataclass(frozen=True)
class SearchQuery:
    """A parsed search: the matching rows, and the page asked for."""

    where: list[ColumnElement[bool]]
    count: int
    offset: int

    def page(self) -> Select[Any]:
        stmt = select(fhir_resource.c.content).where(*self.where).order_by(fhir_resource.c.id)
        return stmt.limit(self.count).offset(self.offset)

    def total(self) -> Select[Any]:
        return select(func.count()).select_from(fhir_resource).where(*self.where)


def build_search(resource_type: str, params: dict[str, list[str]]) -> SearchQuery:
    """Parse ``params`` (name[:modifier] -> raw values) for ``resource_type``; raises SearchError."""
    if resource_type not in SEARCH_PARAMETERS:
        raise UnknownResourceType(resource_type)
    definitions = SEARCH_PARAMETERS[resource_type]
    count, offset = DEFAULT_COUNT, 0
    conditions: list[tuple[int, _Condition]] = []
    for key, raw_values in params.items():
        name, _, modifier = key.partition(":")
        if name in RESULT_PARAMETERS:
            number = _integer(key, raw_values)
            if name == "_count":
                count = min(number, MAX_COUNT)
            else:
                offset = number
            continue
        for raw in raw_values:
            if not _split(raw):
                continue  # an empty value is ignored (search.html#errors)
            if name in COMMON_PARAMETERS:
                condition = _common_condition(name, modifier, raw)
            elif name in definitions:
                condition = _index_condition(resource_type, definitions[name], modifier, raw)
            else:
                known = ", ".join(sorted([*definitions, *COMMON_PARAMETERS, *RESULT_PARAMETERS]))
                raise SearchError(
                    f"unknown search parameter {name!r} for {resource_type} (supported: {known})", "not-supported"
                )
            conditions.append((_SELECTIVITY[condition.kind], condition))
    where: list[ColumnElement[bool]] = [fhir_resource.c.type == resource_type, fhir_resource.c.deleted == false()]
    conditions.sort(key=lambda item: item[0])
    for position, (_, condition) in enumerate(conditions):
        where.append(condition.driving() if position == 0 else condition.correlated())
    return SearchQuery(where, count, offset)


@dataclass(frozen=True)
class _Condition:
    """One parameter occurrence: rows of an index table (or, without ``param``, the resource table) that match."""

    kind: str
    match: ColumnElement[bool]
    resource_type: str = ""
    param: str = ""

    def driving(self) -> ColumnElement[bool]:
        """As ``id IN (index lookup)``: the database starts from the index rows."""
        if not self.param:
            return self.match
        table = SEARCH_TABLES[self.kind]
        lookup = select(table.c.id).where(table.c.type == self.resource_type, table.c.param == self.param, self.match)
        return fhir_resource.c.id.in_(lookup)

    def correlated(self) -> ColumnElement[bool]:
        """As ``EXISTS (row for this candidate)``: checked per candidate through (type, id, param)."""
        if not self.param:
            return self.match
        table = SEARCH_TABLES[self.kind]
        return exists().where(
            table.c.type == fhir_resource.c.type,
            table.c.id == fhir_resource.c.id,
            table.c.param == self.param,
            self.match,
        )


def _common_condition(name: str, modifier: str, raw: str) -> _Condition:
    _no_modifier(name, modifier)
    if name == "_id":
        return _Condition("_id", fhir_resource.c.id.in_(_split(raw)))
    column = fhir_resource.c.last_updated  # _lastUpdated: a point in time
    return _Condition("_lastUpdated", or_(*(_point_in_range(column, value) for value in _split(raw))))


def _index_condition(resource_type: str, param: SearchParam, modifier: str, raw: str) -> _Condition:
    table = SEARCH_TABLES[param.kind]
    values = _split(raw)
    if param.kind == "token":
        _no_modifier(param.name, modifier)
        match = or_(*(_token_match(table, value) for value in values))
    elif param.kind == "string":
        if modifier not in ("", "exact", "contains"):
            raise SearchError(
                f"modifier :{modifier} is not supported on string parameter {param.name!r}", "not-supported"
            )
        match = or_(*(_string_match(table, value, modifier) for value in values))
    elif param.kind == "date":
        _no_modifier(param.name, modifier)
        match = or_(*(_range_match(table.c.low, table.c.high, value) for value in values))
    else:
        match = or_(*(_reference_match(table, param, modifier, value) for value in values))
    return _Condition(param.kind, match, resource_type, param.index_name)


def _token_match(table: Table, value: str) -> ColumnElement[bool]:
    parts = [_unescape(part)[:MAX_INDEXED] for part in _split(value, "|", limit=1)]
    if len(parts) == 1:  # code : in any system, or none
        return table.c.code == parts[0]
    system, code = parts
    if not code:  # system| : any code in that system
        return table.c.system == system
    return and_(table.c.system == system, table.c.code == code)  # |code : code with no system


def _string_match(table: Table, value: str, modifier: str) -> ColumnElement[bool]:
    text = _unescape(value)
    normalized = normalize_text(text)
    if modifier == "contains":
        return table.c.value.contains(normalized, autoescape=True)
    if modifier == "exact":
        return and_(table.c.value == normalized, table.c.exact == text[:MAX_INDEXED])
    # A prefix as a b-tree range: value >= "smi" AND value < "smj".
    if not normalized:
        return table.c.value == ""
    following = normalized[:-1] + chr(ord(normalized[-1]) + 1) if ord(normalized[-1]) < 0x10FFFF else None
    lower = table.c.value >= normalized
    return and_(lower, table.c.value < following) if following else lower


def _reference_match(table: Table, param: SearchParam, modifier: str, value: str) -> ColumnElement[bool]:
    target_types = param.targets
    if modifier:
        if not _TYPE_NAME.fullmatch(modifier) or (target_types and modifier not in target_types):
            raise SearchError(f"modifier :{modifier} is not a resource type {param.name!r} can refer to")
        target_types = (modifier,)
    value = _unescape(value)
    if "/" in value:
        target = parse_reference(value)
        if target is None:
            raise SearchError(f"{value!r} is not a reference ([type]/[id] or [id]) for {param.name!r}")
        if target_types and target[0] not in target_types:
            raise SearchError(f"{param.name!r} refers to {', '.join(target_types)}, not {target[0]}")
        return and_(table.c.target_type == target[0], table.c.target_id == target[1])
    if target_types:
        return and_(table.c.target_type.in_(target_types), table.c.target_id == value)
    return table.c.target_id == value


def _range_match(low: ColumnElement[datetime], high: ColumnElement[datetime], value: str) -> ColumnElement[bool]:
    """Stored range [low, high) against the search range [start, end) under a prefix (search.html#prefix)."""
    prefix, start, end = _date_value(value)
    if prefix == "eq":  # the search range contains the value's range
        return and_(low >= start, high <= end)
    if prefix == "ne":
        return or_(low < start, high > end)
    if prefix == "gt":  # the range above the search value overlaps the value
        return high > end
    if prefix == "lt":
        return low < start
    if prefix == "ge":  # gt, or contained: reduces to this for any non-empty range
        return or_(low >= start, high > end)
    if prefix == "le":
        return or_(low < start, high <= end)
    if prefix == "sa":
        return low >= end
    return high <= start  # eb


def _point_in_range(column: ColumnElement[datetime], value: str) -> ColumnElement[bool]:
    """Like ``_range_match`` for a stored instant (a range one tick long)."""
    prefix, start, end = _date_value(value)
    if prefix == "eq":
        return and_(column >= start, column < end)
    if prefix == "ne":
        return or_(column < start, column >= end)
    if prefix in ("gt", "sa"):
        return column >= end
    if prefix in ("lt", "eb"):
        return column < start
    if prefix == "ge":
        return column >= start
    return column < end  # le


def _date_value(value: str) -> tuple[str, datetime, datetime]:
    prefix = value[:2] if value[:2] in _PREFIXES else ""
    text = value[len(prefix) :].replace(" ", "+")  # an unencoded "+" in a query string arrives as a space
    if value[:2].isalpha() and not prefix:
        raise SearchError(f"date prefix {value[:2]!r} is not supported (use one of {', '.join(_PREFIXES)})")
    try:
        start, end = date_range(text)
    except InvalidDate as exc:
        raise SearchError(str(exc)) from None
    return prefix or "eq", start, end


def _integer(name: str, values: list[str]) -> int:
    if len(values) != 1 or not values[0].isdigit():
        raise SearchError(f"{name} must be one non-negative integer, got {values!r}")
    return int(values[0])


def _no_modifier(name: str, modifier: str) -> None:
    if modifier:
        raise SearchError(f"modifier :{modifier} is not supported on {name!r}", "not-supported")


def _split(value: str, separator: str = ",", limit: int = -1) -> list[str]:
    """Split on ``separator`` unless escaped with a backslash (search.html#escaping)."""
    parts, current, escaped = [], [], False
    for char in value:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator and limit != 0:
            parts.append("".join(current))
            current, limit = [], limit - 1
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return [part for part in parts if part] if separator == "," else parts


def _unescape(value: str) -> str:
    return re.sub(r"\\([\\|,$])", r"\1", value)
