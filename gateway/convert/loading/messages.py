"""Message maps: which segments, in which groups, make which resources, and how they reference
each other. One file per trigger event (``mappings/messages/ADT_A01.yaml``); a trigger whose
mapping matches another's says ``extends: ADT_A01`` and lists only what differs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.convert.compilation.compiler import RuleCompiler, post_processor
from gateway.convert.compilation.conditions import Check
from gateway.convert.compilation.maps import Mappings, SegmentMap
from gateway.convert.functions.ids import ID_KEY_FIELDS, ID_KEYS, KeyFunction, declared_key
from gateway.convert.loading.loader import structure_slot
from gateway.convert.model import fhirmodel
from gateway.convert.model.context import Context
from gateway.convert.model.mapping_errors import FhirPathError, MappingSpecError, PathError
from gateway.convert.model.paths import (
    SourcePath,
    Writer,
    compile_reader,
    compile_writer,
    parse_source,
    parse_target,
)
from gateway.convert.model.structure import Slot
from gateway.convert.model.values import clone, is_empty
from gateway.convert.model.yamlfiles import LineDict, check_keys, read_yaml, where
from gateway.errors import ConfigError
from gateway.hl7.message import Segment

MESSAGE_KEYS = {"message", "extends", "abstract", "structure", "resources", "source", "note"}
RESOURCE_KEYS = {
    "segment",
    "groups",
    "map",
    "include",
    "id",
    "required",
    "on_duplicate",
    "references",
    "when",
    "unless_with",
    "after",
    "before",
    "request",
    "defaults",
    "note",
}
INCLUDE_KEYS = {"segment", "map", "scope", "to", "after", "before", "note"}
REFERENCE_KEYS = {
    "to",
    "resource",
    "scope",
    "wrap",
    "set",
    "if_empty",
    "key",
    "match",
    "with",
    "when",
    "required",
    "note",
}
ID_SPEC_KEYS = {"identifier", "within", "fields", "note"}
SCOPES = ("nearest", "group", "up", "message", "segment")
INCLUDE_SCOPES = ("group", "up", "subtree", "order")
DUPLICATE_POLICIES = ("number", "keep_first", "merge")
REQUESTS = ("put", "delete")


@dataclass(frozen=True, slots=True)
class Reference:
    """Write a Reference at ``to`` to the resource(s) rule ``resource`` made (``*``: all of them).

    ``nearest``: the one closest to this resource's segment (same group, then enclosing groups);
    ``group``: every one made inside this resource's group (for a ``to`` that does not repeat, the
    first one: the subscriber of this IN1's own INSURANCE group, never another's);
    ``up``: those made from segments directly in this resource's group, else directly in the nearest
    enclosing group that has one (an order's PRT beside its ORC or OBR, never another order's);
    ``message``: every one in the message;
    ``segment``: the one made from this resource's own segment (an OBX's Observation and document).
    ``when``: conditions on this resource's segment (Coverage.subscriber is the patient when IN1-17
    says SEL). ``post`` wraps the Reference (``wrap: actor``) and adds constants (``set``); with
    ``if_empty`` the reference is written only when the element is still empty (a fallback). With
    ``key`` and ``match`` (named id key functions) the targets are the resources of that name,
    anywhere in the message, whose ``match`` key equals this resource's ``key`` key (a child order's
    parent). ``with_map`` (``with: DG1[EncounterDiagnosis]``), a segment-to-datatype map of the
    referenced resource's segment, completes the written value with what that segment says about
    the relation: each Encounter.diagnosis entry gets the use and rank of the DG1 whose Condition
    it names.
    With ``required`` a resource whose element is still empty after all its references is left out
    (a Provenance whose order was left out has nothing to be the provenance of).
    """

    to: str
    write: Writer
    resource: str
    scope: str
    post: Callable[[Any], Any] | None = None
    filled: Callable[[dict[str, Any]], Any] | None = None
    where: str = ""
    key: KeyFunction | None = None
    match: KeyFunction | None = None
    with_map: SegmentMap | None = None
    when: tuple[Check, ...] = ()
    #: The ``to`` repeats (``[]``): every target is written; else only the first.
    appends: bool = True
    required: Callable[[dict[str, Any]], Any] | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    """Where in its group a segment must sit: after a segment of that name (``after: PV1``, the
    ROL of a visit), or before any (``before: PV1``, the ROL of the patient, in an ADT whose PID,
    ROL, PV1 and ROL share one group)."""

    name: str
    after: bool

    def holds(self, segment: Segment, items: Sequence[Any]) -> bool:
        """Whether ``segment`` sits where this says among ``items``, its group's children."""
        for item in items:
            if item is segment:
                return not self.after
            if isinstance(item, Segment) and item.name == self.name:
                return self.after
        return not self.after


