"""The converter: one HL7 v2 message in, one FHIR R4 transaction Bundle out, as a pure function.

    converter = Converter.load()            # reads and compiles mappings/ once
    bundle = converter.convert(message)     # gateway.hl7.message.Message -> Bundle dict

For each message the engine (1) picks the message map for MSH-9 code and trigger, (2) places the
segments in the map's structure, (3) makes one resource per mapped segment, with a deterministic id
from its business identifiers, (4) fills it by its segment map and the maps of segments included
with it, (5) writes the references between resources, and (6) returns them as ``PUT`` entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import gateway
from gateway.convert.context import Context
from gateway.convert.ids import resource_id
from gateway.convert.loader import Mappings, load_mappings
from gateway.convert.messages import MessagePlan, ResourcePlan, load_messages
from gateway.convert.structure import GroupNode, group_segments
from gateway.errors import ConfigError, GatewayError, MappingError
from gateway.hl7.message import Message, Segment


def default_mappings_dir() -> Path:
    """The repository's mappings/ directory, found from the installed package."""
    return Path(gateway.__file__).resolve().parent.parent / "mappings"


@dataclass(eq=False)
class _Instance:
    """One resource to make: the rule, the segment that makes it, and where that segment sits."""

    plan: ResourcePlan
    segment: Segment
    group: GroupNode
    position: int
    id: str | None = None
    #: For on_duplicate: keep_first, the instance whose resource this one's id already names.
    alias_of: "_Instance | None" = None
    computing: bool = False


@dataclass
class Conversion:
    """A bundle with what the conversion could not use (for logs, tests and operators)."""

    bundle: dict
    #: Segments the map did not use, as "NAME#n" (n: 1-based position in the message).
    unused_segments: list[str] = field(default_factory=list)
    #: Values the maps could not carry over (unmapped codes, unsupported value types).
    notes: list[str] = field(default_factory=list)


class _Run:
    """The state of one conversion."""

    def __init__(self, converter: "Converter", message: Message, plan: MessagePlan):
        self.converter = converter
        self.message = message
        self.plan = plan
        self.root, self.unplaced = group_segments(plan.structure, message.segments)
        self.instances: list[_Instance] = []
        # Instances made inside each group instance's subtree, in message order.
        self.below: dict[int, list[_Instance]] = {}
        self.keys: dict[tuple[str, str], list[_Instance]] = {}
        self.notes: list[str] = []

    # -- finding the resources ------------------------------------------------------------------------
    def collect(self) -> None:
        counts: dict[str, int] = {}
        for seg, group in self.root.walk():
            for plan in self.plan.resources:
                if plan.segment != seg.name or (plan.groups is not None and group.name not in plan.groups):
                    continue
                counts[plan.name] = counts.get(plan.name, 0) + 1
                inst = _Instance(plan, seg, group, counts[plan.name])
                self.instances.append(inst)
                for node in group.ancestors():
                    self.below.setdefault(id(node), []).append(inst)
        for plan in self.plan.resources:
            if plan.required and plan.name not in counts:
                raise MappingError(
                    f"{self.plan.name}: the message has no {plan.segment} segment, so no {plan.resource_type} "
                    f"can be made ({plan.name} is required)"
                )

    def nearest(self, inst: _Instance, match: str, by_type: bool) -> _Instance | None:
        for node in inst.group.ancestors():
            for other in self.below.get(id(node), ()):
                if other is not inst and (other.plan.resource_type if by_type else other.plan.name) == match:
                    return other
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
            raise MappingError(
                f"{inst.segment.name}: no business identifier to derive the {inst.plan.resource_type} id from "
                f"(id function {inst.plan.id_name}; e.g. PID-3 must hold a patient identifier)"
            )
        rtype = inst.plan.resource_type
        same = self.keys.setdefault((rtype, key), [])
        if same and inst.plan.on_duplicate == "keep_first":
            inst.alias_of = same[0]
            inst.id = same[0].id
        else:
            same.append(inst)
            inst.id = resource_id(rtype, key if len(same) == 1 else f"{key}#{len(same)}")
        return inst.id  # type: ignore[return-value]

    # -- resources ------------------------------------------------------------------------------------
    def build(self, inst: _Instance) -> dict:
        plan = inst.plan
        resource: dict = {"resourceType": plan.resource_type, "id": self.resolve_id(inst)}
        ctx = Context(self.message, self.converter.mappings.systems, inst.segment, inst.group, self.notes)
        resource.update(plan.map.fill(inst.segment, ctx))
        for name, seg_map in plan.includes:
            for item in inst.group.items:
                if isinstance(item, Segment) and item.name == name:
                    ctx.segment = item
                    seg_map.apply(item, ctx, resource)
        for ref in plan.references:
            seen: set[str] = set()
            for target in self.targets(inst, ref.resource, ref.scope):
                reference = f"{target.plan.resource_type}/{self.resolve_id(target)}"
                if reference not in seen:
                    seen.add(reference)
                    ref.write(resource, {"reference": reference})
        return resource

    def targets(self, inst: _Instance, name: str, scope: str) -> Iterator[_Instance]:
        if scope == "nearest":
            found = self.nearest(inst, name, by_type=False)
            if found is not None:
                yield found
            return
        pool = self.below.get(id(self.root if scope == "message" else inst.group), [])
        for other in pool:
            if other is not inst and (name == "*" or other.plan.name == name):
                yield other

    def run(self) -> Conversion:
        self.collect()
        for inst in self.instances:
            self.resolve_id(inst)
        made = [i for i in self.instances if i.alias_of is None]
        last = [i for i in made if any(r.resource == "*" for r in i.plan.references)]
        entries = []
        for inst in [i for i in made if i not in last] + last:
            try:
                resource = self.build(inst)
            except GatewayError:
                raise
            except Exception as exc:  # a function failed on content it did not expect: say where
                raise MappingError(
                    f"{inst.plan.map.name} failed on {inst.segment.name} segment #{self._index(inst.segment)}: {exc!r}"
                ) from exc
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{resource['id']}",
                    "resource": resource,
                    "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
                }
            )
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        return Conversion(bundle, self.unused(), list(dict.fromkeys(self.notes)))

    def _index(self, seg: Segment) -> int:
        return next(n for n, s in enumerate(self.message.segments, 1) if s is seg)

    def unused(self) -> list[str]:
        used: set[int] = {id(self.message.msh)}
        for inst in self.instances:
            used.add(id(inst.segment))
            for name, _ in inst.plan.includes:
                used.update(id(s) for s in inst.group.items if isinstance(s, Segment) and s.name == name)
        return [f"{s.name}#{n}" for n, s in enumerate(self.message.segments, 1) if id(s) not in used]


