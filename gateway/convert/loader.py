"""Read mappings/ (tables, datatype maps, segment maps, message maps) and compile them once.

Every file is checked when it is loaded: unknown keys, malformed paths, and names of tables,
datatype maps, segment maps and functions that do not exist all raise ConfigError naming the file
and line, so a broken mapping stops the gateway at start instead of failing a message later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from gateway.convert import functions
from gateway.convert.compiler import DatatypeMap, MappingSpecError, Resolver, RuleCompiler
from gateway.convert.values import is_empty
from gateway.convert.context import Context
from gateway.convert.memo import memoized, memoized_segment
from gateway.convert.paths import PathError, compile_writer, parse_target
from gateway.convert.tables import CodingSystems, Table
from gateway.errors import ConfigError
from gateway.hl7.message import Segment


class LineDict(dict):
    """A YAML mapping that remembers the file and line it started on, and each key's line."""

    where: str = "?"
    key_where: dict[str, str]

    def at(self, key: str) -> str:
        """"file:line" of ``key`` (of the mapping when the key is absent)."""
        return self.key_where.get(key, self.where)


def _loader_for(path: Path) -> type[yaml.SafeLoader]:
    class LineLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineDict:
        mapping = LineDict(loader.construct_mapping(node, deep=True))
        mapping.where = f"{path}:{node.start_mark.line + 1}"
        mapping.key_where = {
            str(key.value): f"{path}:{key.start_mark.line + 1}" for key, _ in node.value if isinstance(key, yaml.ScalarNode)
        }
        return mapping

    LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return LineLoader


def read_yaml(path: Path) -> LineDict:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_loader_for(path))  # noqa: S506 (SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, LineDict):
        raise ConfigError(f"{path}:1: a mapping file holds a YAML mapping at the top")
    return data


def where(node: Any, fallback: str) -> str:
    return node.where if isinstance(node, LineDict) else fallback


def check_keys(node: dict, allowed: set[str], required: set[str], fallback: str) -> None:
    at = where(node, fallback)
    unknown = set(node) - allowed
    if unknown:
        raise MappingSpecError(at, f"unknown key(s) {sorted(unknown)} (known: {sorted(allowed)})")
    missing = required - set(node)
    if missing:
        raise MappingSpecError(at, f"missing key(s) {sorted(missing)}")


# --- tables ------------------------------------------------------------------------------------------

def load_table(data: LineDict, path: Path) -> Table | CodingSystems:
    if "systems" in data:
        check_keys(data, {"table", "systems", "source", "note"}, {"table", "systems"}, str(path))
        systems = data["systems"]
        if not isinstance(systems, dict) or not all(isinstance(v, str) and v for v in systems.values()):
            raise MappingSpecError(where(data, str(path)), "systems maps a v2 coding system name to a URI")
        return CodingSystems({str(k): v for k, v in systems.items()})
    check_keys(data, {"table", "v2_table", "system", "map", "source", "note"}, {"table", "map"}, str(path))
    default_system = data.get("system")
    codes: dict[str, dict[str, str]] = {}
    for code, entry in (data["map"] or {}).items():
        at = where(entry, where(data["map"], str(path)))
        if isinstance(entry, str):
            entry = {"code": entry}
        if not isinstance(entry, dict) or not entry.get("code"):
            raise MappingSpecError(at, f"table entry {code!r} needs a FHIR code")
        unknown = set(entry) - {"code", "display", "system"}
        if unknown:
            raise MappingSpecError(at, f"table entry {code!r}: unknown key(s) {sorted(unknown)}")
        system = entry.get("system", default_system)
        coding = {"system": system} if system else {}
        coding["code"] = str(entry["code"])
        if entry.get("display"):
            coding["display"] = str(entry["display"])
        codes[str(code)] = coding
    v2_table = data.get("v2_table")
    return Table(str(data["table"]), str(v2_table) if v2_table is not None else None, codes)


# --- segment maps ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SegmentMap:
    """``PID[Patient]``: fills a resource of type ``resource`` from one segment.

    ``fill`` makes the elements for a new resource (memoized on the segment's text when the map
    reads nothing but its segments); ``apply`` adds to a resource another map already filled.
    """

    name: str
    segment: str
    resource: str
    fill: Callable[[Segment, Context], dict]
    apply: Callable[[Segment, Context, dict], None]


SEGMENT_MAP_KEYS = {"segment", "resource", "name", "rules", "when", "base", "source", "note"}
DATATYPE_FILE_KEYS = {"datatype", "maps", "source", "note"}
DATATYPE_MAP_KEYS = {"rules", "function", "choice", "source", "note"}