def _placement(spec: Any, at: str) -> Placement | None:
    after, before = spec.get("after"), spec.get("before")
    if after is not None and before is not None:
        raise MappingSpecError(at, "say after or before, not both")
    name = after if after is not None else before
    if name is None:
        return None
    if not isinstance(name, str) or len(name) != 3:
        raise MappingSpecError(at, "after / before name a segment, e.g. after: PV1")
    return Placement(name, after is not None)


@dataclass(frozen=True, slots=True)
class Include:
    """Segments whose map adds to the resource: those directly in its group (``group``), else in the
    nearest enclosing group that has one (``up``), or anywhere below its group (``subtree``).

    A map to a FHIR datatype (``NTE[Annotation]``) makes one value per segment, which ``write``
    puts at the include's ``to`` (``note[]``); a map to the resource's type adds to it itself."""

    segment: str
    map: SegmentMap
    scope: str = "group"
    write: Writer | None = None
    #: Only segments placed after (``after``) / not after (``before``) such a segment in their group.
    placement: Placement | None = None

    def apply(self, segment: Segment, ctx: Context, resource: dict[str, Any]) -> None:
        if self.write is None:
            self.map.apply(segment, ctx, resource)
            return
        value = self.map.fill(segment, ctx)
        if not is_empty(value):
            self.write(resource, value)


@dataclass(frozen=True, slots=True)
class Defaults:
    """A resource's ``defaults:``: constants written, after every map, where an element is empty
    (``status: unknown`` for a 1..1 element nothing in the message gave)."""

    items: tuple[tuple[Callable[[dict[str, Any]], Any], Writer, Any], ...]

    def fill(self, resource: dict[str, Any]) -> None:
        for present, write, value in self.items:
            if present(resource) is None:
                write(resource, clone(value))


@dataclass(frozen=True, slots=True)
class ResourcePlan:
    name: str
    resource_type: str
    segment: str
    #: Only segments placed directly in one of these groups make this resource (None: anywhere).
    groups: frozenset[str] | None
    map: SegmentMap
    includes: tuple[Include, ...]
    id_name: str
    id_key: KeyFunction
    required: bool
    on_duplicate: str
    references: tuple[Reference, ...]
    #: Conditions on the segment; a segment failing one makes no resource.
    when: tuple[Check, ...] = ()
    #: No resource when the segment's group (or a group below it) holds one of these segments.
    unless_with: frozenset[str] = frozenset()
    #: Only a segment placed after (or before) a segment of that name in its group.
    placement: Placement | None = None
    #: "put" (the resource) or "delete" (a DELETE entry for the id, e.g. ADT^A29).
    request: str = "put"
    #: What the maps made of the segments (before references), memoized on their text when every
    #: map is pure (gateway.convert.compilation.memo); None otherwise.
    memo: dict[tuple[Any, ...], Any] | None = None
    #: Fields the id key function reads, as (segment, field).
    id_fields: frozenset[tuple[str, int]] = frozenset()
    #: Constants for the elements still empty after every map (``defaults:``).
    defaults: Defaults | None = None


@dataclass(frozen=True, slots=True)
class MessagePlan:
    name: str
    structure: Slot
    resources: tuple[ResourcePlan, ...]
    #: segment name -> the resource plans that start from it, in map order.
    by_segment: dict[str, tuple[ResourcePlan, ...]] = field(default_factory=dict, compare=False, hash=False)


def _by_segment(resources: tuple[ResourcePlan, ...]) -> dict[str, tuple[ResourcePlan, ...]]:
    found: dict[str, list[ResourcePlan]] = {}
    for resource in resources:
        found.setdefault(resource.segment, []).append(resource)
    return {name: tuple(plans) for name, plans in found.items()}


def _segment_map(mappings: Mappings, name: Any, segment: str, at: str) -> SegmentMap:
    found = mappings.segment_maps.get(str(name))
    if found is None:
        raise MappingSpecError(at, f"unknown segment map {name!r} (known: {', '.join(sorted(mappings.segment_maps))})")
    if found.segment != segment:
        raise MappingSpecError(at, f"segment map {found.name} maps {found.segment}, not {segment}")
    return found


def _paths(value: Any, at: str, what: str) -> tuple[SourcePath, ...]:
    items = value if isinstance(value, list) else [value]
    try:
        paths = tuple(parse_source(str(v)) for v in items)
    except PathError as exc:
        raise MappingSpecError(at, f"{what}: {exc}") from None
    if any(p.segment is None for p in paths):
        raise MappingSpecError(at, f"{what} are segment paths such as DG1-20")
    return paths


