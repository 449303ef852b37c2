"""Message maps: which segments, in which groups, make which resources, and how they reference
each other. One file per trigger event (``mappings/messages/ADT_A01.yaml``); a trigger whose
mapping matches another's says ``extends: ADT_A01`` and lists only what differs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from gateway.convert.compiler import MappingSpecError
from gateway.convert.ids import ID_KEYS, KeyFunction
from gateway.convert.loader import LineDict, Mappings, SegmentMap, check_keys, read_yaml, where
from gateway.convert.paths import PathError, Writer, compile_writer, parse_target
from gateway.convert.structure import Slot, StructureError, build_slot, parse_syntax
from gateway.errors import ConfigError

MESSAGE_KEYS = {"message", "extends", "abstract", "structure", "resources", "source", "note"}
RESOURCE_KEYS = {"segment", "groups", "map", "include", "id", "required", "on_duplicate", "references", "note"}
REFERENCE_KEYS = {"to", "resource", "scope", "note"}
SCOPES = ("nearest", "group", "message")
DUPLICATE_POLICIES = ("number", "keep_first")


@dataclass(frozen=True, slots=True)
class Reference:
    """Write a Reference at ``to`` to the resource(s) rule ``resource`` made (``*``: all of them).

    ``nearest``: the one closest to this resource's segment (same group, then enclosing groups);
    ``group``: every one made inside this resource's group; ``message``: every one in the message.
    """

    to: str
    write: Writer
    resource: str
    scope: str


@dataclass(frozen=True, slots=True)
class ResourcePlan:
    name: str
    resource_type: str
    segment: str
    #: Only segments placed directly in one of these groups make this resource (None: anywhere).
    groups: frozenset[str] | None
    map: SegmentMap
    #: Segments of the same group instance whose maps add to this resource (e.g. NTE notes).
    includes: tuple[tuple[str, SegmentMap], ...]
    id_name: str
    id_key: KeyFunction
    required: bool
    on_duplicate: str
    references: tuple[Reference, ...]


@dataclass(frozen=True, slots=True)
class MessagePlan:
    name: str
    structure: Slot
    resources: tuple[ResourcePlan, ...]


def _structure(entries: Any, at: str, name: str = "message", optional: bool = False, repeat: bool = False) -> Slot:
    if not isinstance(entries, list) or not entries:
        raise MappingSpecError(at, f"structure of {name} is a non-empty list")
    children: list[Slot] = []
    for entry in entries:
        try:
            if isinstance(entry, str):
                seg, opt, rep = parse_syntax(entry)
                if len(seg) != 3:
                    raise StructureError(f"{entry!r}: a segment name has 3 characters (a group needs its segments)")
                children.append(build_slot(seg, opt, rep, None))
            elif isinstance(entry, dict) and len(entry) == 1:
                (syntax, members), = entry.items()
                group, opt, rep = parse_syntax(str(syntax))
                children.append(_structure(members, where(entry, at), group, opt, rep))
            else:
                raise StructureError(f"{entry!r} is neither a segment nor a single-key group")
        except StructureError as exc:
            raise MappingSpecError(where(entry, at), str(exc)) from None
    try:
        return build_slot(name, optional, repeat, children)
    except StructureError as exc:
        raise MappingSpecError(at, str(exc)) from None


def _segment_map(mappings: Mappings, name: Any, segment: str, at: str) -> SegmentMap:
    found = mappings.segment_maps.get(str(name))
    if found is None:
        raise MappingSpecError(at, f"unknown segment map {name!r} (known: {', '.join(sorted(mappings.segment_maps))})")
    if found.segment != segment:
        raise MappingSpecError(at, f"segment map {found.name} maps {found.segment}, not {segment}")
    return found


def _resource(mappings: Mappings, name: str, spec: Any, at: str) -> ResourcePlan:
    if not isinstance(spec, dict):
        raise MappingSpecError(at, f"resource {name} is a mapping")
    at = where(spec, at)
    check_keys(spec, RESOURCE_KEYS, {"segment", "map", "id"}, at)
    segment = str(spec["segment"])
    seg_map = _segment_map(mappings, spec["map"], segment, at)
    includes = []
    for item in spec.get("include") or []:
        item_at = where(item, at)
        if not isinstance(item, dict) or set(item) - {"segment", "map", "note"} or not {"segment", "map"} <= set(item):
            raise MappingSpecError(item_at, "an include is {segment: NTE, map: NTE[Observation]}")
        inc = _segment_map(mappings, item["map"], str(item["segment"]), item_at)
        if inc.resource != seg_map.resource:
            raise MappingSpecError(item_at, f"{inc.name} fills a {inc.resource}, but {name} is a {seg_map.resource}")
        includes.append((str(item["segment"]), inc))
    id_key = ID_KEYS.get(str(spec["id"]))
    if id_key is None:
        raise MappingSpecError(at, f"unknown id function {spec['id']!r} (known: {', '.join(sorted(ID_KEYS))})")
    on_duplicate = str(spec.get("on_duplicate", "number"))
    if on_duplicate not in DUPLICATE_POLICIES:
        raise MappingSpecError(at, f"on_duplicate is one of {DUPLICATE_POLICIES}")
    groups = spec.get("groups")
    if groups is not None and (not isinstance(groups, list) or not groups):
        raise MappingSpecError(at, "groups is a non-empty list of group names")
    references = []
    for ref in spec.get("references") or []:
        ref_at = where(ref, at)
        if not isinstance(ref, dict):
            raise MappingSpecError(ref_at, "a reference is {to: subject, resource: patient}")
        check_keys(ref, REFERENCE_KEYS, {"to", "resource"}, ref_at)
        scope = str(ref.get("scope", "nearest"))
        if scope not in SCOPES:
            raise MappingSpecError(ref_at, f"scope is one of {SCOPES}")
        try:
            target = parse_target(ref["to"])
        except PathError as exc:
            raise MappingSpecError(ref_at, str(exc)) from None
        if scope != "nearest" and not target.appends:
            raise MappingSpecError(ref_at, f"scope {scope} can name several resources, so `to` must end in []")
        references.append(Reference(str(ref["to"]), compile_writer(target), str(ref["resource"]), scope))
    return ResourcePlan(
        name=name,
        resource_type=seg_map.resource,
        segment=segment,
        groups=frozenset(str(g) for g in groups) if groups else None,
        map=seg_map,
        includes=tuple(includes),
        id_name=str(spec["id"]),
        id_key=id_key,
        required=bool(spec.get("required", False)),
        on_duplicate=on_duplicate,
        references=tuple(references),
    )


def _resolve_extends(name: str, raw: dict[str, LineDict], seen: tuple[str, ...] = ()) -> dict:
    data = raw[name]
    if name in seen:
        raise MappingSpecError(data.at("extends"), f"extends loops: {' -> '.join(seen + (name,))}")
    parent_name = data.get("extends")
    if parent_name is None:
        merged: dict = {}
    else:
        if str(parent_name) not in raw:
            raise MappingSpecError(data.at("extends"), f"extends unknown message map {parent_name!r}")
        merged = copy.copy(_resolve_extends(str(parent_name), raw, seen + (name,)))
        merged.pop("abstract", None)
    for key, value in data.items():
        if key == "resources" and "resources" in merged:
            resources = dict(merged["resources"])
            for res_name, res_spec in (value or {}).items():
                if res_spec is None:
                    resources.pop(res_name, None)  # `name: null` removes an inherited resource
                else:
                    resources[res_name] = res_spec
            merged["resources"] = resources
        else:
            merged[key] = value
    merged["_where"] = data.where
    return merged


def load_messages(mappings: Mappings) -> dict[str, MessagePlan]:
    """Compile every mappings/messages/*.yaml (abstract ones only serve as parents)."""
    raw: dict[str, LineDict] = {}
    plans: dict[str, MessagePlan] = {}
    try:
        for path in sorted((mappings.root / "messages").glob("*.yaml")):
            data = read_yaml(path)
            check_keys(data, MESSAGE_KEYS, {"message"}, str(path))
            if str(data["message"]) != path.stem:
                raise MappingSpecError(data.at("message"), f"message {data['message']!r} must match the file name {path.stem!r}")
            raw[path.stem] = data
        for name, data in raw.items():
            merged = _resolve_extends(name, raw)
            if merged.get("abstract"):
                continue
            at = merged["_where"]
            if "structure" not in merged:
                raise MappingSpecError(at, f"{name} has no structure (give one or extend a map that has)")
            structure = _structure(merged["structure"], at)
            resources_spec = merged.get("resources") or {}
            if not isinstance(resources_spec, dict) or not resources_spec:
                raise MappingSpecError(at, f"{name} makes no resources")
            resources = tuple(_resource(mappings, str(n), spec, at) for n, spec in resources_spec.items())
            known = {r.name for r in resources} | {"*"}
            for plan in resources:
                for ref in plan.references:
                    if ref.resource not in known:
                        raise MappingSpecError(at, f"{name}: {plan.name} references unknown resource {ref.resource!r}")
            plans[name] = MessagePlan(name, structure, resources)
    except MappingSpecError as exc:
        raise ConfigError(f"mapping error at {exc}") from None
    return plans

