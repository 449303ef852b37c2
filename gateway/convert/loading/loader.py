"""Read mappings/ (tables, structures, datatype maps, segment maps) and compile them once.

Every file is checked when it is loaded: unknown keys, malformed paths, and names of tables,
datatype maps, segment maps and functions that do not exist all raise ConfigError naming the file
and line, so a broken mapping stops the gateway at start instead of failing a message later.
Several roots may be given: a later root's file replaces the earlier root's file of the same name
(how a site overlays the shipped maps, see gateway.convert.loading.overlay).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.convert.compilation.maps import Mappings
from gateway.convert.model.mapping_errors import MappingSpecError, StructureError
from gateway.convert.model.structure import MESSAGE_GROUP, Slot, build_slot, parse_syntax
from gateway.convert.model.tables import CodingSystems, Table
from gateway.convert.model.yamlfiles import LineDict, check_keys, mapping_files, read_yaml, where
from gateway.errors import ConfigError

STRUCTURE_KEYS = {"structure", "segments", "source", "note"}
TABLE_KEYS = {"table", "v2_table", "system", "map", "source", "note"}
SYSTEMS_KEYS = {"table", "systems", "source", "note"}
TABLE_ENTRY_KEYS = {"code", "display", "system"}


def load_table(data: LineDict, path: Path) -> Table | CodingSystems:
    if "systems" in data:
        check_keys(data, SYSTEMS_KEYS, {"table", "systems"}, str(path))
        systems = data["systems"]
        if not isinstance(systems, dict) or not all(isinstance(v, str) and v for v in systems.values()):
            raise MappingSpecError(where(data, str(path)), "systems maps a v2 coding system name to a URI")
        return CodingSystems({str(k): v for k, v in systems.items()})
    check_keys(data, TABLE_KEYS, {"table", "map"}, str(path))
    default_system = data.get("system")
    codes: dict[str, dict[str, str]] = {}
    for code, entry in (data["map"] or {}).items():
        at = where(entry, where(data["map"], str(path)))
        if isinstance(entry, str):
            entry = {"code": entry}
        if not isinstance(entry, dict) or not entry.get("code"):
            raise MappingSpecError(at, f"table entry {code!r} needs a FHIR code")
        unknown = set(entry) - TABLE_ENTRY_KEYS
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


def structure_slot(
    entries: Any, at: str, name: str = MESSAGE_GROUP, optional: bool = False, repeat: bool = False
) -> Slot:
    """A structure written as YAML: segments (``PID``, ``[{NTE}]``, ``<OBR|RXO>``) and single-key
    group mappings (``"[{OBSERVATION}]": [OBX, "[{NTE}]"]``)."""
    if not isinstance(entries, list) or not entries:
        raise MappingSpecError(at, f"structure of {name} is a non-empty list")
    children: list[Slot] = []
    for entry in entries:
        try:
            if isinstance(entry, str):
                seg, opt, rep = parse_syntax(entry)
                if len(seg) != 3 and not seg.startswith("<"):
                    raise StructureError(f"{entry!r}: a segment name has 3 characters (a group needs its segments)")
                children.append(build_slot(seg, opt, rep, None))
            elif isinstance(entry, dict) and len(entry) == 1:
                ((syntax, members),) = entry.items()
                group, opt, rep = parse_syntax(str(syntax))
                if group.startswith("<"):
                    raise StructureError(f"{syntax!r}: a choice holds segments, not groups")
                children.append(structure_slot(members, where(entry, at), group, opt, rep))
            else:
                raise StructureError(f"{entry!r} is neither a segment nor a single-key group")
        except StructureError as exc:
            raise MappingSpecError(where(entry, at), str(exc)) from None
    try:
        return build_slot(name, optional, repeat, children)
    except StructureError as exc:
        raise MappingSpecError(at, str(exc)) from None


def load_structure(data: LineDict, path: Path) -> Slot:
    check_keys(data, STRUCTURE_KEYS, {"structure", "segments"}, str(path))
    if str(data["structure"]) != path.stem:
        raise MappingSpecError(
            data.at("structure"), f"structure {data['structure']!r} must match the file name {path.stem!r}"
        )
    return structure_slot(data["segments"], data.at("segments"))


def load_mappings(roots: Path | list[Path]) -> Mappings:
    """Read and compile every file under ``roots`` (tables, structures, datatypes, segments); message
    files are compiled by gateway.convert.loading.messages on top of the result."""
    roots = [roots] if isinstance(roots, Path) else list(roots)
    mappings = Mappings(roots)
    try:
        for path in mapping_files(roots, "tables"):
            data = read_yaml(path)
            loaded = load_table(data, path)
            if isinstance(loaded, CodingSystems):
                mappings.systems = CodingSystems({**mappings.systems.names, **loaded.names})
                continue
            if loaded.name != path.stem:
                raise MappingSpecError(
                    data.at("table"), f"table {loaded.name!r} must match the file name {path.stem!r}"
                )
            mappings.tables[loaded.name] = loaded
        for path in mapping_files(roots, "structures"):
            mappings.structures[path.stem] = load_structure(read_yaml(path), path)
        for path in mapping_files(roots, "datatypes"):
            mappings.add_datatype_file(read_yaml(path), path)
        mappings.compile_datatype_maps()
        for path in mapping_files(roots, "segments"):
            mappings.add_segment_map(read_yaml(path), path)
    except MappingSpecError as exc:
        raise ConfigError(f"mapping error at {exc}") from None
    return mappings