def _id_key(spec: Any, at: str) -> tuple[str, KeyFunction, frozenset[tuple[str, int]]]:
    if isinstance(spec, dict):
        check_keys(spec, ID_SPEC_KEYS, set(), at)
        identifiers = _paths(spec.get("identifier", []), at, "id identifier") if spec.get("identifier") else ()
        fields = _paths(spec.get("fields", []), at, "id fields") if spec.get("fields") else ()
        within_spec = spec.get("within") or []
        within = tuple(str(w) for w in (within_spec if isinstance(within_spec, list) else [within_spec]))
        used = frozenset((p.segment or "", p.field) for p in identifiers + fields)
        return "declared", declared_key(identifiers, within, fields), used
    found = ID_KEYS.get(str(spec))
    if found is None:
        raise MappingSpecError(
            at,
            f"unknown id function {spec!r} (known: {', '.join(sorted(ID_KEYS))}, or a mapping "
            "{identifier: [...], within: Type, fields: [...]})",
        )
    used = frozenset((p.segment or "", p.field) for p in map(parse_source, ID_KEY_FIELDS.get(str(spec), ())))
    return str(spec), found, used


def _with_map(mappings: Mappings, name: Any, resource_type: str, to: str, at: str) -> SegmentMap:
    """The segment-to-datatype map a reference's ``with`` names; it must make what ``to`` takes."""
    found = mappings.segment_maps.get(str(name))
    if found is None:
        raise MappingSpecError(at, f"unknown segment map {name!r} (known: {', '.join(sorted(mappings.segment_maps))})")
    if not found.datatype:
        raise MappingSpecError(at, f"`with` names a map to a datatype, not {found.name}, which fills a resource")
    try:
        fhirmodel.resolve(resource_type, parse_target(to), (found.datatype,))
    except (PathError, FhirPathError) as exc:
        raise MappingSpecError(at, f"with {found.name}: {exc}") from None
    return found


def _references(
    mappings: Mappings, spec: Any, resource_type: str, segment: str, name: str, at: str
) -> tuple[Reference, ...]:
    references = []
    for ref in spec or []:
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
        if scope == "message" and not target.appends:
            raise MappingSpecError(ref_at, f"scope {scope} can name several resources, so `to` must end in []")
        post = post_processor(ref.get("wrap"), ref.get("set"), None, ref_at, "set" in ref, False)
        key = match = None
        if ("key" in ref) != ("match" in ref):
            raise MappingSpecError(ref_at, "a reference by key names both `key` and `match` (id key functions)")
        if "key" in ref:
            key, match = ID_KEYS.get(str(ref["key"])), ID_KEYS.get(str(ref["match"]))
            if key is None or match is None:
                raise MappingSpecError(ref_at, f"key and match are id key functions ({', '.join(sorted(ID_KEYS))})")
            if scope != "nearest" or not target.appends:
                raise MappingSpecError(
                    ref_at, "a reference by key searches the message; `to` must end in [] (no scope)"
                )
        filled = None
        if ref.get("if_empty"):
            filled = compile_reader(parse_target(str(ref["to"]).removesuffix("[]")))
        with_map = None
        if "with" in ref:
            with_map = _with_map(mappings, ref["with"], resource_type, str(ref["to"]), ref_at)
        when: tuple[Check, ...] = ()
        if "when" in ref:
            compiler = RuleCompiler(mappings._resolver(), segment, in_segment=True, map_name=f"{name} (reference)")
            when = tuple(compiler.conditions(ref.get("when"), ref_at, None))
            mappings.path_uses.extend(compiler.path_uses)
        required = compile_reader(parse_target(str(ref["to"]).removesuffix("[]"))) if ref.get("required") else None
        references.append(
            Reference(
                str(ref["to"]),
                compile_writer(target),
                str(ref["resource"]),
                scope,
                post,
                filled,
                ref_at,
                key=key,
                match=match,
                with_map=with_map,
                when=when,
                appends=target.appends,
                required=required,
            )
        )
    return tuple(references)


