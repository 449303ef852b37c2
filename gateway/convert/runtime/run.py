"""One conversion: place the segments, make the resources, write references, build the bundle.

For a message the run (1) places the segments in the structure, (2) finds the segments the message
map makes resources from, (3) gives each resource a deterministic id from its business identifiers,
(4) fills it by its segment map and the maps of segments included with it, (5) writes the
references between resources, and (6) returns them, with the resources the maps made on the way
(Practitioners, Organizations, Locations), as ``PUT`` (or ``DELETE``) entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from gateway.convert.compilation.maps import Mappings, SegmentMap
from gateway.convert.compilation.memo import MAX_MEMO_TEXT, Entry, other_fields_key, text_size
from gateway.convert.functions.ids import resource_id
from gateway.convert.loading.messages import Include, MessagePlan, Reference, ResourcePlan
from gateway.convert.model.context import Context, segment_beside
from gateway.convert.model.structure import GroupNode, Slot, group_segments
from gateway.errors import GatewayError, MappingError, describe
from gateway.hl7.fields import named_path
from gateway.hl7.message import Message, Segment

#: Segments about the message rather than its content; one that fits nowhere is only reported.
ENVELOPE_SEGMENTS = frozenset({"SFT", "UAC", "DSC"})
#: The core extension that carries an Annotation on any resource (here: the Provenance).
NOTE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/note"


@dataclass(eq=False)
class _Instance:
    """One resource to make: the rule, the segment that makes it, and where that segment sits."""

    plan: ResourcePlan
    segment: Segment
    group: GroupNode
    position: int
    id: str | None = None
    #: For on_duplicate: keep_first, the instance whose resource this one's id already names.
    alias_of: _Instance | None = None
    computing: bool = False
    #: What its maps made, before references (computed once, for every instance, before any is built).
    content: dict[str, Any] | None = None
    #: Left out: a value its map requires is missing (the rest of the message is still converted).
    dropped: bool = False

    @property
    def gone(self) -> bool:
        """Left out, itself or the instance whose resource it is (on_duplicate: keep_first)."""
        return self.dropped or (self.alias_of is not None and self.alias_of.dropped)


@dataclass
class Conversion:
    """A bundle with what the conversion could not use (for logs, tests, operators and --report)."""

    bundle: dict[str, Any]
    #: Segments the map did not use, as "NAME#n" (n: 1-based position in the message).
    unused_segments: list[str] = field(default_factory=list)
    #: Values the maps could not carry over (unmapped codes, unsupported value types).
    notes: list[str] = field(default_factory=list)
    #: Fields present in used segments that no map reads, as "PID-10" per "NAME#n".
    unused_fields: dict[str, list[str]] = field(default_factory=dict)


def _agree(a: object, b: object) -> bool:
    """Two objects that say the same where both say something (one name with a use, one without)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    shared = a.keys() & b.keys()
    return bool(shared) and all(a[k] == b[k] for k in shared)


