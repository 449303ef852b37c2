"""Parse FHIR search values and match them against the index columns (search.html, R4).

Token ``[system]|[code]``; string prefix match ignoring case and accents (``:exact``, ``:contains``);
date prefixes against the value's implicit range; references ``[type]/id``, ``id``, ``:Type``.
Comma-separated values are ORed by the caller; ``\\`` escapes ``,``, ``|`` and ``$`` (search.html#escaping).
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, FromClause, and_, or_

from gateway.store.fhir_dates import InvalidDate, date_range
from gateway.store.index import MAX_INDEXED, normalize_text, parse_reference
from gateway.store.search_params import SearchParam

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
#: Numbers and quantities also take ``ap`` (approximately: within 10%).
NUMBER_PREFIXES = (*PREFIXES, "ap")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
# DSTU1 comparators, which fhirclient's "$gt"/"$gte"/"$lt"/"$lte" still produce; no R4 date starts so.
_COMPARATORS = {">=": "ge", "<=": "le", ">": "gt", "<": "lt"}
TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{1,63}")


class SearchError(ValueError):
    """A search the store cannot run; ``code`` is the OperationOutcome issue type (valueset-issue-type)."""

    def __init__(self, message: str, code: str = "invalid"):
        super().__init__(message)
        self.code = code


class UnsupportedParameter(SearchError):
    """A parameter or modifier the server does not know; ignored under ``Prefer: handling=lenient``."""

    def __init__(self, message: str):
        super().__init__(message, code="not-supported")


class ForbiddenType(SearchError):
    """A chain, reverse chain, include or search through a type the caller may not read (the audit trail)."""

    def __init__(self, resource_type: str):
        super().__init__(f"searching through {resource_type} needs the admin role", code="forbidden")


def token_match(table: FromClause, value: str) -> ColumnElement[bool]:
    parts = [unescape(part)[:MAX_INDEXED] for part in split(value, "|", limit=1)]
    if len(parts) == 1:  # code : in any system, or none
        return table.c.code == parts[0]
    system, code = parts
    if not code:  # system| : any code in that system
        return table.c.system == system
    return and_(table.c.system == system, table.c.code == code)  # |code : code with no system


def string_match(table: FromClause, value: str, modifier: str) -> ColumnElement[bool]:
    text = unescape(value)
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


def reference_match(table: FromClause, param: SearchParam, modifier: str, value: str) -> ColumnElement[bool]:
    target_types = param.targets
    if modifier:
        if not TYPE_NAME.fullmatch(modifier) or (target_types and modifier not in target_types):
            raise SearchError(f"modifier :{modifier} is not a resource type {param.name!r} can refer to")
        target_types = (modifier,)
    value = unescape(value)
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


def range_match(low: ColumnElement[datetime], high: ColumnElement[datetime], value: str) -> ColumnElement[bool]:
    """Stored range [low, high) against the search range [start, end) under a prefix (search.html#prefix)."""
    prefix, start, end = date_value(value)
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


def point_in_range(column: ColumnElement[datetime], value: str) -> ColumnElement[bool]:
    """Like ``range_match`` for a stored instant (a range one tick long)."""
    prefix, start, end = date_value(value)
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


def date_value(value: str) -> tuple[str, datetime, datetime]:
    """The prefix (``eq`` when none) and the range [start, end) of a date search value."""
    for comparator, name in _COMPARATORS.items():
        if value.startswith(comparator):
            value = name + value[len(comparator) :]
            break
    prefix = value[:2] if value[:2] in PREFIXES else ""
    text = value[len(prefix) :].replace(" ", "+")  # an unencoded "+" in a query string arrives as a space
    if value[:2].isalpha() and not prefix:
        raise SearchError(f"date prefix {value[:2]!r} is not supported (use one of {', '.join(PREFIXES)})")
    try:
        start, end = date_range(text)
    except InvalidDate as exc:
        raise SearchError(str(exc)) from None
    return prefix or "eq", start, end


def quantity_match(table: FromClause, value: str) -> ColumnElement[bool]:
    """``[prefix]number|system|code`` (search.html#quantity); ``number||code`` matches the code or the unit."""
    parts = [unescape(part) for part in split(value, "|", limit=2)]
    if len(parts) == 2:
        raise SearchError(f"quantity {value!r} is not [number], [number]|[system]|[code] or [number]||[code]")
    match = number_match(table.c.value, parts[0])
    if len(parts) == 1:
        return match
    system, code = (part[:MAX_INDEXED] for part in parts[1:])
    units = []
    if system:
        units.append(table.c.system == system)
    if code:
        units.append(table.c.code == code if system else or_(table.c.code == code, table.c.unit == code))
    return and_(match, *units)


def number_match(column: ColumnElement[float], value: str) -> ColumnElement[bool]:
    """A stored number against ``[prefix]number``; ``eq``, ``ne``, ``sa``, ``eb`` and ``ap`` use the implicit
    range of the search value's precision (``5.4`` is [5.35, 5.45)), the others the value itself."""
    prefix, exact, exact_low, exact_high = number_value(value)
    number, low, high = float(exact), float(exact_low), float(exact_high)
    if prefix == "eq":
        return and_(column >= low, column < high)
    if prefix == "ne":
        return or_(column < low, column >= high)
    if prefix == "gt":
        return column > number
    if prefix == "lt":
        return column < number
    if prefix == "ge":
        return column >= number
    if prefix == "le":
        return column <= number
    if prefix == "sa":
        return column >= high
    if prefix == "eb":
        return column < low
    margin = max(abs(exact) / 10, (exact_high - exact_low) / 2)  # ap, in decimals: 0.1 - 0.05 is 0.05
    return and_(column >= float(exact - margin), column <= float(exact + margin))


def number_value(value: str) -> tuple[str, Decimal, Decimal, Decimal]:
    """The prefix (``eq`` when none), the number, and its implicit range [low, high)."""
    prefix = value[:2] if value[:2] in NUMBER_PREFIXES else ""
    text = value[len(prefix) :].strip()
    if not _NUMBER.fullmatch(text):
        raise SearchError(f"{value!r} is not a number with an optional prefix ({', '.join(NUMBER_PREFIXES)})")
    number = Decimal(text)
    exponent = number.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1)
    return prefix or "eq", number, number - half, number + half


def split(value: str, separator: str = ",", limit: int = -1) -> list[str]:
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


def unescape(value: str) -> str:
    return re.sub(r"\\([\\|,$])", r"\1", value)