def _include(mappings: Mappings, item: Any, resource_type: str, name: str, at: str) -> Include:
    item_at = where(item, at)
    if not isinstance(item, dict) or set(item) - INCLUDE_KEYS or not {"segment", "map"} <= set(item):
        raise MappingSpecError(
            item_at, "an include is {segment: NTE, map: NTE[Annotation], to: note[], scope: group|up|subtree}"
        )
    inc = _segment_map(mappings, item["map"], str(item["segment"]), item_at)
    placement = _placement(item, item_at)
    scope = str(item.get("scope", "group"))
    if scope not in INCLUDE_SCOPES:
        raise MappingSpecError(item_at, f"an include's scope is one of {INCLUDE_SCOPES}")
    if not inc.datatype:
        if "to" in item:
            raise MappingSpecError(item_at, f"{inc.name} fills the resource itself; `to` is for a map to a datatype")
        if inc.resource != resource_type:
            raise MappingSpecError(item_at, f"{inc.name} fills a {inc.resource}, but {name} is a {resource_type}")
        return Include(str(item["segment"]), inc, scope, None, placement)
    if "to" not in item:
        raise MappingSpecError(item_at, f"{inc.name} makes a {inc.datatype}: say where it goes (`to: note[]`)")
    try:
        target = parse_target(item["to"])
        resolved = fhirmodel.resolve(resource_type, target, (inc.datatype,))
    except (PathError, FhirPathError) as exc:
        raise MappingSpecError(item_at, f"{name}: {exc}") from None
    if target.is_value or target.is_choice:
        raise MappingSpecError(item_at, f"{name}: `to` names an element of the {resource_type}")
    writer = compile_writer(target, resolved.exclusive if resolved is not None else None)
    return Include(str(item["segment"]), inc, scope, writer, placement)


def _defaults(spec: Any, resource_type: str, name: str, at: str) -> Defaults | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or not spec or any(is_empty(v) for v in spec.values()):
        raise MappingSpecError(at, "defaults is a non-empty mapping of element: value, e.g. {status: unknown}")
    items = []
    for key, value in spec.items():
        try:
            target = parse_target(str(key))
            fhirmodel.resolve(resource_type, target)
        except (PathError, FhirPathError) as exc:
            raise MappingSpecError(at, f"{name} defaults: {exc}") from None
        if target.appends or target.is_choice or target.is_value:
            raise MappingSpecError(at, f"{name} defaults: {key!r} names one element, not a list item or a choice")
        items.append((compile_reader(target), compile_writer(target), value))
    return Defaults(tuple(items))


def _resource(mappings: Mappings, name: str, spec: Any, at: str) -> ResourcePlan:
    if not isinstance(spec, dict):
        raise MappingSpecError(at, f"resource {name} is a mapping")
    at = where(spec, at)
    check_keys(spec, RESOURCE_KEYS, {"segment", "map", "id"}, at)
    segment = str(spec["segment"])
    seg_map = _segment_map(mappings, spec["map"], segment, at)
    if seg_map.datatype:
        raise MappingSpecError(at, f"{seg_map.name} makes a {seg_map.datatype}, not a resource: include it with `to:`")
    includes = [_include(mappings, item, seg_map.resource, name, at) for item in spec.get("include") or []]
    id_name, id_key, id_fields = _id_key(spec["id"], at)
    on_duplicate = str(spec.get("on_duplicate", "number"))
    if on_duplicate not in DUPLICATE_POLICIES:
        raise MappingSpecError(at, f"on_duplicate is one of {DUPLICATE_POLICIES}")
    groups = spec.get("groups")
    if groups is not None and (not isinstance(groups, list) or not groups):
        raise MappingSpecError(at, "groups is a non-empty list of group names")
    request = str(spec.get("request", "put"))
    if request not in REQUESTS:
        raise MappingSpecError(at, f"request is one of {REQUESTS}")
    unless = spec.get("unless_with") or []
    if not isinstance(unless, list) or not all(isinstance(s, str) and len(s) == 3 for s in unless):
        raise MappingSpecError(at, "unless_with is a list of segment names")
    compiler = RuleCompiler(mappings._resolver(), segment, in_segment=True, map_name=f"{name} (when)")
    when = tuple(compiler.conditions(spec.get("when"), at, None))
    mappings.path_uses.extend(compiler.path_uses)
    memo: dict[tuple[Any, ...], Any] | None = None
    if seg_map.pure and all(inc.map.pure for inc in includes):
        memo = mappings.memos.new_store()
    return ResourcePlan(
        name=name,
        resource_type=seg_map.resource,
        segment=segment,
        groups=frozenset(str(g) for g in groups) if groups else None,
        map=seg_map,
        includes=tuple(includes),
        id_name=id_name,
        id_key=id_key,
        required=bool(spec.get("required", False)),
        on_duplicate=on_duplicate,
        references=_references(mappings, spec.get("references"), seg_map.resource, segment, name, at),
        when=when,
        unless_with=frozenset(unless),
        placement=_placement(spec, at),
        request=request,
        memo=memo,
        id_fields=id_fields,
        defaults=_defaults(spec.get("defaults"), seg_map.resource, name, where(spec.get("defaults"), at)),
    )


