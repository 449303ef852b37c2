"""Message structures (HL7 abstract message syntax, chapter 2.12) and grouping segments by them.

A structure is written (in mappings/structures/*.yaml, or inline in a message map) as a list whose
entries are segments in the standard's notation, ``MSH``, ``[PD1]`` (optional), ``{OBX}``
(repeating), ``[{NTE}]``, a choice of segments ``<OBR|RQD|RXO>``, or groups,
``"[{OBSERVATION}]": [OBX, "[{NTE}]"]``. The message itself is the group ``MESSAGE``.

Grouping is lenient, as receivers must be: a segment goes to the first slot, at or after the current
position, of the innermost open group that can take it, else of an enclosing group (which closes the
inner ones), else a new repetition of a repeating group. Required segments that are missing are
skipped, also the first segment of a group (an OBR whose order has no ORC still opens the order).
A segment sent after its place (an AL1 after the DG1s, an OBX after the insurance) joins the
innermost open group that can hold it (in the latest instance of the subgroup it belongs to),
and the open groups stay open; a
Z-segment that fits nowhere joins the group of the segment before it (a site maps it by an
include); any other segment that fits nowhere is kept aside as unplaced, never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.convert.model.mapping_errors import StructureError
from gateway.hl7.message import Segment

_SYNTAX = re.compile(r"^(\[)?\s*(\{)?\s*([A-Z][A-Z0-9_]*|<[A-Z][A-Z0-9]{2}(?:\|[A-Z][A-Z0-9]{2})+>)\s*(\})?\s*(\])?$")

#: The name of the group that is the whole message (for ``groups:`` in message maps).
MESSAGE_GROUP = "MESSAGE"


@dataclass(frozen=True, slots=True)
class Slot:
    """A segment (``children`` is None) or a group in a structure."""

    name: str
    optional: bool
    repeat: bool
    children: tuple[Slot, ...] | None = None
    #: Names of the segments that can start this slot.
    first: frozenset[str] = frozenset()
    #: Names of every segment the slot can hold (a group entered without its required first segment).
    anywhere: frozenset[str] = frozenset()

    @property
    def is_group(self) -> bool:
        return self.children is not None


def parse_syntax(text: str) -> tuple[str, bool, bool]:
    """``"[{NTE}]"`` -> ("NTE", optional=True, repeat=True); a choice keeps its ``<A|B>`` form."""
    m = _SYNTAX.match(text.strip())
    if not m or bool(m.group(1)) != bool(m.group(5)) or bool(m.group(2)) != bool(m.group(4)):
        raise StructureError(
            f"{text!r} is not a segment or group in HL7 syntax (e.g. PID, [PD1], [{{NTE}}], <OBR|RXO>)"
        )
    return m.group(3), bool(m.group(1)), bool(m.group(2))


def build_slot(name: str, optional: bool, repeat: bool, children: list[Slot] | None) -> Slot:
    if children is None:
        names = frozenset(name[1:-1].split("|") if name.startswith("<") else [name])
        return Slot(name, optional, repeat, None, names, names)
    if not children:
        raise StructureError(f"group {name} has no segments")
    first: set[str] = set()
    for child in children:
        first |= child.first
        if not child.optional:
            break
    anywhere = frozenset().union(*(child.anywhere for child in children))
    return Slot(name, optional, repeat, tuple(children), frozenset(first), anywhere)


@dataclass(eq=False)
class GroupNode:
    """One instance of a group: its segments and subgroups in message order."""

    slot: Slot
    parent: GroupNode | None = None
    items: list[Segment | GroupNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.slot.name

    def first_segment(self, name: str) -> Segment | None:
        """The first segment ``name`` directly in this group, else anywhere below it."""
        for item in self.items:
            if isinstance(item, Segment) and item.name == name:
                return item
        for item in self.items:
            if isinstance(item, GroupNode):
                found = item.first_segment(name)
                if found is not None:
                    return found
        return None

    def walk(self) -> Iterator[tuple[Segment, GroupNode]]:
        """Every segment below this group with the group instance that holds it, in message order."""
        for item in self.items:
            if isinstance(item, GroupNode):
                yield from item.walk()
            else:
                yield item, self

    def ancestors(self) -> Iterator[GroupNode]:
        """This group, then each enclosing group up to the message."""
        node: GroupNode | None = self
        while node is not None:
            yield node
            node = node.parent


def segment_names(slot: Slot) -> set[str]:
    """Every segment a structure can hold."""
    if slot.children is None:
        return set(slot.first)
    names: set[str] = set()
    for child in slot.children:
        names |= segment_names(child)
    return names


def _find(children: tuple[Slot, ...], start: int, name: str) -> int | None:
    """The first child slot, at or after ``start``, that the segment can start."""
    for j in range(start, len(children)):
        if name in children[j].first:
            return j
    return None


def _find_within(children: tuple[Slot, ...], start: int, name: str) -> int | None:
    """The first child slot, at or after ``start``, that can hold the segment somewhere in it (a
    group whose required first segment the sender left out)."""
    for j in range(start, len(children)):
        if name in children[j].anywhere:
            return j
    return None


def _place_out_of_order(stack: list[list[Any]], seg: Segment) -> GroupNode | None:
    """A segment sent after the place the structure gives it (an AL1 after the DG1s, an OBX after
    the insurance): it joins the innermost open group that can hold it, as if sent earlier; the
    groups open stay open, so what follows is placed as before."""
    for frame in reversed(stack):
        if seg.name in frame[0].anywhere:
            return _attach(frame[1], seg)
    return None


def _attach(node: GroupNode, seg: Segment) -> GroupNode | None:
    """Put ``seg`` in ``node``: in a slot of its own there, else in the latest instance of a
    subgroup that can hold it, else in a new instance of one; returns the group it joined."""
    children = node.slot.children or ()
    if any(child.children is None and seg.name in child.first for child in children):
        node.items.append(seg)
        return node
    for item in reversed(node.items):
        if isinstance(item, GroupNode) and seg.name in item.slot.anywhere:
            return _attach(item, seg)
    for child in children:
        if child.children is not None and seg.name in child.anywhere:
            sub = GroupNode(child, node)
            node.items.append(sub)
            return _attach(sub, seg)
    return None


def group_segments(structure: Slot, segments: list[Segment]) -> tuple[GroupNode, list[Segment]]:
    """Place ``segments`` in ``structure``; returns the message's group tree and unplaced segments."""
    assert structure.children is not None
    root = GroupNode(structure)
    # Each frame: [slot, group instance, index of the next child slot that may still be filled].
    stack: list[list[Any]] = [[structure, root, 0]]
    unplaced: list[Segment] = []
    previous: GroupNode | None = None  # the group the segment before this one joined
    for seg in segments:
        depth = len(stack) - 1
        while depth >= 0 and _find(stack[depth][0].children, stack[depth][2], seg.name) is None:
            depth -= 1
        if depth < 0:
            # No group can start with it: open the outermost group that holds it further in.
            depth = next(
                (d for d in range(len(stack)) if _find_within(stack[d][0].children, stack[d][2], seg.name) is not None),
                -1,
            )
        if depth < 0:
            joined = _place_out_of_order(stack, seg)
            if joined is not None:
                previous = joined
                continue
            if seg.name.startswith("Z") and previous is not None:
                # A Z-segment (chapter 2.8) the structure does not name belongs with the segment
                # before it: it joins that segment's group, so a site's map can include it.
                previous.items.append(seg)
                continue
            unplaced.append(seg)
            continue
        del stack[depth + 1 :]
        frame = stack[depth]
        while True:
            slot, node, start = frame
            j = _find(slot.children, start, seg.name)
            if j is None:
                j = _find_within(slot.children, start, seg.name)
            assert j is not None
            child = slot.children[j]
            frame[2] = j if child.repeat else j + 1
            if child.children is None:
                node.items.append(seg)
                previous = node
                break
            sub = GroupNode(child, node)
            node.items.append(sub)
            frame = [child, sub, 0]
            stack.append(frame)
    return root, unplaced
