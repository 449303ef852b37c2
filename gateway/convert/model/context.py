"""What a compiled mapping sees while it runs: the message, the segment, its group, and a notebook."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from gateway.convert.model.tables import CodingSystems
from gateway.hl7.message import Message, Segment

if TYPE_CHECKING:
    from gateway.convert.model.structure import GroupNode


def segment_beside(message: Message, segment: Segment | None, group: GroupNode | None, name: str) -> Segment | None:
    """The segment ``name`` that belongs with ``segment``: the segment itself, the message header for
    MSH, else the first such segment in its group (e.g. the ORC of an ORC/OBR pair), else in the
    enclosing groups, else None."""
    if segment is not None and segment.name == name:
        return segment
    if name == "MSH":
        return message.msh
    node = group
    if node is None:
        return message.segment(name)
    while node is not None:
        for item in node.items:
            if isinstance(item, Segment) and item.name == name:
                return item
        node = node.parent
    return None


@dataclass(slots=True)
class Context:
    message: Message
    systems: CodingSystems
    #: The segment whose map is running, and the group instance it was placed in.
    segment: Segment | None = None
    group: GroupNode | None = None
    #: Things the conversion could not carry over (unmapped codes, unsupported value types).
    notes: list[str] = field(default_factory=list)
    #: Resources the maps made on the way (a Practitioner named in PV1-7, a Location from PV1-3):
    #: the engine adds them to the bundle, one per id.
    made: list[dict[str, Any]] = field(default_factory=list)
    #: The sender's time zone for timestamps without an offset (HL7GW_DEFAULT_TZ), or None.
    tz: tzinfo | None = None
    #: What every memo key holds besides the value: the separators and the time zone
    #: (see gateway.convert.compilation.memo).
    memo_key: str = ""

    def __post_init__(self) -> None:
        if not self.memo_key:
            seps = self.message.separators
            self.memo_key = seps.field + seps.encoding_characters + "|" + (str(self.tz) if self.tz else "")

    def other_segment(self, name: str) -> Segment | None:
        """The segment ``name`` that belongs with the current one (see ``segment_beside``)."""
        return segment_beside(self.message, self.segment, self.group, name)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def make(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Add a resource made by a map (it has resourceType and id) and return a Reference to it."""
        self.made.append(resource)
        return {"reference": f"{resource['resourceType']}/{resource['id']}"}