@dataclass
class Mappings:
    """Everything under mappings/, compiled."""

    root: Path
    tables: dict[str, Table] = field(default_factory=dict)
    systems: CodingSystems = field(default_factory=lambda: CodingSystems({}))
    datatype_maps: dict[str, DatatypeMap] = field(default_factory=dict)
    segment_maps: dict[str, SegmentMap] = field(default_factory=dict)
    #: The memo stores of the compiled maps (see gateway.convert.memo), for clear_caches().
    memo_stores: list[dict] = field(default_factory=list)
    _datatype_specs: dict[str, tuple[str, str, LineDict]] = field(default_factory=dict)
    _compiling: set[str] = field(default_factory=set)

    # -- datatype maps (compiled on first use, so maps may use each other in any file order) ------
    def datatype_map(self, name: str, at: str) -> DatatypeMap:
        found = self.datatype_maps.get(name)
        if found is not None:
            return found
        spec = self._datatype_specs.get(name)
        if spec is None:
            raise MappingSpecError(at, f"unknown datatype map {name!r} (expected e.g. CX[Identifier] from mappings/datatypes/CX.yaml)")
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
        choice = bool(spec.get("choice", False))
        if ("rules" in spec) == ("function" in spec):
            raise MappingSpecError(at, f"{name} has either `rules` or `function`")
        if "function" in spec:
            fn = functions.BUILDERS.get(str(spec["function"]))
            if fn is None:
                raise MappingSpecError(at, f"unknown function {spec['function']!r} (not in gateway/convert/functions.py)")
            pure = functions.BUILDER_READS[str(spec["function"])] == "element"
            return DatatypeMap(name, fhir_type, memoized(fn, self.memo_stores) if pure else fn, accepts_table=True, choice=choice, pure=pure)
        if choice:
            raise MappingSpecError(at, "only a function map can choose among FHIR types")
        rules_spec = spec["rules"]
        if not isinstance(rules_spec, list) or not rules_spec:
            raise MappingSpecError(at, f"{name}: rules is a non-empty list")
        compiler = RuleCompiler(self._resolver(), datatype, in_segment=False, map_name=name)
        rules = [compiler.rule(r, where(r, at), fhir_type) for r in rules_spec]
        to_value = [str(r.get("to")) == "$value" for r in rules_spec]
        if any(to_value) and not all(to_value):
            raise MappingSpecError(at, f"{name}: either every rule writes $value or none does")
        primitive = all(to_value)

        def build(element: Any, ctx: Context, table: Table | None) -> Any:
            out: dict = {}
            for rule in rules:
                rule(element, ctx, out)
            if primitive:
                return out.get("$value")
            return out or None

        pure = compiler.reads == "element"
        return DatatypeMap(name, fhir_type, memoized(build, self.memo_stores) if pure else build, accepts_table=False, pure=pure)

    def _resolver(self) -> Resolver:
        return Resolver(self.tables, self.datatype_map)

    def load_datatype_file(self, data: LineDict, path: Path) -> None:
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

    def load_segment_map(self, data: LineDict, path: Path) -> None:
        check_keys(data, SEGMENT_MAP_KEYS, {"segment", "resource", "rules"}, str(path))
        segment, resource = str(data["segment"]), str(data["resource"])
        name = str(data.get("name") or f"{segment}[{resource}]")
        if name in self.segment_maps:
            raise MappingSpecError(data.where, f"segment map {name} is defined twice")
        if not isinstance(data["rules"], list) or not data["rules"]:
            raise MappingSpecError(data.where, "rules is a non-empty list")
        compiler = RuleCompiler(self._resolver(), segment, in_segment=True, map_name=name)
        rules = [compiler.rule(r, where(r, data.where), resource) for r in data["rules"]]
        checks = compiler.conditions(data.get("when"), data.where, None)
        base_writer = None
        if "base" in data:
            try:
                base_writer = compile_writer(parse_target(data["base"]))
            except PathError as exc:
                raise MappingSpecError(data.where, str(exc)) from None

        def run(seg: Segment, ctx: Context) -> dict:
            part: dict = {}
            for rule in rules:
                rule(seg, ctx, part)
            return part

        # Memoized unless a rule reads the wider message (then the segments are not the whole input).
        build = run if compiler.reads == "message" else memoized_segment(
            run, tuple(compiler.other_segments), self.memo_stores
        )

        def apply(seg: Segment, ctx: Context, resource_out: dict) -> None:
            if checks and not all(check(seg, None, ctx) for check in checks):
                return
            if base_writer is None:
                for rule in rules:  # straight into the resource: rules see what is already there
                    rule(seg, ctx, resource_out)
                return
            part = build(seg, ctx)
            if not is_empty(part):
                base_writer(resource_out, part)

        def fill(seg: Segment, ctx: Context) -> dict:
            if base_writer is not None:
                out: dict = {}
                apply(seg, ctx, out)
                return out
            if checks and not all(check(seg, None, ctx) for check in checks):
                return {}
            return build(seg, ctx)

        self.segment_maps[name] = SegmentMap(name, segment, resource, fill, apply)


def load_mappings(root: Path) -> Mappings:
    """Read and compile every file under ``root`` (tables, datatypes, segments); message files are
    compiled by gateway.convert.messages on top of the result."""
    mappings = Mappings(root)
    try:
        for path in sorted((root / "tables").glob("*.yaml")):
            loaded = load_table(read_yaml(path), path)
            if isinstance(loaded, CodingSystems):
                mappings.systems = CodingSystems({**mappings.systems.names, **loaded.names})
                continue
            if loaded.name != path.stem:
                at = read_yaml(path).at("table")
                raise MappingSpecError(at, f"table {loaded.name!r} must match the file name {path.stem!r}")
            mappings.tables[loaded.name] = loaded
        for path in sorted((root / "datatypes").glob("*.yaml")):
            mappings.load_datatype_file(read_yaml(path), path)
        for name in sorted(mappings._datatype_specs):  # compile all, so unused maps are checked too
            mappings.datatype_map(name, name)
        for path in sorted((root / "segments").glob("*.yaml")):
            mappings.load_segment_map(read_yaml(path), path)
    except MappingSpecError as exc:
        raise ConfigError(f"mapping error at {exc}") from None
    return mappings
