"""Compiled datatype maps (``CX[Identifier]``) and segment maps (``PID[Patient]``).

A datatype map is a list of rules over a v2 value, or a named Python function. A map whose FHIR
type is a resource (``XCN[Practitioner]``) *makes* that resource: it names an ``id`` key function,
adds the resource to the conversion (one per id), and gives the rule that used it a Reference.
A variant (``EI[Identifier-Placer]``) is another map of the same datatype with constants set.
A segment map fills a resource from one segment (``PID[Patient]``), or makes one FHIR datatype
value of it (``NTE[Annotation]``), which a message map's include writes where it says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.convert import functions
from gateway.convert.compilation.compiler import PathUse, Resolver, RuleCompiler, TargetUse, post_processor
from gateway.convert.compilation.memo import MemoBudget, memoized, memoized_segment
from gateway.convert.compilation.producers import DatatypeMap
from gateway.convert.functions.ids import MADE_KEYS, resource_id
from gateway.convert.model import fhirmodel
from gateway.convert.model.context import Context
from gateway.convert.model.mapping_errors import FhirPathError, MappingSpecError, PathError
from gateway.convert.model.paths import compile_writer, parse_target
from gateway.convert.model.structure import Slot
from gateway.convert.model.tables import CodingSystems, Table
from gateway.convert.model.values import is_empty
from gateway.convert.model.yamlfiles import LineDict, check_keys, where
from gateway.hl7.message import Segment

SEGMENT_MAP_KEYS = {"segment", "resource", "datatype", "name", "rules", "when", "base", "source", "note"}
DATATYPE_FILE_KEYS = {"datatype", "maps", "source", "note"}
DATATYPE_MAP_KEYS = {"rules", "function", "choice", "id", "map", "set", "source", "note"}


@dataclass(frozen=True, slots=True)
class SegmentMap:
    """``PID[Patient]``: fills a resource of type ``resource`` from one segment; or, when
    ``datatype`` is given (``NTE[Annotation]``), makes one value of that FHIR datatype (``fill``).

    ``fill`` makes the elements for a new resource (memoized on the segment's text when the map
    reads nothing but its segments); ``apply`` adds to a resource another map already filled.
    ``fields`` are the (segment, field) pairs the map reads, for the unused-field report.
    """

    name: str
    segment: str
    resource: str
    fill: Callable[[Segment, Context], dict[str, Any]]
    apply: Callable[[Segment, Context, dict[str, Any]], None]
    fields: frozenset[tuple[str, int]] = frozenset()
    where: str = ""
    #: Fields of other segments the map reads, and whether it reads nothing beyond its segments
    #: and those (then what it makes can be memoized on their text).
    other_fields: tuple[tuple[str, int], ...] = ()
    pure: bool = True
    #: The FHIR datatype a segment-to-datatype map makes ("" for a map that fills a resource).
    datatype: str = ""


@dataclass
class Mappings:
    """Everything under mappings/, compiled."""

    roots: list[Path]
    tables: dict[str, Table] = field(default_factory=dict)
    systems: CodingSystems = field(default_factory=lambda: CodingSystems({}))
    structures: dict[str, Slot] = field(default_factory=dict)
    datatype_maps: dict[str, DatatypeMap] = field(default_factory=dict)
    segment_maps: dict[str, SegmentMap] = field(default_factory=dict)
    #: The memo stores of the compiled maps and the bytes they share (gateway.convert.compilation.memo).
    memos: MemoBudget = field(default_factory=MemoBudget)
    #: What the maps read and write, for the load-time checks (gateway.convert.loading.checks).
    path_uses: list[PathUse] = field(default_factory=list)
    target_uses: list[TargetUse] = field(default_factory=list)
    _datatype_specs: dict[str, tuple[str, str, LineDict]] = field(default_factory=dict)
    _compiling: set[str] = field(default_factory=set)

    @property
    def root(self) -> Path:
        return self.roots[0]

    # -- datatype maps (compiled on first use, so maps may use each other in any file order) ------
    def datatype_map(self, name: str, at: str) -> DatatypeMap:
        found = self.datatype_maps.get(name)
        if found is not None:
            return found
        spec = self._datatype_specs.get(name)
        if spec is None:
            raise MappingSpecError(
                at, f"unknown datatype map {name!r} (expected e.g. CX[Identifier] from mappings/datatypes/CX.yaml)"
            )
        if name in self._compiling:
            raise MappingSpecError(at, f"datatype map {name} uses itself")
        self._compiling.add(name)
        try:
            compiled = self._compile_datatype_map(name, *spec)
        finally:
            self._compiling.discard(name)
        self.datatype_maps[name] = compiled
        return compiled

    def _compile_datatype_map(self, name: str, datatype: str, fhir_type: str, spec: LineDict) -> DatatypeMap:
        at = spec.where
        check_keys(spec, DATATYPE_MAP_KEYS, set(), at)
        if "map" in spec:
            return self._compile_variant(name, datatype, fhir_type, spec)
        if "set" in spec:
            raise MappingSpecError(at, f"{name}: `set` belongs to a variant (`map: Identifier` plus constants)")
        choice = bool(spec.get("choice", False))
        if ("rules" in spec) == ("function" in spec):
            raise MappingSpecError(at, f"{name} has either `rules` or `function`")
        if "function" in spec:
            if "id" in spec:
                raise MappingSpecError(at, "a function map cannot make a resource (`id` needs `rules`)")
            fn = functions.BUILDERS.get(str(spec["function"]))
            if fn is None:
                raise MappingSpecError(at, f"unknown function {spec['function']!r} (not in gateway/convert/functions/)")
            pure = functions.BUILDER_READS[str(spec["function"])] == "element"
            function_map = memoized(fn, self.memos) if pure else fn
            return DatatypeMap(name, datatype, fhir_type, function_map, accepts_table=True, choice=choice, pure=pure)
        if choice:
            raise MappingSpecError(at, "only a function map can choose among FHIR types")
        rules_spec = spec["rules"]
        if not isinstance(rules_spec, list) or not rules_spec:
            raise MappingSpecError(at, f"{name}: rules is a non-empty list")
        resource_type = fhir_type.split("-", 1)[0]  # "Organization-Payor": an Organization
        makes = fhirmodel.is_resource_type(resource_type)
        if makes != ("id" in spec):
            raise MappingSpecError(
                at, f"{name}: a map to a resource type names its `id` key function, and only such a map does"
            )
        compiler = RuleCompiler(self._resolver(), datatype, in_segment=False, map_name=name, root=fhir_type)
        rules = [compiler.rule(r, where(r, at), fhir_type) for r in rules_spec]
        self.path_uses += compiler.path_uses
        self.target_uses += compiler.target_uses
        to_value = [str(r.get("to")) == "$value" for r in rules_spec]
        if any(to_value) and not all(to_value):
            raise MappingSpecError(at, f"{name}: either every rule writes $value or none does")
        primitive = all(to_value)
        key_of = None
        if makes:
            key_of = MADE_KEYS.get(str(spec["id"]))
            if key_of is None:
                raise MappingSpecError(
                    at,
                    f"unknown id function {spec['id']!r} for a made resource (known: {', '.join(sorted(MADE_KEYS))})",
                )

        def build(element: Any, ctx: Context, table: Table | None) -> Any:
            out: dict[str, Any] = {}
            for rule in rules:
                rule(element, ctx, out)
            if primitive:
                return out.get("$value")
            if key_of is None or not out:
                return out or None
            resource = {"resourceType": resource_type, "id": resource_id(resource_type, key_of(out)), **out}
            return ctx.make(resource)

        pure = compiler.reads == "element"
        built = memoized(build, self.memos) if pure else build
        return DatatypeMap(name, datatype, fhir_type, built, accepts_table=False, pure=pure, makes_resource=makes)

    def _compile_variant(self, name: str, datatype: str, fhir_type: str, spec: LineDict) -> DatatypeMap:
        """``Identifier-Placer: {map: Identifier, set: {type: ...}}``: what ``EI[Identifier]`` makes,
        with constants written into it."""
        at = spec.where
        extra = set(spec) - {"map", "set", "source", "note"}
        if extra or "set" not in spec:
            raise MappingSpecError(at, f"{name}: a variant has `map` and `set` only, not {sorted(extra) or 'no set'}")
        base = self.datatype_map(f"{datatype}[{spec['map']}]", at)
        same_type = fhir_type.split("-", 1)[0] == base.fhir_type.split("-", 1)[0]
        if base.choice or base.makes_resource or not same_type:
            raise MappingSpecError(
                at, f"{name}: a variant adds constants to a map of its own FHIR type, not {base.name}"
            )
        post = post_processor(None, spec["set"], None, at, True, False)
        assert post is not None
        adjust = post
        for key in spec["set"]:
            try:
                fhirmodel.resolve(base.fhir_type, parse_target(str(key)))
            except (PathError, FhirPathError) as exc:
                raise MappingSpecError(at, f"{name}: set {key!r}: {exc}") from None
        build_base = base.build

        def build(element: Any, ctx: Context, table: Table | None) -> Any:
            value = build_base(element, ctx, table)
            return adjust(value) if isinstance(value, dict) and value else value

        return DatatypeMap(name, datatype, base.fhir_type, build, base.accepts_table, pure=base.pure)

    def _resolver(self) -> Resolver:
        return Resolver(self.tables, self.datatype_map)

    def add_datatype_file(self, data: LineDict, path: Path) -> None:
        check_keys(data, DATATYPE_FILE_KEYS, {"datatype", "maps"}, str(path))
        datatype = str(data["datatype"])
        if datatype != path.stem:
            raise MappingSpecError(data.at("datatype"), f"datatype {datatype!r} must match the file name {path.stem!r}")
        if not isinstance(data["maps"], dict) or not data["maps"]:
            raise MappingSpecError(data.where, "maps is a mapping of FHIR type -> map")
        for fhir_type, spec in data["maps"].items():
            if not isinstance(spec, LineDict):
                raise MappingSpecError(data.where, f"map {fhir_type!r} must be a mapping")
            self._datatype_specs[f"{datatype}[{fhir_type}]"] = (datatype, str(fhir_type), spec)

    def compile_datatype_maps(self) -> None:
        """Compile every datatype map, so that unused ones are checked too."""
        for name in sorted(self._datatype_specs):
            self.datatype_map(name, name)

    def add_segment_map(self, data: LineDict, path: Path) -> None:
        check_keys(data, SEGMENT_MAP_KEYS, {"segment", "rules"}, str(path))
        if ("resource" in data) == ("datatype" in data):
            raise MappingSpecError(data.where, "a segment map names either the `resource` it fills or a `datatype`")
        datatype = str(data.get("datatype") or "")
        if datatype and (fhirmodel.is_resource_type(datatype) or fhirmodel.elements(datatype) is None):
            raise MappingSpecError(data.at("datatype"), f"{datatype!r} is not a FHIR datatype with elements")
        if datatype and "base" in data:
            raise MappingSpecError(data.at("base"), "a map to a datatype is written where the include says (`to:`)")
        segment, resource = str(data["segment"]), str(data.get("resource") or "")
        root = resource or datatype
        name = str(data.get("name") or f"{segment}[{root}]")
        if name in self.segment_maps:
            raise MappingSpecError(data.where, f"segment map {name} is defined twice")
        if not isinstance(data["rules"], list) or not data["rules"]:
            raise MappingSpecError(data.where, "rules is a non-empty list")
        compiler = RuleCompiler(self._resolver(), segment, in_segment=True, map_name=name, root=root)
        base_writer = None
        if "base" in data:
            try:
                base_writer = compile_writer(parse_target(data["base"]))
            except PathError as exc:
                raise MappingSpecError(data.where, str(exc)) from None
            compiler.prefix = str(data["base"])
        rules = [compiler.rule(r, where(r, data.where), root) for r in data["rules"]]
        compiler.prefix = ""
        checks = compiler.conditions(data.get("when"), data.where, None)
        self.path_uses += compiler.path_uses
        self.target_uses += compiler.target_uses

        def run(seg: Segment, ctx: Context) -> dict[str, Any]:
            part: dict[str, Any] = {}
            for rule in rules:
                rule(seg, ctx, part)
            return part

        # Memoized unless a rule reads the wider message (then the segments are not the whole input).
        build = run if compiler.reads == "message" else memoized_segment(run, tuple(compiler.other_fields), self.memos)

        def apply(seg: Segment, ctx: Context, resource_out: dict[str, Any]) -> None:
            if checks and not all(check(seg, None, ctx) for check in checks):
                return
            if base_writer is None:
                for rule in rules:  # straight into the resource: rules see what is already there
                    rule(seg, ctx, resource_out)
                return
            part = build(seg, ctx)
            if not is_empty(part):
                base_writer(resource_out, part)

        def fill(seg: Segment, ctx: Context) -> dict[str, Any]:
            if base_writer is not None:
                out: dict[str, Any] = {}
                apply(seg, ctx, out)
                return out
            if checks and not all(check(seg, None, ctx) for check in checks):
                return {}
            return build(seg, ctx)

        fields = frozenset(compiler.fields)
        self.segment_maps[name] = SegmentMap(
            name,
            segment,
            resource,
            fill,
            apply,
            fields,
            data.where,
            tuple(compiler.other_fields),
            compiler.reads != "message",
            datatype,
        )
