"""Conditions (``when:``) of rules, segment maps and message maps, compiled into checks.

A condition names a function of gateway.convert.functions and a v2 path: ``{valued: PID-29}``,
``{in: [XAD.7, [M, SH]]}``, ``{in_table: [MSH-9.2, Event_EncounterStatus]}``; a few look at a whole
field, every repetition (``{repeated: OBX-5}``). All conditions of a ``when`` must hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from gateway.convert import functions
from gateway.convert.compilation.sources import OneRepetition
from gateway.convert.model.context import Context
from gateway.convert.model.mapping_errors import MappingSpecError
from gateway.convert.model.paths import SourcePath
from gateway.convert.model.tables import Table
from gateway.hl7.message import Element, Segment

# A compiled condition: (current segment or element, current repetition, context) -> bool.
Check = Callable[[Any, "Element | None", Context], bool]


class _Tables(Protocol):
    def table(self, name: str, where: str) -> Table: ...


class ConditionScope(Protocol):
    """What compiling a condition needs of the rule compiler (gateway/convert/compilation/compiler.py)."""

    #: The segment or datatype the rules map ("PID", "CX").
    owner: str
    #: Whether the rules read a segment (paths like PID-3) rather than a datatype (CX.1).
    in_segment: bool

    @property
    def resolver(self) -> _Tables: ...

    def source(self, text: str, where: str) -> SourcePath: ...


def compile_conditions(compiler: ConditionScope, spec: Any, where: str, rule_source: SourcePath | None) -> list[Check]:
    """The checks of ``when:``: one condition or a list, all of which must hold."""
    if spec is None:
        return []
    items = spec if isinstance(spec, list) else [spec]
    checks: list[Check] = []
    for item in items:
        if not isinstance(item, dict) or len(item) != 1:
            raise MappingSpecError(where, f"a condition is one {{name: argument}} pair, not {item!r}")
        ((name, arg),) = item.items()
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
            if name in ("in_table", "not_in_table"):
                extra = (compiler.resolver.table(arg[1], where),)
            path_text = arg[0]
        path = compiler.source(path_text, where)
        if name in functions.FIELD_CONDITIONS:
            if not compiler.in_segment or path.positions:
                raise MappingSpecError(where, f"condition {name} looks at a whole field, e.g. {{{name}: OBX-5}}")
            checks.append(_field_check(fn, path, path.segment == compiler.owner))
        else:
            checks.append(_check(fn, path, extra, rule_source, compiler.in_segment, path.segment == compiler.owner))
    return checks


def _field_check(fn: Callable[..., bool], path: SourcePath, own: bool) -> Check:
    """A condition on a whole field, every repetition (``{repeated: OBX-5}``)."""

    def check(segment: Any, rep: Element | None, ctx: Context) -> bool:
        seg = segment if own else ctx.other_segment(path.segment or "")
        raw = seg.field_raw(path.field) if seg is not None else ""
        if isinstance(seg, OneRepetition):
            raw = seg._segment.field_raw(path.field)
        return fn(raw, ctx.message.separators.repetition)

    return check


def _check(
    fn: Callable[..., bool],
    path: SourcePath,
    extra: tuple[Any, ...],
    rule_source: SourcePath | None,
    in_segment: bool,
    own: bool,
) -> Check:
    """A condition on a value: of the datatype being mapped, of the segment (the repetition being
    mapped when the path names the rule's own field), or of a segment beside it."""
    if not in_segment:
        return lambda element, rep, ctx: fn(path.pick(element), *extra)
    same_field = rule_source is not None and path.segment == rule_source.segment and path.field == rule_source.field

    def check(segment: Segment, rep: Element | None, ctx: Context) -> bool:
        if same_field and rep is not None:
            return fn(path.pick(rep), *extra)  # the repetition being mapped
        seg = segment if own else ctx.other_segment(path.segment or "")
        element = seg.field(path.field) if seg is not None else Element("", ctx.message.separators, 0)
        return fn(path.pick(element), *extra)

    return check