def _merge_resource(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """A derived map's resource entry: the parent's keys, replaced by the child's; ``key: null``
    removes an inherited key; ``add_include`` and ``add_references`` add to the inherited lists."""
    merged = LineDict({**parent, **child})
    merged.where = getattr(child, "where", getattr(parent, "where", "?"))
    merged.key_where = {**getattr(parent, "key_where", {}), **getattr(child, "key_where", {})}
    for key, value in child.items():
        if value is None:
            merged.pop(key, None)
    for key in ("include", "references"):
        added = merged.pop(f"add_{key}", None)
        if added:
            merged[key] = list(merged.get(key) or []) + list(added)
    return merged


def _resolve_extends(name: str, raw: dict[str, LineDict], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    data = raw[name]
    if name in seen:
        raise MappingSpecError(data.at("extends"), f"extends loops: {' -> '.join(seen + (name,))}")
    parent_name = data.get("extends")
    if parent_name is None:
        merged: dict[str, Any] = {}
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
                elif res_name in resources and isinstance(res_spec, dict):
                    resources[res_name] = _merge_resource(resources[res_name], res_spec)
                else:
                    resources[res_name] = res_spec
            merged["resources"] = resources
        else:
            merged[key] = value
    merged["_where"] = data.where
    merged["_structure_at"] = data.at("structure") if "structure" in data else merged.get("_structure_at", data.where)
    return merged


def _structure(mappings: Mappings, spec: Any, at: str) -> Slot:
    if isinstance(spec, str):
        found = mappings.structures.get(spec)
        if found is None:
            raise MappingSpecError(at, f"unknown structure {spec!r} (no mappings/structures/{spec}.yaml)")
        return found
    return structure_slot(spec, at)


def load_messages(mappings: Mappings) -> dict[str, MessagePlan]:
    """Compile every mappings/messages/*.yaml (abstract ones only serve as parents)."""
    raw: dict[str, LineDict] = {}
    plans: dict[str, MessagePlan] = {}
    try:
        for root in mappings.roots:
            for path in sorted((root / "messages").glob("*.yaml")):
                data = read_yaml(path)
                check_keys(data, MESSAGE_KEYS, {"message"}, str(path))
                if str(data["message"]) != path.stem:
                    raise MappingSpecError(
                        data.at("message"), f"message {data['message']!r} must match the file name {path.stem!r}"
                    )
                if path.stem in raw and str(data.get("extends")) == path.stem:
                    # An overlay that extends the map of its own name adds to it instead of replacing it.
                    earlier = f"{path.stem}@{sum(1 for n in raw if n.startswith(path.stem + '@')) + 1}"
                    raw[earlier] = raw[path.stem]
                    extended = LineDict({**data, "extends": earlier})
                    if raw[earlier].get("abstract") and "abstract" not in data:
                        extended["abstract"] = True
                    extended.where, extended.key_where = data.where, data.key_where
                    data = extended
                raw[path.stem] = data
        for name in raw:
            merged = _resolve_extends(name, raw)
            if merged.get("abstract") or "@" in name:
                continue
            at = merged["_where"]
            if "structure" not in merged:
                raise MappingSpecError(at, f"{name} has no structure (give one or extend a map that has)")
            structure = _structure(mappings, merged["structure"], merged["_structure_at"])
            resources_spec = merged.get("resources") or {}
            if not isinstance(resources_spec, dict) or not resources_spec:
                raise MappingSpecError(at, f"{name} makes no resources")
            resources = tuple(_resource(mappings, str(n), spec, at) for n, spec in resources_spec.items())
            known = {r.name: r for r in resources}
            for plan in resources:
                for ref in plan.references:
                    if ref.resource not in known and ref.resource != "*":
                        raise MappingSpecError(
                            ref.where or at, f"{name}: {plan.name} references unknown resource {ref.resource!r}"
                        )
                    if ref.with_map is not None and (
                        ref.resource == "*" or known[ref.resource].segment != ref.with_map.segment
                    ):
                        raise MappingSpecError(
                            ref.where or at,
                            f"{name}: {plan.name}: with {ref.with_map.name} maps {ref.with_map.segment}, "
                            f"not the segment {ref.resource} is made from",
                        )
            plans[name] = MessagePlan(name, structure, resources, _by_segment(resources))
    except MappingSpecError as exc:
        raise ConfigError(f"mapping error at {exc}") from None
    return plans
