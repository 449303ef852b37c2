"""Sort order and keyset paging: ``_sort`` keys, and the opaque ``_cursor`` that marks a page boundary.

A page is "the next ``_count`` matches after (or before) this sort key", never "skip N rows", so a
resource written while a client pages through a result neither shifts later pages nor shows up
twice (search.html#paging leaves the paging mechanism to the server). Every sort ends with ``_id``,
which makes the sort key unique.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from sqlalchemy import ColumnElement, DateTime, String, and_, func, literal, or_, select, tuple_

from gateway.db.schema import SEARCH_TABLES, fhir_resource
from gateway.store.fhir_dates import MAX_DATETIME, MIN_DATETIME
from gateway.store.search_params import SearchParam
from gateway.store.search_values import SearchError

# Sorts after every indexed string (the highest code point; index columns compare byte-wise).
_LAST_TEXT = "\U0010ffff"
#: Kinds of search parameter a search may ``_sort`` by (besides ``_id`` and ``_lastUpdated``).
_SORTABLE_KINDS = ("date", "string", "token")


@dataclass(frozen=True)
class SortKey:
    name: str
    descending: bool
    expression: ColumnElement[Any]
    kind: Literal["text", "datetime", "integer"]


@dataclass(frozen=True)
class Cursor:
    """A page boundary: the sort key of the row next to the page, and which side the page is on."""

    forward: bool
    values: tuple[Any, ...]


def parse_sort(raw: list[str], params: dict[str, SearchParam], by_type: bool = False) -> tuple[SortKey, ...]:
    """The sort keys of ``_sort=[-]name,...`` (search.html#_sort), always ending with ``_id`` (with
    ``by_type``, a search across types, with the type and then ``_id``)."""
    if len(raw) > 1:
        raise SearchError(f"_sort must be given once, got {raw!r}")
    keys: list[SortKey] = []
    for item in (part.strip() for part in (raw[0].split(",") if raw else [])):
        descending, name = item.startswith("-"), item.lstrip("-")
        if not name:
            continue
        if any(key.name == name for key in keys):
            raise SearchError(f"_sort names {name!r} twice")
        keys.append(_sort_key(name, descending, params))
    if not any(key.name == "_id" for key in keys):
        keys.append(_sort_key("_id", keys[-1].descending if keys else False, params))
    if by_type:  # ids are unique within a type only
        position = next(n for n, key in enumerate(keys) if key.name == "_id")
        keys.insert(position, SortKey("_type", keys[position].descending, fhir_resource.c.type, "text"))
    return tuple(keys)


def _sort_key(name: str, descending: bool, params: dict[str, SearchParam]) -> SortKey:
    if name == "_id":
        return SortKey(name, descending, fhir_resource.c.id, "text")
    if name == "_lastUpdated":
        return SortKey(name, descending, fhir_resource.c.last_updated, "datetime")
    param = params.get(name)
    if param is None or param.kind not in _SORTABLE_KINDS:
        by_value = [p.name for p in params.values() if p.kind in _SORTABLE_KINDS]
        sortable = sorted(["_id", "_lastUpdated", *by_value])
        raise SearchError(f"cannot sort by {name!r} (sortable: {', '.join(sortable)})", "not-supported")
    # A resource with several values sorts by its lowest going up and by its highest going down;
    # one with none sorts last either way. Tokens sort by their code (the system is left aside).
    table = SEARCH_TABLES[param.kind]
    kind: Literal["text", "datetime"]
    if param.kind == "date":
        column, kind = table.c.high if descending else table.c.low, "datetime"
        fallback = literal(MIN_DATETIME if descending else MAX_DATETIME, DateTime())
    else:
        column, kind = table.c.code if param.kind == "token" else table.c.value, "text"
        fallback = literal("" if descending else _LAST_TEXT, String())
    extreme = func.max(column) if descending else func.min(column)
    same_resource = (table.c.type == fhir_resource.c.type, table.c.id == fhir_resource.c.id)
    value = select(extreme).where(*same_resource, table.c.param == param.index_name).scalar_subquery()
    return SortKey(name, descending, func.coalesce(value, fallback), kind)


def order_by(keys: tuple[SortKey, ...], forward: bool) -> list[Any]:
    return [key.expression.desc() if key.descending == forward else key.expression.asc() for key in keys]


def after(keys: tuple[SortKey, ...], cursor: Cursor) -> ColumnElement[bool]:
    """Rows strictly beyond the cursor in the direction of travel."""
    ascending = [key.descending != cursor.forward for key in keys]
    if len(set(ascending)) == 1:  # one direction: a row-value comparison, which indexes can serve
        left = tuple_(*(key.expression for key in keys))
        right = tuple_(*(literal(value, key.expression.type) for key, value in zip(keys, cursor.values)))
        return left > right if ascending[0] else left < right
    clauses = []
    for position, key in enumerate(keys):
        equal = [k.expression == v for k, v in zip(keys[:position], cursor.values[:position])]
        value = cursor.values[position]
        beyond = key.expression > value if ascending[position] else key.expression < value
        clauses.append(and_(*equal, beyond))
    return or_(*clauses)


def encode_cursor(fingerprint: str, forward: bool, values: tuple[Any, ...]) -> str:
    plain = [value.isoformat() if isinstance(value, datetime) else value for value in values]
    raw = orjson.dumps({"q": fingerprint, "d": "next" if forward else "previous", "k": plain})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, fingerprint: str, keys: tuple[SortKey, ...]) -> Cursor:
    """Check a ``_cursor`` from one of our links; it must come from the same search (same filters and sort)."""
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        values = decoded["k"]
        if decoded["d"] not in ("next", "previous") or not isinstance(values, list) or len(values) != len(keys):
            raise ValueError("malformed")
        typed = tuple(_typed(value, key.kind) for value, key in zip(values, keys))
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise SearchError("_cursor is not a page token from this server's next or previous links") from None
    if decoded.get("q") != fingerprint:
        raise SearchError("_cursor belongs to a different search: keep the other parameters of the link as they are")
    return Cursor(decoded["d"] == "next", typed)


def forward_cursor(
    params: dict[str, list[str]], identity: list[Any], keys: tuple[SortKey, ...], what: str
) -> tuple[str, Cursor | None]:
    """The fingerprint of a forward-only listing (history, $everything) named by ``identity``, and
    the cursor of its ``_cursor`` parameter (None without one): given once, of this listing, forward."""
    fingerprint = hashlib.sha256(orjson.dumps(identity)).hexdigest()[:16]
    if "_cursor" not in params:
        return fingerprint, None
    if len(params["_cursor"]) != 1:
        raise SearchError("_cursor must be given once")
    cursor = decode_cursor(params["_cursor"][0], fingerprint, keys)
    if not cursor.forward:
        raise SearchError(f"_cursor of a {what} page only goes forward")
    return fingerprint, cursor


def _typed(value: Any, kind: str) -> Any:
    if kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("not an integer")
        return value
    if not isinstance(value, str):
        raise ValueError("not a string")
    return datetime.fromisoformat(value) if kind == "datetime" else value
