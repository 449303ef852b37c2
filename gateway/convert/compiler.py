"""Compile mapping rules (plain data from YAML) into Python closures, once, at load.

A rule reads one v2 value (``from``), turns it into a FHIR value (a datatype map, a named function,
a named transform, a table, or a constant ``value``), adjusts it (``set``, ``defaults``) and writes
it at a target path (``to``) if its conditions (``when``) hold. Datatype maps and segment maps are
lists of rules. The closures never look at YAML again; every name is resolved here, and a bad
one raises MappingSpecError naming the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gateway.convert import functions
from gateway.convert.context import Context
from gateway.convert.elements import CachedElement, cached
from gateway.convert.paths import (
    PathError,
    SourcePath,
    TargetPath,
    compile_reader,
    compile_writer,
    parse_source,
    parse_target,
)
from gateway.convert.tables import Table
from gateway.convert.values import Dispatch, choice_suffix, clone, fresh, is_empty, join_repetitions, value_writer
from gateway.errors import MappingError
from gateway.hl7.message import Element, Segment


class MappingSpecError(ValueError):
    """A mapping file says something that cannot be compiled; ``where`` is "file:line"."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


#: Segments whose fields 1 and 2 are the separators themselves (chapter 2.14.9.1-2).
_HEADERS = ("MSH", "FHS", "BHS")

RULE_KEYS = frozenset(
    {"from", "to", "datatype", "by", "datatypes", "function", "transform", "table", "value", "when",
     "wrap", "set", "defaults", "default", "repeats", "required", "enrich", "note"}
)

Build = Callable[[Element, Context, "Table | None"], Any]


@dataclass(frozen=True, slots=True)
class DatatypeMap:
    """``CX[Identifier]``: builds ``fhir_type`` from a v2 value; ``choice`` maps return (type, value)."""

    name: str
    fhir_type: str
    build: Build
    accepts_table: bool
    choice: bool = False
    #: False when the map reads more than its value (then it is not memoized).
    pure: bool = True


class Resolver:
    """Name lookups a rule needs; the loader supplies one with everything it has read."""

    def __init__(self, tables: dict[str, Table], datatype_map: Callable[[str, str], DatatypeMap]):
        self.tables = tables
        self.datatype_map = datatype_map  # (name, where) -> DatatypeMap, compiling on demand

    def table(self, name: Any, where: str) -> Table:
        found = self.tables.get(str(name))
        if found is None:
            raise MappingSpecError(where, f"unknown table {name!r} (no mappings/tables/{name}.yaml)")
        return found


# A compiled condition: (current segment or element, current repetition, context) -> bool.
Check = Callable[[Any, "Element | None", Context], bool]