def merge_resource(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Merge what ``other`` knows into ``into`` (two mentions of one Practitioner): objects merge,
    a list item that agrees with one already there completes it, other items are added, a value
    already there stays."""
    for key, value in other.items():
        current = into.get(key)
        if current is None:
            into[key] = value
        elif isinstance(current, dict) and isinstance(value, dict):
            merge_resource(current, value)
        elif isinstance(current, list) and isinstance(value, list):
            for item in value:
                if item in current:
                    continue
                same = next((c for c in current if _agree(c, item)), None)
                if same is not None:
                    merge_resource(same, item)
                else:
                    current.append(item)


def _order_has(group: GroupNode, names: frozenset[str]) -> bool:
    """Whether the segment's group, or an enclosing group below the message, holds one of ``names``
    (an ORC whose ORDER group has an OBR; an RXO whose ORDER has an RXE)."""
    node: GroupNode | None = group
    while node is not None and node.parent is not None:
        if any(seg.name in names for seg, _ in node.walk()):
            return True
        node = node.parent
    return False


def _holds(group: GroupNode, name: str) -> bool:
    return any(isinstance(item, Segment) and item.name == name for item in group.items)


def _in_order(group: GroupNode, name: str) -> list[Segment]:
    """Include scope ``order``: the segments ``name`` anywhere in the order this group belongs to,
    the nearest enclosing group holding an ORC (OML: the ORDER's TIMING beside the OBR's group), but
    not in the orders nested in it (prior results); without an ORC, in this group's subtree."""
    node: GroupNode | None = group
    while node is not None and not _holds(node, "ORC"):
        node = node.parent
    top = node if node is not None else group

    def below(at: GroupNode) -> Iterator[Segment]:
        for item in at.items:
            if isinstance(item, GroupNode):
                if not _holds(item, "ORC"):
                    yield from below(item)
            elif item.name == name:
                yield item

    return list(below(top))


class Run:
    """The state of one conversion."""

    def __init__(
        self,
        mappings: Mappings,
        message: Message,
        plan: MessagePlan,
        structure: Slot,
        tz: tzinfo | None,
        unplaced_policy: str = "reject",
    ):
        self.mappings = mappings
        self.message = message
        self.plan = plan
        self.tz = tz
        self.structure = structure
        self.unplaced_policy = unplaced_policy
        self.root, self.unplaced = group_segments(structure, message.segments)
        self.instances: list[_Instance] = []
        # Instances made inside each group instance's subtree, in message order.
        self.below: dict[int, list[_Instance]] = {}
        # The same, by (group, ("n", rule name)) and (group, ("t", resource type)), for nearest().
        self.index: dict[tuple[int, tuple[str, str]], list[_Instance]] = {}
        self.keys: dict[tuple[str, str], list[_Instance]] = {}
        self.notes: list[str] = []
        self.made: list[dict[str, Any]] = []
        # For references by key: (match function, rule name) -> the match key of each such instance.
        self.match_keys: dict[tuple[int, str], list[tuple[str | None, _Instance]]] = {}
        # id(segment) -> the fields references' ``with`` maps read of it (for the unused-field report).
        self.with_used: dict[int, set[tuple[str, int]]] = {}
        seps = message.separators
        self.memo_key = f"{seps.field}{seps.encoding_characters}|{tz or ''}"

    def context(self, segment: Segment | None, group: GroupNode | None) -> Context:
        return Context(
            self.message, self.mappings.systems, segment, group, self.notes, self.made, self.tz, self.memo_key
        )

    # -- finding the resources ------------------------------------------------------------------------
    def collect(self) -> None:
        counts: dict[str, int] = {}
        by_segment = self.plan.by_segment
        for seg, group in self.root.walk():
            for plan in by_segment.get(seg.name, ()):
                if plan.groups is not None and group.name not in plan.groups:
                    continue
                if plan.unless_with and _order_has(group, plan.unless_with):
                    continue
                if plan.placement is not None and not plan.placement.holds(seg, group.items):
                    continue
                if plan.when:
                    ctx = self.context(seg, group)
                    if not all(check(seg, None, ctx) for check in plan.when):
                        continue
                counts[plan.name] = counts.get(plan.name, 0) + 1
                inst = _Instance(plan, seg, group, counts[plan.name])
                self.instances.append(inst)
                by_name, by_type = ("n", plan.name), ("t", plan.resource_type)
                for node in group.ancestors():
                    key = id(node)
                    self.below.setdefault(key, []).append(inst)
                    self.index.setdefault((key, by_name), []).append(inst)
                    self.index.setdefault((key, by_type), []).append(inst)
        for plan in self.plan.resources:
            if plan.required and plan.name not in counts:
                raise MappingError(
                    f"{self.plan.name}: the message has no {plan.segment} segment, so no {plan.resource_type} "
                    f"can be made ({plan.name} is required)"
                )

    def nearest(self, inst: _Instance, match: str, by_type: bool) -> _Instance | None:
        """The resource of that rule name (or type) closest to ``inst``: in its group, else in the
        enclosing groups, first in message order."""
        kind = ("t" if by_type else "n", match)
        index = self.index
        node: GroupNode | None = inst.group
        while node is not None:
            for other in index.get((id(node), kind), ()):
                if other is not inst and not other.gone:
                    return other
            node = node.parent
        return None

    # -- ids ------------------------------------------------------------------------------------------
    def resolve_id(self, inst: _Instance) -> str:
        if inst.id is not None:
            return inst.id
        if inst.computing:
            raise MappingError(f"{inst.plan.name}: its id depends on itself (id function {inst.plan.id_name})")
        inst.computing = True
        try:
            key = inst.plan.id_key(_IdScope(self, inst))
        finally:
            inst.computing = False
        if not key:
            plan = inst.plan
            own = sorted(n for name, n in plan.id_fields if name == inst.segment.name)
            raise MappingError(
                f"no business identifier to derive the {plan.resource_type} id from",
                segment=self._where(inst.segment),
                field=", ".join(named_path(f"{inst.segment.name}-{n}", self.message.version) for n in own),
                rule=f"map {plan.map.name}, rule id: {plan.id_name}",
            )
        rtype = inst.plan.resource_type
        same = self.keys.setdefault((rtype, key), [])
        if same and inst.plan.on_duplicate in ("keep_first", "merge"):
            inst.alias_of = same[0]
            inst.id = same[0].id
        else:
            same.append(inst)
            inst.id = resource_id(rtype, key if len(same) == 1 else f"{key}#{len(same)}")
        return inst.id  # type: ignore[return-value]

    # -- resources ------------------------------------------------------------------------------------
    def included(self, inst: _Instance, include: Include) -> list[Segment]:
        """The segments ``include`` adds to ``inst``'s resource."""
        group = inst.group
        placement = include.placement
        if include.scope == "subtree":
            return [
                seg
                for seg, at in group.walk()
                if seg.name == include.segment and (placement is None or placement.holds(seg, at.items))
            ]
        if include.scope == "order":
            return _in_order(group, include.segment)
        node: GroupNode | None = group
        while node is not None:
            found = [item for item in node.items if isinstance(item, Segment) and item.name == include.segment]
            if placement is not None:
                found = [item for item in found if placement.holds(item, node.items)]
            if found or include.scope == "group":
                return found
            node = node.parent
        return []

    def build(self, inst: _Instance) -> dict[str, Any] | None:
        """The resource with its references; None when a ``required`` reference found nothing."""
        plan = inst.plan
        resource: dict[str, Any] = {"resourceType": plan.resource_type, "id": self.resolve_id(inst)}
        resource.update(inst.content if inst.content is not None else self.content(inst))
        for ref in plan.references:
            if ref.filled is not None and ref.filled(resource):
                continue
            if ref.when:
                ctx = self.context(inst.segment, inst.group)
                if not all(check(inst.segment, None, ctx) for check in ref.when):
                    continue
            seen: set[str] = set()
            found = self.targets(inst, ref.resource, ref.scope) if ref.key is None else self.keyed(inst, ref)
            for reference, other in found:
                if reference not in seen:
                    seen.add(reference)
                    value: Any = {"reference": reference}
                    if ref.post is not None:
                        value = ref.post(value)
                    if ref.with_map is not None and other is not None:
                        value = self.completed(value, ref.with_map, other)
                    ref.write(resource, value)
                    if not ref.appends:
                        break  # a single element takes the first one (nearest: there is only one)
        for ref in plan.references:
            if ref.required is not None and not ref.required(resource):
                self.notes.append(
                    f"{inst.segment.name}#{self._index(inst.segment)} left out ({plan.resource_type} {plan.name}): "
                    f"nothing in the message for its {ref.to.removesuffix('[]')}"
                )
                return None
        return resource

    def completed(self, value: Any, with_map: SegmentMap, other: _Instance) -> Any:
        """A reference's ``with``: the value its map makes of the referenced resource's segment
        (the DG1's use and rank), with the (wrapped) reference first."""
        part = with_map.fill(other.segment, self.context(other.segment, other.group))
        self.with_used.setdefault(id(other.segment), set()).update(with_map.fields)
        if not isinstance(value, dict) or not part:
            return value
        return {**value, **{key: item for key, item in part.items() if key not in value}}

    def content(self, inst: _Instance) -> dict[str, Any]:
        """What the resource's map and the maps of its included segments make of them; memoized on
        the segments' text (and the other fields the maps read) when the maps are pure."""
        plan = inst.plan
        ctx = self.context(inst.segment, inst.group)
        included = [(include, self.included(inst, include)) for include in plan.includes]
        store = plan.memo
        key: tuple[Any, ...] = ()
        if store is not None:
            key = (inst.segment.raw, self.memo_key) + other_fields_key(ctx, plan.map.other_fields)
            for include, items in included:
                for item in items:
                    ctx.segment = item
                    key += (item.raw,) + other_fields_key(ctx, include.map.other_fields)
                key += (None,)
            ctx.segment = inst.segment
            if text_size(key) > MAX_MEMO_TEXT:  # too long to keep (see gateway.convert.compilation.memo)
                store = None
            else:
                hit = store.get(key)
                if hit is not None:
                    return hit.replay(ctx)  # type: ignore[no-any-return]
        notes_mark, made_mark = len(self.notes), len(self.made)
        content = plan.map.fill(inst.segment, ctx)
        for include, items in included:
            for item in items:
                ctx.segment = item
                include.apply(item, ctx, content)
        if plan.defaults is not None:
            plan.defaults.fill(content)
        if store is not None:
            self.mappings.memos.put(store, key, Entry(ctx, content, notes_mark, made_mark), text_size(key))
        return content

    def targets(self, inst: _Instance, name: str, scope: str) -> Iterator[tuple[str, _Instance | None]]:
        """The references ``inst`` makes to resources of rule ``name``, each with the instance it
        names (None for a resource a datatype map made)."""
        if scope == "up":
            node: GroupNode | None = inst.group
            while node is not None:
                here = [
                    other
                    for other in self.index.get((id(node), ("n", name)), ())
                    if other.group is node and other is not inst and not other.gone
                ]
                if here:
                    for other in here:
                        yield f"{other.plan.resource_type}/{self.resolve_id(other)}", other
                    return
                node = node.parent
            return
        if scope == "nearest":
            found = self.nearest(inst, name, by_type=False)
            if found is not None:
                yield f"{found.plan.resource_type}/{self.resolve_id(found)}", found
            return
        if scope == "segment":  # the resource the same segment made (an OBX's Observation and document)
            for other in self.below.get(id(inst.group), []):
                if other.segment is inst.segment and other is not inst and not other.gone and other.plan.name == name:
                    yield f"{other.plan.resource_type}/{self.resolve_id(other)}", other
            return
        pool = self.below.get(id(self.root if scope == "message" else inst.group), [])
        for other in pool:
            if other is not inst and not other.gone and (name == "*" or other.plan.name == name):
                yield f"{other.plan.resource_type}/{self.resolve_id(other)}", other
        if name == "*" and scope == "message":
            for made in self.made:
                yield f"{made['resourceType']}/{made['id']}", None

    def keyed(self, inst: _Instance, ref: Reference) -> Iterator[tuple[str, _Instance | None]]:
        """The resources of rule ``ref.resource`` whose ``ref.match`` key is ``inst``'s ``ref.key`` key
        (a susceptibility order's parent culture: its OBR-29 numbers keyed as the parent keys its own)."""
        assert ref.key is not None and ref.match is not None
        wanted = ref.key(_IdScope(self, inst))
        if not wanted:
            return
        cache = (id(ref.match), ref.resource)
        candidates = self.match_keys.get(cache)
        if candidates is None:
            candidates = self.match_keys[cache] = [
                (ref.match(_IdScope(self, other)), other) for other in self.instances if other.plan.name == ref.resource
            ]
        for key, other in candidates:
            if key == wanted and other is not inst and not other.gone:
                yield f"{other.plan.resource_type}/{self.resolve_id(other)}", other

    def unplaced_segments(self) -> list[str]:
        """The segments that fit nowhere in the structure and carry content ("OBX#7"), envelope
        segments (SFT, UAC) aside; never silently dropped: the message is refused, or noted."""
        return [f"{s.name}#{self._index(s)}" for s in self.unplaced if s.name not in ENVELOPE_SEGMENTS]

    def _structure_name(self) -> str:
        found = (name for name, slot in self.mappings.structures.items() if slot is self.structure)
        return next(found, f"{self.plan.name} message map's")

    def _refuse_unplaced(self, unplaced: list[str]) -> None:
        if unplaced and self.unplaced_policy != "note":
            raise MappingError(
                f"{', '.join(unplaced)} fit nowhere in the {self._structure_name()} structure: the message does "
                "not follow its type (HL7GW_UNPLACED_SEGMENTS=note converts it without them, noted on the Provenance)"
            )

    def _note_unplaced(self, unplaced: list[str], bundle: dict[str, Any]) -> None:
        if not unplaced:
            return
        text = f"Not converted: {', '.join(unplaced)}, which fit nowhere in the {self._structure_name()} structure"
        self.notes.append(text)
        for entry in reversed(bundle["entry"]):
            resource = entry.get("resource", {})
            if resource.get("resourceType") == "Provenance":
                resource.setdefault("extension", []).append({"url": NOTE_EXTENSION, "valueAnnotation": {"text": text}})
                break

    def run(self) -> Conversion:
        unplaced = self.unplaced_segments()
        self._refuse_unplaced(unplaced)
        self.collect()
        for inst in self.instances:
            self.resolve_id(inst)
        made = [i for i in self.instances if i.alias_of is None]
        last = [i for i in made if any(r.resource == "*" for r in i.plan.references)]
        first = [i for i in made if i not in last]
        for inst in first:  # every content first, so that references skip what is left out
            self._fill_or_drop(inst)
        self._merge_duplicates()
        entries: dict[tuple[str, str], dict[str, Any]] = {}
        for inst in first:
            if not inst.dropped:
                self._add(entries, inst)
        self._add_made(entries, 0)
        mark = len(self.made)
        tail: dict[tuple[str, str], dict[str, Any]] = {}
        for inst in last:
            self._fill_or_drop(inst)
        for inst in last:
            if not inst.dropped:
                self._add(tail, inst)
        self._add_made(entries, mark)
        entries.update(tail)
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": list(entries.values())}
        self._note_unplaced(unplaced, bundle)
        return Conversion(bundle, [], list(dict.fromkeys(self.notes)))

    def _merge_duplicates(self) -> None:
        """``on_duplicate: merge``: what a second segment with the same key says is added to the
        first's resource (each PRT of a patient's care team one more participant)."""
        for inst in self.instances:
            first = inst.alias_of
            if first is None or inst.plan.on_duplicate != "merge" or first.content is None:
                continue
            self._fill_or_drop(inst)
            if not inst.dropped and inst.content is not None:
                merge_resource(first.content, inst.content)

    def _add_made(self, entries: dict[tuple[str, str], dict[str, Any]], start: int) -> None:
        """Add the resources the maps made (from ``start`` on): one entry per id, mentions merged."""
        for resource in self.made[start:]:
            key = (resource["resourceType"], resource["id"])
            if key not in entries:
                entries[key] = _put(resource)
            elif "resource" in entries[key]:
                merge_resource(entries[key]["resource"], resource)

    def _add(self, entries: dict[tuple[str, str], dict[str, Any]], inst: _Instance) -> None:
        rtype, rid = inst.plan.resource_type, self.resolve_id(inst)
        if inst.plan.request == "delete":
            entries[(rtype, rid)] = {"request": {"method": "DELETE", "url": f"{rtype}/{rid}"}}
            return
        try:
            resource = self.build(inst)
        except MappingError as exc:
            raise self._located(inst, exc) from exc
        except GatewayError:
            raise
        except Exception as exc:  # a function failed on content it did not expect: say where
            raise self._failed(inst, exc) from exc
        if resource is None:
            inst.dropped = True
            return
        entries[(rtype, rid)] = _put(resource)

    def _fill_or_drop(self, inst: _Instance) -> None:
        """Compute what ``inst``'s maps make; when a value its map requires is missing (an OBX
        without OBX-3), leave that one resource out with a note and convert the rest. A resource
        the message map requires, and the message's own (from MSH), fail the message instead."""
        if inst.plan.request == "delete":
            return
        made_mark = len(self.made)
        try:
            inst.content = self.content(inst)
        except MappingError as exc:
            if inst.plan.required or inst.plan.segment == "MSH":
                raise self._located(inst, exc) from exc
            del self.made[made_mark:]  # what its maps made on the way goes with it
            inst.dropped = True
            where = self._where(inst.segment)
            self.notes.append(f"{where} left out ({inst.plan.resource_type} {inst.plan.name}): {exc}")
        except GatewayError:
            raise
        except Exception as exc:  # a function failed on content it did not expect: say where
            raise self._failed(inst, exc) from exc

    def _failed(self, inst: _Instance, exc: Exception) -> MappingError:
        return MappingError(
            f"a function met content it did not expect: {describe(exc)}",
            segment=self._where(inst.segment),
            rule=f"map {inst.plan.map.name}",
        )

    def _located(self, inst: _Instance, exc: MappingError) -> MappingError:
        """``exc`` placed at ``inst``'s segment, the field it names given its HL7 name, and the map
        that made the resource when no rule deeper down said which failed."""
        if exc.segment:
            return exc
        field = named_path(exc.field, self.message.version) if exc.field else ""
        rule = exc.rule or f"map {inst.plan.map.name}"
        return MappingError(exc.problem, segment=self._where(inst.segment), field=field, rule=rule)

    def _where(self, seg: Segment) -> str:
        """``PID#2``: the segment and its place in the message."""
        return f"{seg.name}#{self._index(seg)}"

    def _index(self, seg: Segment) -> int:
        return next(n for n, s in enumerate(self.message.segments, 1) if s is seg)

    def used_segments(self) -> dict[int, set[tuple[str, int]]]:
        """id(segment) -> the fields the maps applied to it read (MSH: the header fields)."""
        used: dict[int, set[tuple[str, int]]] = {id(self.message.msh): {("MSH", n) for n in (1, 2, 9, 10, 12)}}
        for inst in self.instances:
            used.setdefault(id(inst.segment), set()).update(inst.plan.map.fields | inst.plan.id_fields)
            for name, number in inst.plan.map.fields:  # fields of a segment beside it (TQ1-7 for SCH)
                if name == inst.segment.name or name == "MSH":
                    continue
                other = segment_beside(self.message, inst.segment, inst.group, name)
                if other is not None:
                    used.setdefault(id(other), set()).add((name, number))
            for include in inst.plan.includes:
                for seg in self.included(inst, include):
                    used.setdefault(id(seg), set()).update(include.map.fields)
        for key, fields in self.with_used.items():
            used.setdefault(key, set()).update(fields)
        return used

    def unused(self) -> list[str]:
        used = self.used_segments()
        return [f"{s.name}#{n}" for n, s in enumerate(self.message.segments, 1) if id(s) not in used]


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    name = f"{resource['resourceType']}/{resource['id']}"
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource, "request": {"method": "PUT", "url": name}}


class _IdScope:
    """What an id key function sees (gateway.convert.functions.ids.IdScope)."""

    __slots__ = ("_run", "_inst", "message", "segment", "position", "group_name")

    def __init__(self, run: Run, inst: _Instance):
        self._run = run
        self._inst = inst
        self.message = run.message
        self.segment = inst.segment
        self.position = inst.position
        self.group_name = inst.group.name

    def other_segment(self, name: str) -> Segment | None:
        return segment_beside(self.message, self.segment, self._inst.group, name)

    def nearest_id(self, resource_type: str) -> str | None:
        found = self._run.nearest(self._inst, resource_type, by_type=True)
        return self._run.resolve_id(found) if found is not None else None