class _IdScope:
    """What an id key function sees (gateway.convert.ids.IdScope)."""

    __slots__ = ("_run", "_inst", "message", "segment", "position", "group_name")

    def __init__(self, run: _Run, inst: _Instance):
        self._run = run
        self._inst = inst
        self.message = run.message
        self.segment = inst.segment
        self.position = inst.position
        self.group_name = inst.group.name

    def other_segment(self, name: str) -> Segment | None:
        if self.segment.name == name:
            return self.segment
        return self._inst.group.first_segment(name)

    def nearest_id(self, resource_type: str) -> str | None:
        found = self._run.nearest(self._inst, resource_type, by_type=True)
        return self._run.resolve_id(found) if found is not None else None


class Converter:
    """Compiled mappings; thread-safe (conversion state lives in a per-call object)."""

    def __init__(self, mappings: Mappings, plans: dict[str, MessagePlan]):
        self.mappings = mappings
        self.plans = plans

    @classmethod
    def load(cls, mappings_dir: Path | None = None) -> "Converter":
        root = Path(mappings_dir) if mappings_dir is not None else default_mappings_dir()
        if not root.is_dir():
            raise ConfigError(
                f"mappings directory {root} does not exist (the converter reads its YAML maps from there; "
                "pass mappings_dir or run from a source checkout)"
            )
        mappings = load_mappings(root)
        plans = load_messages(mappings)
        if not plans:
            raise ConfigError(f"no message maps in {root / 'messages'}")
        return cls(mappings, plans)

    def clear_caches(self) -> None:
        """Forget memoized map results (for benchmarks and tests; conversion is the same without)."""
        for store in self.mappings.memo_stores:
            store.clear()

    def supports(self, code: str, trigger: str) -> bool:
        return f"{code}_{trigger}" in self.plans

    def convert(self, message: Message) -> dict:
        """The FHIR transaction Bundle for ``message``; MappingError when it cannot be converted."""
        return self.convert_with_report(message).bundle

    def convert_with_report(self, message: Message) -> Conversion:
        code, trigger, _structure = message.message_type
        plan = self.plans.get(f"{code}_{trigger}")
        if plan is None:
            supported = ", ".join(name.replace("_", "^") for name in sorted(self.plans))
            raise MappingError(f"no mapping for message type {code or '?'}^{trigger or '?'} (supported: {supported})")
        try:
            return _Run(self, message, plan).run()
        except GatewayError:
            raise
        except Exception as exc:  # content a function did not expect: a clear error, not a crash
            raise MappingError(f"{plan.name} conversion failed: {exc!r}") from exc