class RuleCompiler:
    """Compiles the rules of one map: ``owner`` is a segment name ("PID") or a datatype ("CX")."""

    def __init__(self, resolver: Resolver, owner: str, in_segment: bool, map_name: str):
        self.resolver = resolver
        self.owner = owner
        self.in_segment = in_segment
        self.map_name = map_name
        #: How far beyond its value a rule looks: "element", "segment" or "message" (the widest wins).
        self.reads = "element"
        #: Other segments the rules read (e.g. ORC-2 from an OBR map), in first-use order.
        self.other_segments: list[str] = []

    def widen(self, reads: str) -> None:
        order = ("element", "segment", "message")
        if order.index(reads) > order.index(self.reads):
            self.reads = reads

    # -- paths ------------------------------------------------------------------------------------
    def source(self, text: Any, where: str) -> SourcePath:
        try:
            path = parse_source(text)
        except PathError as exc:
            raise MappingSpecError(where, str(exc)) from None
        if self.in_segment and path.segment is None:
            raise MappingSpecError(where, f"{text!r}: a segment map reads segment paths such as {self.owner}-3.1")
        if self.in_segment and path.segment != self.owner and path.segment not in self.other_segments:
            self.other_segments.append(path.segment or "")
        if not self.in_segment and path.datatype != self.owner:
            raise MappingSpecError(where, f"{text!r}: the {self.owner} map reads paths such as {self.owner}.1")
        return path

    def target(self, text: Any, where: str) -> TargetPath:
        try:
            path = parse_target(text)
        except PathError as exc:
            raise MappingSpecError(where, str(exc)) from None
        if path.is_value and self.in_segment:
            raise MappingSpecError(where, "$value is only for datatype maps")
        return path

    def conditions(self, spec: Any, where: str, rule_source: SourcePath | None) -> list[Check]:
        if spec is None:
            return []
        items = spec if isinstance(spec, list) else [spec]
        checks: list[Check] = []
        for item in items:
            if not isinstance(item, dict) or len(item) != 1:
                raise MappingSpecError(where, f"a condition is one {{name: argument}} pair, not {item!r}")
            (name, arg), = item.items()
            fn = functions.CONDITIONS.get(name)
            if fn is None:
                known = ", ".join(sorted(functions.CONDITIONS))
                raise MappingSpecError(where, f"unknown condition {name!r} (known: {known})")
            normalize = functions.CONDITION_ARGUMENT[name]
            extra: tuple[Any, ...] = ()
            if normalize is None:
                path_text = arg
            else:
                if not isinstance(arg, list) or len(arg) != 2:
                    raise MappingSpecError(where, f"condition {name} takes [path, argument]")
                if name in ("in", "not_in") and not isinstance(arg[1], list):
                    raise MappingSpecError(where, f"condition {name} takes [path, [values...]]")
                try:
                    extra = (normalize(arg[1]),)
                except (TypeError, ValueError):
                    raise MappingSpecError(where, f"condition {name}: bad argument {arg[1]!r}") from None
                path_text = arg[0]
            checks.append(self._check(fn, self.source(path_text, where), extra, rule_source))
        return checks

    def _check(self, fn: Callable[..., bool], path: SourcePath, extra: tuple, rule_source: SourcePath | None) -> Check:
        if not self.in_segment:
            return lambda element, rep, ctx: fn(path.pick(element), *extra)
        same_field = (
            rule_source is not None and path.segment == rule_source.segment and path.field == rule_source.field
        )
        own = path.segment == self.owner

        def check(segment: Segment, rep: Element | None, ctx: Context) -> bool:
            if same_field and rep is not None:
                return fn(path.pick(rep), *extra)  # the repetition being mapped
            seg = segment if own else ctx.other_segment(path.segment or "")
            element = seg.field(path.field) if seg is not None else Element("", ctx.message.separators, 0)
            return fn(path.pick(element), *extra)

        return check

    # -- producers ----------------------------------------------------------------------------------
    def producer(self, rule: dict, where: str, target: TargetPath) -> tuple[Callable[[Element | None, Context], Any], bool]:
        """(produce(element, ctx) -> value, needs_source)."""
        kinds = [k for k in ("datatype", "by", "function", "transform", "value") if k in rule]
        if len(kinds) > 1:
            raise MappingSpecError(where, f"a rule uses one of datatype/by/function/transform/value, not {kinds}")
        table = self.resolver.table(rule["table"], where) if "table" in rule else None
        if "by" in rule:
            return self._dispatch(rule, where, target, table), True
        if "datatype" in rule:
            dmap = self.resolver.datatype_map(str(rule["datatype"]), where)
            self.widen("element" if dmap.pure else "message")
            if table is not None and not dmap.accepts_table:
                raise MappingSpecError(where, f"{dmap.name} is a rule map; a table cannot be passed to it")
            return self._wrap_choice(dmap, target, where, table), True
        if "function" in rule:
            fn = functions.BUILDERS.get(str(rule["function"]))
            if fn is None:
                raise MappingSpecError(where, f"unknown function {rule['function']!r} (not in gateway/convert/functions.py)")
            self.widen(functions.BUILDER_READS[str(rule["function"])])
            return (lambda el, ctx: fn(el, ctx, table)), False
        if target.is_choice:
            raise MappingSpecError(where, f"{target.text} needs a datatype map that names the FHIR type")
        if "value" in rule:
            constant = fresh(rule["value"])
            if is_empty(rule["value"]):
                raise MappingSpecError(where, "value must not be empty")
            if "from" not in rule:
                return (lambda el, ctx: constant()), False
            # With `from`, the constant is written only when the source is valued.
            return (lambda el, ctx: constant() if functions.text_of(el) else None), False
        transform = None
        if "transform" in rule:
            transform = functions.TRANSFORMS.get(str(rule["transform"]))
            if transform is None:
                raise MappingSpecError(where, f"unknown transform {rule['transform']!r} (not in gateway/convert/functions.py)")
        return self._plain(transform, table), True

    @staticmethod
    def _plain(transform: Callable[[str], Any] | None, table: Table | None) -> Callable[[Element | None, Context], Any]:
        def produce(el: Element | None, ctx: Context) -> Any:
            text = functions.text_of(el)
            if not text:
                return None
            if table is not None:
                mapped = table.lookup(text)
                if mapped is None:
                    ctx.note(f"code {text!r} is not in table {table.name}; element left out")
                    return None
                text = mapped["code"]
            return transform(text) if transform is not None else text

        return produce

    @staticmethod
    def _wrap_choice(dmap: DatatypeMap, target: TargetPath, where: str, table: Table | None) -> Callable[[Element | None, Context], Any]:
        build = dmap.build
        if not target.is_choice:
            if dmap.choice:
                raise MappingSpecError(where, f"{dmap.name} makes a choice of types; write it to an element[x]")
            return lambda el, ctx: build(el, ctx, table) if el else None
        if dmap.choice:
            return lambda el, ctx: build(el, ctx, table) if el else None
        suffix = choice_suffix(dmap.fhir_type)

        def produce(el: Element | None, ctx: Context) -> Any:
            value = build(el, ctx, table) if el else None
            return None if is_empty(value) else (suffix, value)

        return produce

    def _dispatch(self, rule: dict, where: str, target: TargetPath, table: Table | None) -> Callable[[Element | None, Context], Any]:
        """``by: OBX-2`` + ``datatypes: {NM: NM[Quantity], ...}``: the map is chosen per message."""
        if not isinstance(rule.get("datatypes"), dict) or not rule["datatypes"]:
            raise MappingSpecError(where, "`by` needs a `datatypes` table of value -> datatype map")
        if not target.is_choice:
            raise MappingSpecError(where, "`by` chooses among FHIR types, so `to` must be an element[x]")
        selector = self.source(rule["by"], where)
        if not self.in_segment or selector.segment != self.owner:
            raise MappingSpecError(where, "`by` must name a field of the same segment")
        choices = {
            str(code): self._wrap_choice(self.resolver.datatype_map(str(name), where), target, where, table)
            for code, name in rule["datatypes"].items()
        }
        return Dispatch(selector, choices)  # type: ignore[return-value]

    # -- the rule -------------------------------------------------------------------------------------
    def rule(self, rule: Any, where: str, resource_type: str) -> Callable[[Any, Context, dict], None]:
        if not isinstance(rule, dict):
            raise MappingSpecError(where, f"a rule is a mapping of keys, not {rule!r}")
        unknown = set(rule) - RULE_KEYS
        if unknown:
            raise MappingSpecError(where, f"unknown rule key(s) {sorted(unknown)} (known: {sorted(RULE_KEYS)})")
        if "to" not in rule:
            raise MappingSpecError(where, "a rule needs `to`")
        target = self.target(rule["to"], where)
        source = self.source(rule["from"], where) if "from" in rule else None
        produce, needs_source = self.producer(rule, where, target)
        if needs_source and source is None and self.in_segment:
            raise MappingSpecError(where, "this rule needs `from`")
        checks = self.conditions(rule.get("when"), where, source)
        post = self._post(rule, where)
        default = fresh(rule["default"]) if "default" in rule else None
        required = bool(rule.get("required", False))
        repeats = rule.get("repeats", "all" if target.appends else "first")
        if repeats not in ("first", "all", "join"):
            raise MappingSpecError(where, "repeats is first, all or join")
        if not self.in_segment:
            repeats = "first"  # a component does not repeat
        writer = value_writer if target.is_value else compile_writer(target)
        exists = compile_reader(target) if rule.get("enrich") else None
        label = f"{resource_type}.{target.text}"
        source_text = source.text if source else ""
        map_name = self.map_name

        if repeats == "first" and source is not None and not checks and post is None and default is None \
                and not required and exists is None:
            # The common rule, on the hot path: one value, no conditions, nothing to adjust.
            first = self._first_source(source)

            def apply_simple(subject: Any, ctx: Context, out: dict) -> None:
                element = first(subject, ctx)
                if element is None:
                    return
                value = produce(element, ctx)
                if value is not None and not is_empty(value):
                    writer(out, value)

            return apply_simple

        if repeats == "all" and source is not None and not checks and default is None and not required \
                and exists is None:
            every = self._sources(source)

            def apply_each(subject: Any, ctx: Context, out: dict) -> None:
                for _rep, element in every(subject, ctx, repeats):
                    if not element:
                        continue
                    value = produce(element, ctx)
                    if value is not None and not is_empty(value):
                        writer(out, value if post is None else post(value))

            return apply_each

        pick_sources = self._sources(source)

        def apply(subject: Any, ctx: Context, out: dict) -> None:
            if exists is not None and exists(out) is None:
                return
            written = False
            joined: list[Any] = []
            for rep, element in pick_sources(subject, ctx, repeats):
                if checks and not all(check(subject, rep, ctx) for check in checks):
                    continue
                value = produce(element, ctx)
                if is_empty(value):
                    continue
                if post is not None:
                    value = post(value)
                if repeats == "join":
                    joined.append(value)
                    continue
                writer(out, value)
                written = True
            if joined:
                writer(out, join_repetitions(joined, ctx, label))
                written = True
            if not written and default is not None and (not checks or all(c(subject, None, ctx) for c in checks)):
                writer(out, default())
                written = True
            if not written and required:
                where_ = f"{source_text} " if source_text else ""
                raise MappingError(f"{where_}is empty or unusable, but {label} is required (map {map_name})")

        return apply

    def _first_source(self, source: SourcePath) -> Callable[[Any, Context], "Element | None"]:
        """The element ``source`` names in the first repetition, or None when it is empty."""
        pick = source.picker()
        if not self.in_segment:

            def in_value(element: Element, ctx: Context) -> Element | None:
                found = pick(element)
                return found if found else None

            return in_value
        own = source.segment == self.owner
        field = source.field

        def in_segment(segment: Segment, ctx: Context) -> Element | None:
            seg = segment if own else ctx.other_segment(source.segment or "")
            if seg is None:
                return None
            raw = seg.field_raw(field)
            if not raw:
                return None
            seps = ctx.message.separators
            if field <= 2 and seg.name in _HEADERS:
                found = pick(cached(seg.field(field), seps))
            else:
                found = pick(CachedElement(raw.split(seps.repetition, 1)[0], seps, 0))
            return found if found else None

        return in_segment

    def _sources(self, source: SourcePath | None) -> Callable[[Any, Context, str], list[tuple[Element | None, Element | None]]]:
        """(repetition, element to map) pairs for one application of a rule."""
        if not self.in_segment:
            if source is None:
                return lambda el, ctx, repeats: [(None, el)]
            return lambda el, ctx, repeats: [(None, source.pick(el))]
        if source is None:
            return lambda seg, ctx, repeats: [(None, None)]
        own = source.segment == self.owner
        field = source.field

        pick = source.picker()

        def pairs(segment: Segment, ctx: Context, repeats: str) -> list[tuple[Element | None, Element | None]]:
            seg = segment if own else ctx.other_segment(source.segment or "")
            if seg is None:
                return []
            raw = seg.field_raw(field)
            if not raw:
                return []
            seps = ctx.message.separators
            if field <= 2 and seg.name in _HEADERS:
                reps = [cached(seg.field(field), seps)]
            else:
                reps = [CachedElement(r, seps, 0) for r in raw.split(seps.repetition)]
            if repeats == "first":
                reps = reps[:1]
            return [(rep, pick(rep)) for rep in reps]

        return pairs

    def _post(self, rule: dict, where: str) -> Callable[[Any], Any] | None:
        """``wrap: individual`` puts the value under that element; ``set`` then writes constants
        into it (replacing), ``defaults`` writes them where the value has nothing."""
        set_ = rule.get("set")
        defaults = rule.get("defaults")
        wrap = rule.get("wrap")
        for key in ("set", "defaults"):
            if key in rule and (not isinstance(rule[key], dict) or not rule[key]):
                raise MappingSpecError(where, f"{key} is a non-empty mapping of element: value")
        if wrap is not None and not (isinstance(wrap, str) and wrap.isidentifier()):
            raise MappingSpecError(where, "wrap names one element, e.g. wrap: individual")
        if set_ is None and defaults is None and wrap is None:
            return None

        def post(value: Any) -> Any:
            if wrap is not None:
                value = {wrap: value}
            if not isinstance(value, dict):
                return value
            if set_ is not None:
                for key, item in set_.items():
                    value[key] = clone(item)
            if defaults is not None:
                for key, item in defaults.items():
                    if key not in value:
                        value[key] = clone(item)
            return value

        return post
