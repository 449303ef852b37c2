"""Compile mapping rules (plain data from YAML) into Python closures, once, at load.

A rule reads one v2 value (``from``), turns it into a FHIR value (a datatype map, a named function,
a named transform, a table, or a constant ``value``), adjusts it (``set``, ``defaults``) and writes
it at a target path (``to``) if its conditions (``when``) hold; an ``each`` rule makes one object per
repetition with rules of its own. Datatype maps and segment maps are lists of rules. The closures
never look at YAML again; every name is resolved here, and a bad one raises MappingSpecError naming
the rule. What the rules read and write is recorded (``path_uses``, ``target_uses``) for the
load-time checks against the HL7 and FHIR definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.convert import functions
from gateway.convert.compilation.conditions import Check, compile_conditions
from gateway.convert.compilation.producers import (
    DatatypeMap,
    Producer,
    constant_producer,
    dispatch_producer,
    plain_producer,
    wrap_choice,
)
from gateway.convert.compilation.sources import OneRepetition, all_sources, first_source, repetitions_raw
from gateway.convert.model import fhirmodel
from gateway.convert.model.context import Context
from gateway.convert.model.mapping_errors import FhirPathError, MappingSpecError, PathError
from gateway.convert.model.paths import (
    SourcePath,
    TargetPath,
    compile_reader,
    compile_writer,
    parse_source,
    parse_target,
)
from gateway.convert.model.tables import Table
from gateway.convert.model.values import clone, fresh, is_empty, join_repetitions, value_writer
from gateway.errors import MappingError

RULE_KEYS = frozenset(
    {
        "from",
        "to",
        "datatype",
        "by",
        "datatypes",
        "function",
        "transform",
        "table",
        "value",
        "when",
        "wrap",
        "set",
        "defaults",
        "default",
        "repeats",
        "required",
        "enrich",
        "each",
        "made",
        "note",
    }
)
#: An ``each`` rule: one object per repetition of ``from``, filled by its own rules.
EACH_RULE_KEYS = frozenset({"from", "to", "each", "when", "note"})
REPEATS = ("first", "all", "join")


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


@dataclass(frozen=True, slots=True)
class PathUse:
    """A v2 path a rule reads, and the v2 datatype the rule expects there (None: any)."""

    where: str
    path: SourcePath
    datatype: str | None


@dataclass(frozen=True, slots=True)
class TargetUse:
    """A FHIR element a rule writes: ``text`` below an element of type ``root``; ``types`` are the
    FHIR types a choice element ``value[x]`` may get, or the type of the value written."""

    where: str
    root: str
    text: str
    types: tuple[str, ...]


Rule = Callable[[Any, Context, dict[str, Any]], None]


@dataclass
class RuleCompiler:
    """Compiles the rules of one map: ``owner`` is a segment name ("PID") or a datatype ("CX");
    ``root`` is the FHIR type the map fills (a resource or a datatype)."""

    resolver: Resolver
    owner: str
    in_segment: bool
    map_name: str
    root: str = ""
    #: How far beyond its value a rule looks: "element", "segment" or "message" (the widest wins).
    reads: str = "element"
    #: Fields of other segments the rules read (e.g. ORC-2 from an OBR map), in first-use order.
    other_fields: list[tuple[str, int]] = field(default_factory=list)
    #: Every field the rules read, of any segment, for the unused-field report.
    fields: set[tuple[str, int]] = field(default_factory=set)
    path_uses: list[PathUse] = field(default_factory=list)
    target_uses: list[TargetUse] = field(default_factory=list)
    #: Target prefix while compiling the rules of an ``each`` (or a segment map's ``base``).
    prefix: str = ""

    def widen(self, reads: str) -> None:
        order = ("element", "segment", "message")
        if order.index(reads) > order.index(self.reads):
            self.reads = reads

    # -- paths ------------------------------------------------------------------------------------
    def source(self, text: Any, where: str, datatype: str | None = None) -> SourcePath:
        try:
            path = parse_source(text)
        except PathError as exc:
            raise MappingSpecError(where, str(exc)) from None
        if self.in_segment and path.segment is None:
            raise MappingSpecError(where, f"{text!r}: a segment map reads segment paths such as {self.owner}-3.1")
        if not self.in_segment and path.datatype != self.owner:
            raise MappingSpecError(where, f"{text!r}: the {self.owner} map reads paths such as {self.owner}.1")
        if self.in_segment:
            key = (path.segment or "", path.field)
            self.fields.add(key)
            if path.segment != self.owner and key not in self.other_fields:
                self.other_fields.append(key)
        self.path_uses.append(PathUse(where, path, datatype))
        return path

    def target(self, text: Any, where: str) -> TargetPath:
        try:
            path = parse_target(text)
        except PathError as exc:
            raise MappingSpecError(where, str(exc)) from None
        if path.is_value and self.in_segment:
            raise MappingSpecError(where, "$value is only for datatype maps")
        return path

    def check_target(
        self, where: str, target: TargetPath, types: tuple[str, ...], wrap: Any = None
    ) -> tuple[Any, ...] | None:
        """Check that the FHIR element exists in ``root`` and takes the type written (an error names
        the rule's file and line); return the choice exclusions for the writer."""
        if target.is_value:
            return None
        text = f"{self.prefix}.{target.text}" if self.prefix else target.text
        self.target_uses.append(TargetUse(where, self.root, text, types))
        prefix = parse_target(self.prefix) if self.prefix else None
        try:
            resolved = fhirmodel.resolve(self.root, target, (), prefix)
            if types and resolved is not None:
                typed = (
                    parse_target(f"{target.text}.{wrap}") if isinstance(wrap, str) and wrap.isidentifier() else target
                )
                fhirmodel.resolve(self.root, typed, types, prefix)
        except FhirPathError as exc:
            raise MappingSpecError(where, f"{self.map_name}: {exc}") from None
        return resolved.exclusive if resolved is not None else None

    def conditions(self, spec: Any, where: str, rule_source: SourcePath | None) -> list[Check]:
        """Compile ``when:`` (gateway.convert.compilation.conditions)."""
        return compile_conditions(self, spec, where, rule_source)

    # -- producers ----------------------------------------------------------------------------------
    def producer(
        self, rule: dict[str, Any], where: str, target: TargetPath
    ) -> tuple[Producer, bool, str | None, tuple[str, ...]]:
        """(produce(element, ctx) -> value, needs_source, expected v2 datatype, FHIR types written)."""
        kinds = [k for k in ("datatype", "by", "function", "transform", "value", "each") if k in rule]
        if len(kinds) > 1:
            raise MappingSpecError(where, f"a rule uses one of datatype/by/function/transform/value/each, not {kinds}")
        table = self.resolver.table(rule["table"], where) if "table" in rule else None
        if "by" in rule:
            if not isinstance(rule.get("datatypes"), dict) or not rule["datatypes"]:
                raise MappingSpecError(where, "`by` needs a `datatypes` table of value -> datatype map")
            if not target.is_choice:
                raise MappingSpecError(where, "`by` chooses among FHIR types, so `to` must be an element[x]")
            selector = self.source(rule["by"], where)
            if not self.in_segment or selector.segment != self.owner:
                raise MappingSpecError(where, "`by` must name a field of the same segment")
            choices = {}
            written: set[str] = set()
            for code, name in rule["datatypes"].items():
                dmap = self.resolver.datatype_map(str(name), where)
                self.widen("element" if dmap.pure else "message")
                choices[str(code)] = wrap_choice(dmap, target, where, table, MappingSpecError)
                written.add(dmap.fhir_type)
            return (
                dispatch_producer(selector, choices, str(rule.get("from", ""))),
                True,
                None,
                tuple(sorted(written | {"string"})),
            )
        if "datatype" in rule:
            dmap = self.resolver.datatype_map(str(rule["datatype"]), where)
            self.widen("element" if dmap.pure else "message")
            if table is not None and not dmap.accepts_table:
                raise MappingSpecError(where, f"{dmap.name} is a rule map; a table cannot be passed to it")
            return wrap_choice(dmap, target, where, table, MappingSpecError), True, dmap.datatype, (dmap.fhir_type,)
        if "function" in rule:
            name = str(rule["function"])
            fn = functions.BUILDERS.get(name)
            if fn is None:
                raise MappingSpecError(where, f"unknown function {name!r} (not in gateway/convert/functions/)")
            self.widen(functions.BUILDER_READS[name])
            for text in functions.BUILDER_FIELDS[name]:
                path = parse_source(text)
                self.fields.add((path.segment or "", path.field))
            return (lambda el, ctx: fn(el, ctx, table)), False, None, ()
        if target.is_choice:
            raise MappingSpecError(where, f"{target.text} needs a datatype map that names the FHIR type")
        if "value" in rule:
            if is_empty(rule["value"]):
                raise MappingSpecError(where, "value must not be empty")
            return constant_producer(fresh(rule["value"]), "from" in rule), False, None, ()
        transform = None
        zoned = False
        if "transform" in rule:
            transform = functions.TRANSFORMS.get(str(rule["transform"]))
            if transform is None:
                raise MappingSpecError(
                    where, f"unknown transform {rule['transform']!r} (not in gateway/convert/functions/)"
                )
            zoned = str(rule["transform"]) in functions.ZONED_TRANSFORMS
        reads = functions.READS.get(str(rule.get("transform")), "")
        return plain_producer(transform, table, zoned, reads, str(rule.get("from", ""))), True, None, ()

    # -- the rule -------------------------------------------------------------------------------------
    def rule(self, rule: Any, where: str, resource_type: str) -> Rule:
        if not isinstance(rule, dict):
            raise MappingSpecError(where, f"a rule is a mapping of keys, not {rule!r}")
        unknown = set(rule) - RULE_KEYS
        if unknown:
            raise MappingSpecError(where, f"unknown rule key(s) {sorted(unknown)} (known: {sorted(RULE_KEYS)})")
        if "to" not in rule:
            raise MappingSpecError(where, "a rule needs `to`")
        target = self.target(rule["to"], where)
        if "each" in rule:
            return self._each(rule, where, target, resource_type)
        produce, needs_source, expected, types = self.producer(rule, where, target)
        complete = self._made(rule, where) if "made" in rule else None
        exclusive = self.check_target(where, target, types, rule.get("wrap"))
        source = self.source(rule["from"], where, expected) if "from" in rule else None
        if needs_source and source is None and self.in_segment:
            raise MappingSpecError(where, "this rule needs `from`")
        checks = self.conditions(rule.get("when"), where, source)
        post = self._post(rule, where)
        default = fresh(rule["default"]) if "default" in rule else None
        required = bool(rule.get("required", False))
        repeats = rule.get("repeats", "all" if target.appends else "first")
        if repeats not in REPEATS:
            raise MappingSpecError(where, "repeats is first, all or join")
        if not self.in_segment:
            repeats = "first"  # a component does not repeat
        writer = value_writer if target.is_value else compile_writer(target, exclusive)
        exists = compile_reader(target) if rule.get("enrich") else None
        label = f"{resource_type}.{target.text}"
        source_text = source.text if source else ""
        map_name = self.map_name

        if (
            repeats == "first"
            and complete is None
            and source is not None
            and not checks
            and post is None
            and default is None
            and not required
            and exists is None
        ):
            # The common rule, on the hot path: one value, no conditions, nothing to adjust.
            first = first_source(source, self.in_segment, self.owner)

            def apply_simple(subject: Any, ctx: Context, out: dict[str, Any]) -> None:
                element = first(subject, ctx)
                if element is None:
                    return
                value = produce(element, ctx)
                if value is not None and not is_empty(value):
                    writer(out, value)

            return apply_simple

        pick_sources = all_sources(source, self.in_segment, self.owner)
        if (
            repeats == "all"
            and complete is None
            and source is not None
            and not checks
            and default is None
            and not required
            and exists is None
        ):

            def apply_all(subject: Any, ctx: Context, out: dict[str, Any]) -> None:
                for _rep, element in pick_sources(subject, ctx, repeats):
                    if not element:
                        continue
                    value = produce(element, ctx)
                    if value is not None and not is_empty(value):
                        writer(out, value if post is None else post(value))

            return apply_all

        def apply(subject: Any, ctx: Context, out: dict[str, Any]) -> None:
            if exists is not None and exists(out) is None:
                return
            written = False
            joined: list[Any] = []
            for rep, element in pick_sources(subject, ctx, repeats):
                if source is not None and not element:
                    continue
                if checks and not all(check(subject, rep, ctx) for check in checks):
                    continue
                made_mark = len(ctx.made)
                value = produce(element, ctx)
                if is_empty(value):
                    continue
                if complete is not None:
                    complete(subject, ctx, value, made_mark)
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
                raise MappingError(
                    f"{where_}is empty or unusable, but {label} is required", field=source_text, rule=f"map {map_name}"
                )

        return apply

    def _each(self, rule: dict[str, Any], where: str, target: TargetPath, resource_type: str) -> Rule:
        """``each: [rules]``: one object per repetition of ``from``, filled by the inner rules, which
        see that repetition as the whole field."""
        if not self.in_segment or "from" not in rule:
            raise MappingSpecError(where, "`each` belongs in a segment map and needs `from`")
        extra = set(rule) - EACH_RULE_KEYS
        if extra:
            raise MappingSpecError(where, f"an `each` rule has from, to, when and each, not {sorted(extra)}")
        if not isinstance(rule["each"], list) or not rule["each"]:
            raise MappingSpecError(where, "each is a non-empty list of rules")
        source = self.source(rule["from"], where)
        if source.positions:
            raise MappingSpecError(where, "`each` repeats over a whole field, e.g. from: OBX-5")
        checks = self.conditions(rule.get("when"), where, None)
        exclusive = self.check_target(where, target, ())
        outer_prefix = self.prefix
        self.prefix = f"{outer_prefix}.{target.text}" if outer_prefix else target.text
        try:
            inner = [self.rule(r, getattr(r, "where", where), resource_type) for r in rule["each"]]
        finally:
            self.prefix = outer_prefix
        writer = compile_writer(target, exclusive)
        reps_of = repetitions_raw(source, self.owner)
        field_no = source.field

        def apply_each(segment: Any, ctx: Context, out: dict[str, Any]) -> None:
            if checks and not all(check(segment, None, ctx) for check in checks):
                return
            for rep in reps_of(segment, ctx):
                view = OneRepetition(segment, field_no, rep)
                obj: dict[str, Any] = {}
                for inner_rule in inner:
                    inner_rule(view, ctx, obj)
                if obj:
                    writer(out, obj)

        return apply_each

    def _made(self, rule: dict[str, Any], where: str) -> Callable[[Any, Context, Any, int], None]:
        """``made: [rules]`` on a rule whose datatype map makes a resource (``XON[Organization]``):
        rules over other fields of the segment that complete that resource once its id is given
        (OBX-24 the address of the OBX-23 organization), so what they add never changes the id."""
        dmap = self.resolver.datatype_map(str(rule.get("datatype", "")), where) if "datatype" in rule else None
        if not self.in_segment or dmap is None or not dmap.makes_resource:
            raise MappingSpecError(where, "`made` belongs to a segment map rule whose datatype map makes a resource")
        if not isinstance(rule["made"], list) or not rule["made"]:
            raise MappingSpecError(where, "made is a non-empty list of rules")
        resource_type = dmap.fhir_type.split("-", 1)[0]
        inner = RuleCompiler(self.resolver, self.owner, True, f"{self.map_name} ({resource_type})", root=resource_type)
        rules = [inner.rule(r, getattr(r, "where", where), resource_type) for r in rule["made"]]
        self.widen(inner.reads)
        self.fields |= inner.fields
        self.other_fields += [f for f in inner.other_fields if f not in self.other_fields]
        self.path_uses += inner.path_uses
        self.target_uses += inner.target_uses

        def complete(subject: Any, ctx: Context, value: Any, made_mark: int) -> None:
            reference = value.get("reference") if isinstance(value, dict) else None
            for made in ctx.made[made_mark:]:
                if f"{made['resourceType']}/{made['id']}" == reference:
                    for made_rule in rules:
                        made_rule(subject, ctx, made)
                    return

        return complete

    def _post(self, rule: dict[str, Any], where: str) -> Callable[[Any], Any] | None:
        """``wrap: individual`` puts the value under that element; ``set`` then writes constants
        into it (replacing), ``defaults`` writes them where the value has nothing."""
        return post_processor(
            rule.get("wrap"), rule.get("set"), rule.get("defaults"), where, "set" in rule, "defaults" in rule
        )


def post_processor(
    wrap: Any, set_: Any, defaults: Any, where: str, has_set: bool = True, has_defaults: bool = True
) -> Callable[[Any], Any] | None:
    """The ``wrap`` / ``set`` / ``defaults`` adjustment of a value (rules and references use it)."""
    for key, given, value in (("set", has_set, set_), ("defaults", has_defaults, defaults)):
        if given and (not isinstance(value, dict) or not value):
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
