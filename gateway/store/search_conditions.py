"""One occurrence of a search parameter as SQL: the kinds, the modifiers, chains and reverse chains.

search.html (R4): ``name[:modifier]=value`` per kind (values in ``search_values``); a chain
``ref[:Type].name=value`` tests the resources ``ref`` points at (search.html#chaining); a reverse
chain ``_has:Type:ref:name=value`` keeps resources that resources of ``Type`` point at through
``ref`` (search.html#has). Both nest, up to ``MAX_DEPTH`` steps. Modifiers: ``:missing`` on every
kind, ``:not``, ``:text`` and ``:of-type`` on tokens, ``:exact`` and ``:contains`` on strings,
``:[Type]`` and ``:identifier`` on references.

Each ``Condition`` can test a candidate row (``predicate``, an EXISTS correlated to the row) and,
when it can, list the ids that match from the index alone (``lookup``), which lets the database
start from the index. Every index table is aliased afresh wherever it is used, so nested
subqueries never correlate to the wrong level; the aliases are numbered in the order a search
builds them (``numbered_aliases``), so the same kind of search makes the same SQL and SQLAlchemy's
compiled cache serves it (anonymous aliases would make every statement new: compiling it cost
more than running it).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from sqlalchemy import ColumnElement, FromClause, Select, Table, and_, exists, false, or_, select, true, union

from gateway.db.schema import SEARCH_TABLES, fhir_resource
from gateway.store.index import MAX_INDEXED, identifier_param, of_type_param, text_param
from gateway.store.search_params import SearchParam
from gateway.store.search_registry import COMMON_PARAMETERS, SEARCH_PARAMETERS, can_refer_to, supported_types
from gateway.store.search_values import (
    ForbiddenType,
    SearchError,
    UnsupportedParameter,
    point_in_range,
    quantity_match,
    range_match,
    reference_match,
    split,
    string_match,
    token_match,
    unescape,
)

#: Steps of chains and reverse chains one parameter may take (``a.b.c`` is two).
MAX_DEPTH = 3
#: Values one parameter may list (OR).
MAX_VALUES = 200

# Which condition should pick the candidate rows (lowest first); the rest are checked per candidate.
_RANK = {"_id": 0, "reference": 1, "token": 2, "composite": 2, "string": 3, "date": 4, "quantity": 4}
_RANK_LAST_UPDATED, _RANK_PRESENT, _RANK_NEGATED = 5, 6, 8
# A reverse chain often names a common code (every Patient with a heart rate): after the tokens.
_RANK_REVERSE = 3

Match = Callable[[FromClause], ColumnElement[bool]]

_numbers: ContextVar[Iterator[int]] = ContextVar("search_alias_numbers")
#: How deep in chains and reverse chains the condition being parsed is (0: a parameter of the search).
_depth: ContextVar[int] = ContextVar("search_depth", default=0)


@contextmanager
def numbered_aliases() -> Iterator[None]:
    """Number the aliases of the statement built inside from 1 (per thread or task)."""
    token = _numbers.set(itertools.count(1))
    try:
        yield
    finally:
        _numbers.reset(token)


def _alias(table: Table, plain: bool = False) -> FromClause:
    """A numbered alias of ``table``; with ``plain``, the table itself (for the conditions of the search
    itself, not nested in a chain: their subqueries sit side by side, as the index tables' only users)."""
    if plain and table is not fhir_resource:
        return table
    numbers = _numbers.get(None)
    if numbers is None:
        raise RuntimeError("build search conditions inside numbered_aliases()")
    return table.alias(f"{table.name}_{next(numbers)}")


@dataclass(frozen=True)
class Condition:
    """What one parameter occurrence asks of the resources of ``resource_type``."""

    rank: int
    resource_type: str
    #: The test of a row of fhir_resource (or an alias of it), correlated to that row.
    predicate: Match
    #: Makes the ids of ``resource_type`` from the index alone: exactly the matches, or (``exact`` False)
    #: a superset. Made only when used: a condition checked per candidate needs none.
    lookup_of: Callable[[], Select[tuple[str]]] | None = None
    exact: bool = True

    @functools.cached_property
    def lookup(self) -> Select[tuple[str]] | None:
        return self.lookup_of() if self.lookup_of is not None else None

    def driving(self) -> ColumnElement[bool]:
        """As ``id IN (index lookup)``: the database starts from the index rows."""
        if self.lookup is None:
            return self.predicate(fhir_resource)
        found = fhir_resource.c.id.in_(self.lookup)
        return found if self.exact else and_(found, self.predicate(fhir_resource))

    def correlated(self) -> ColumnElement[bool]:
        """Checked per candidate row."""
        return self.predicate(fhir_resource)

    def ids(self) -> Select[tuple[str]]:
        """Ids of current ``resource_type`` resources that match, as a subquery of its own (for chains)."""
        if self.lookup is not None and self.exact:
            return self.lookup
        row = _alias(fhir_resource)
        stmt = select(row.c.id).where(row.c.type == self.resource_type, row.c.deleted == false(), self.predicate(row))
        return stmt.where(row.c.id.in_(self.lookup)) if self.lookup is not None else stmt


def parse_condition(
    resource_type: str, key: str, raw: str, hidden: frozenset[str] = frozenset(), depth: int = 0
) -> Condition:
    """``key`` (name, modifier, chain, _has) with one raw value (comma-separated: OR) on ``resource_type``."""
    if depth > MAX_DEPTH:
        raise SearchError(f"a chain or _has goes at most {MAX_DEPTH} steps deep")
    token = _depth.set(depth)
    try:
        return _parse(resource_type, key, raw, hidden, depth)
    finally:
        _depth.reset(token)


def _parse(resource_type: str, key: str, raw: str, hidden: frozenset[str], depth: int) -> Condition:
    if key.startswith("_has:"):
        return _reverse_chain(resource_type, key, raw, hidden, depth)
    head, dot, rest = key.partition(".")
    name, _, modifier = head.partition(":")
    if dot:
        return _chain(resource_type, name, modifier, rest, raw, hidden, depth)
    values = split(raw)
    if len(values) > MAX_VALUES:
        raise SearchError(f"{name} lists {len(values)} values; one parameter takes at most {MAX_VALUES}")
    if name in COMMON_PARAMETERS:
        _no_modifier(name, modifier)
        return _common(resource_type, name, values)
    param = SEARCH_PARAMETERS[resource_type].get(name)
    if param is None:
        known = ", ".join(sorted([*SEARCH_PARAMETERS[resource_type], *COMMON_PARAMETERS]))
        raise UnsupportedParameter(f"unknown search parameter {name!r} for {resource_type} (supported: {known})")
    if modifier == "missing":
        return _missing(resource_type, param, values)
    if param.kind == "composite":
        _no_modifier(name, modifier)
        return _composite(resource_type, param, values, hidden)
    if param.kind == "reference" and modifier == "identifier":
        return _by_identifier(resource_type, param, values, hidden)
    return _simple(resource_type, param, modifier, values)


def _simple(resource_type: str, param: SearchParam, modifier: str, values: list[str]) -> Condition:
    name, kind, stored = param.name, param.kind, param.index_name
    if kind == "token":
        if modifier == "text":
            return _indexed(resource_type, "string", text_param(stored), _each(values, _prefix), _RANK["string"])
        if modifier == "of-type":
            return _indexed(resource_type, "token", of_type_param(stored), _each(values, _typed_identifier), 2)
        if modifier not in ("", "not"):
            raise UnsupportedParameter(f"modifier :{modifier} is not supported on token parameter {name!r}")
        negated = modifier == "not"
        return _indexed(resource_type, "token", stored, _each(values, token_match), 2, negated=negated)
    if kind == "string":
        if modifier not in ("", "exact", "contains"):
            raise UnsupportedParameter(f"modifier :{modifier} is not supported on string parameter {name!r}")
        return _indexed(resource_type, kind, stored, _each(values, lambda t, v: string_match(t, v, modifier)), 3)
    if kind != "reference":
        _no_modifier(name, modifier)
    if kind == "date":
        return _indexed(resource_type, kind, stored, _each(values, lambda t, v: range_match(t.c.low, t.c.high, v)), 4)
    if kind == "quantity":
        return _indexed(resource_type, kind, stored, _each(values, quantity_match), _RANK["quantity"])
    return _indexed(resource_type, kind, stored, _each(values, lambda t, v: reference_match(t, param, modifier, v)), 1)


def _indexed(
    resource_type: str,
    kind: str,
    param: str,
    match: Match,
    rank: int,
    negated: bool = False,
    check: Match | None = None,
) -> Condition:
    """Rows of ``param`` in the ``kind`` index that ``match``; ``negated``: resources without such a row.
    ``check``, when given, is ``match`` as a test of one index row (correlated), for candidates."""
    table, plain = SEARCH_TABLES[kind], _depth.get() == 0

    def predicate(row: FromClause) -> ColumnElement[bool]:
        index = _alias(table, plain)
        test = (check or match)(index)
        found = exists().where(index.c.type == row.c.type, index.c.id == row.c.id, index.c.param == param, test)
        return ~found if negated else found

    if negated:
        return Condition(_RANK_NEGATED, resource_type, predicate)

    def lookup() -> Select[tuple[str]]:
        index = _alias(table, plain)
        return select(index.c.id).where(index.c.type == resource_type, index.c.param == param, match(index))

    return Condition(rank, resource_type, predicate, lookup)


def _each(values: list[str], match: Callable[[FromClause, str], ColumnElement[bool]]) -> Match:
    """Any of ``values`` (comma: OR). A bad value raises SearchError when the statement is built (build_search)."""
    return lambda table: or_(*(match(table, value) for value in values))


def _prefix(table: FromClause, value: str) -> ColumnElement[bool]:
    return string_match(table, value, "")


def _typed_identifier(table: FromClause, value: str) -> ColumnElement[bool]:
    """``:of-type``: ``[type system]|[type code]|[identifier value]`` (search.html#modifiers)."""
    parts = [unescape(part) for part in split(value, "|", limit=2)]
    if len(parts) != 3 or not all(parts[1:]):
        raise SearchError(f":of-type value {value!r} is not [system]|[code]|[value]")
    system, code, identifier = parts
    matches = [table.c.code == f"{code}|{identifier}"[:MAX_INDEXED]]
    return and_(table.c.system == system, *matches) if system else matches[0]


def _common(resource_type: str, name: str, values: list[str]) -> Condition:
    if name == "_id":
        return Condition(_RANK["_id"], resource_type, lambda row: row.c.id.in_([unescape(v) for v in values]))
    for value in values:
        point_in_range(fhir_resource.c.last_updated, value)
    return Condition(
        _RANK_LAST_UPDATED, resource_type, lambda row: or_(*(point_in_range(row.c.last_updated, v) for v in values))
    )


def _missing(resource_type: str, param: SearchParam, values: list[str]) -> Condition:
    """``:missing=true``: no indexed value; ``false``: some (search.html#missing)."""
    if values not in (["true"], ["false"]):
        raise SearchError(f"{param.name}:missing takes true or false, got {','.join(values)!r}")
    if param.kind == "composite":
        raise UnsupportedParameter(f":missing is not supported on composite parameter {param.name!r}")
    targets = param.targets if param.stored_as else ()  # a restricted reference: only its target types count
    match: Match = (lambda t: t.c.target_type.in_(targets)) if targets else (lambda t: true())
    return _indexed(resource_type, param.kind, param.index_name, match, _RANK_PRESENT, values == ["true"])


def _composite(resource_type: str, param: SearchParam, values: list[str], hidden: frozenset[str]) -> Condition:
    """``code$value`` pairs of two top-level elements, which belong together (Observation.code and value[x])."""
    pairs = []
    for value in values:
        parts = split(value, "$", limit=1)
        if len(parts) != 2 or not all(parts):
            raise SearchError(f"{param.name} value {value!r} is not [{']$['.join(param.components)}]")
        first, second = (
            parse_condition(resource_type, component, part, hidden) for component, part in zip(param.components, parts)
        )
        pairs.append((first, second))

    def predicate(row: FromClause) -> ColumnElement[bool]:
        return or_(*(and_(first.predicate(row), second.predicate(row)) for first, second in pairs))

    if any(first.lookup_of is None for first, _ in pairs):
        return Condition(_RANK["composite"], resource_type, predicate)

    def lookup() -> Select[tuple[str]]:
        lookups = [first.lookup for first, _ in pairs if first.lookup is not None]
        return lookups[0] if len(lookups) == 1 else select(union(*lookups).subquery().c[0])

    return Condition(_RANK["composite"], resource_type, predicate, lookup, exact=False)


def _chain(
    resource_type: str, name: str, modifier: str, rest: str, raw: str, hidden: frozenset[str], depth: int
) -> Condition:
    """``name[:Type].rest``: resources whose reference ``name`` points at a ``Type`` matching ``rest``."""
    param = SEARCH_PARAMETERS[resource_type].get(name)
    if param is None or param.kind != "reference":
        raise UnsupportedParameter(f"{name!r} is not a reference search parameter of {resource_type}: cannot chain")
    target = _chain_target(resource_type, param, modifier, rest, hidden)
    inner = parse_condition(target, rest, raw, hidden, depth + 1)
    ids = inner.ids()

    def match(t: FromClause) -> ColumnElement[bool]:  # from the index: every target that matches
        return and_(t.c.target_type == target, t.c.target_id.in_(ids))

    def check(t: FromClause) -> ColumnElement[bool]:  # for one candidate: its own targets, one by one
        pointed = _alias(fhir_resource)
        return and_(
            t.c.target_type == target,
            exists().where(
                pointed.c.type == target,
                pointed.c.id == t.c.target_id,
                pointed.c.deleted == false(),
                inner.predicate(pointed),
            ),
        )

    return _indexed(resource_type, "reference", param.index_name, match, _RANK["reference"], check=check)


def _chain_target(resource_type: str, param: SearchParam, modifier: str, rest: str, hidden: frozenset[str]) -> str:
    """The one type a chain goes to: the ``:Type`` modifier, or the only possible target with the parameter."""
    if modifier:
        if modifier not in SEARCH_PARAMETERS or not can_refer_to(param, modifier):
            raise SearchError(f"{resource_type}.{param.name} never refers to {modifier!r}")
        if modifier in hidden:
            raise ForbiddenType(modifier)
        return modifier
    name = rest.partition(".")[0].partition(":")[0]
    candidates = [
        target
        for target in (param.targets or tuple(supported_types()))
        if target in SEARCH_PARAMETERS and target not in hidden
        if rest.startswith("_has:") or name in COMMON_PARAMETERS or name in SEARCH_PARAMETERS[target]
    ]
    if not candidates:
        raise UnsupportedParameter(f"no type {resource_type}.{param.name} refers to has a search parameter {name!r}")
    if len(candidates) > 1:
        raise SearchError(
            f"{param.name}.{rest} is ambiguous: {param.name} may refer to {', '.join(candidates)}; "
            f"name the type, e.g. {param.name}:{candidates[0]}.{rest}"
        )
    return candidates[0]


def _reverse_chain(resource_type: str, key: str, raw: str, hidden: frozenset[str], depth: int) -> Condition:
    """``_has:Type:ref:rest``: resources that a ``Type`` matching ``rest`` points at through ``ref``."""
    parts = key.split(":", 3)
    if len(parts) != 4 or not all(parts):
        raise SearchError(f"{key!r} is not _has:[type]:[reference parameter]:[parameter]")
    _, source, name, rest = parts
    if source not in SEARCH_PARAMETERS:
        raise SearchError(f"_has: resource type {source!r} is not supported", "not-supported")
    if source in hidden:
        raise ForbiddenType(source)
    param = SEARCH_PARAMETERS[source].get(name)
    if param is None or param.kind != "reference" or not can_refer_to(param, resource_type):
        raise SearchError(f"_has: {source} has no reference parameter {name!r} that can refer to {resource_type}")
    inner = parse_condition(source, rest, raw, hidden, depth + 1)
    plain = depth == 0

    def lookup() -> Select[tuple[str]]:
        index = _alias(SEARCH_TABLES["reference"], plain)
        return select(index.c.target_id).where(
            index.c.type == source,
            index.c.param == param.index_name,
            index.c.target_type == resource_type,
            index.c.id.in_(inner.ids()),
        )

    def predicate(row: FromClause) -> ColumnElement[bool]:  # for one candidate: the resources pointing at it
        pointing, referrer = _alias(SEARCH_TABLES["reference"], plain), _alias(fhir_resource)
        return exists().where(
            pointing.c.type == source,
            pointing.c.param == param.index_name,
            pointing.c.target_type == row.c.type,
            pointing.c.target_id == row.c.id,
            referrer.c.type == source,
            referrer.c.id == pointing.c.id,
            referrer.c.deleted == false(),
            inner.predicate(referrer),
        )

    return Condition(_RANK_REVERSE, resource_type, predicate, lookup)


def _by_identifier(resource_type: str, param: SearchParam, values: list[str], hidden: frozenset[str]) -> Condition:
    """``ref:identifier=[system]|[value]``: Reference.identifier, or a literal reference to a resource
    with that identifier (search.html#modifiers; the store's references are mostly literal)."""
    logical = _indexed(resource_type, "token", identifier_param(param.index_name), _each(values, token_match), 1)
    targets = [
        target
        for target in (param.targets or tuple(supported_types()))
        if target not in hidden and "identifier" in SEARCH_PARAMETERS.get(target, {})
    ]

    def identified(t: FromClause) -> ColumnElement[bool]:
        tokens = _alias(SEARCH_TABLES["token"])
        return and_(
            t.c.target_type.in_(targets),
            exists().where(
                tokens.c.type == t.c.target_type,
                tokens.c.id == t.c.target_id,
                tokens.c.param == "identifier",
                or_(*(token_match(tokens, value) for value in values)),
            ),
        )

    literal = _indexed(resource_type, "reference", param.index_name, identified, 1)

    def lookup() -> Select[tuple[str]]:
        assert logical.lookup is not None and literal.lookup is not None
        return select(union(logical.lookup, literal.lookup).subquery().c[0])

    def predicate(row: FromClause) -> ColumnElement[bool]:
        return or_(logical.predicate(row), literal.predicate(row))

    return Condition(_RANK["reference"], resource_type, predicate, lookup)


def _no_modifier(name: str, modifier: str) -> None:
    if modifier:
        raise UnsupportedParameter(f"modifier :{modifier} is not supported on {name!r}")
