"""What a compiled mapping sees while it runs: the message, the segment, its group, and a notebook."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.convert.tables import CodingSystems
from gateway.hl7.message import Message, Segment

if TYPE_CHECKING:
    from gateway.convert.structure import GroupNode


@dataclass(slots=True)
class Context:
    message: Message
    systems: CodingSystems
    #: The segment whose map is running, and the group instance it was placed in.
    segment: Segment | None = None
    group: "GroupNode | None" = None
    #: Things the conversion could not carry over (unmapped codes, unsupported value types).
    notes: list[str] = field(default_factory=list)
    #: The message's separators as one string, part of every memo key (see gateway.convert.memo).
    seps_key: str = ""

    def __post_init__(self) -> None:
        if not self.seps_key:
            seps = self.message.separators
            self.seps_key = seps.field + seps.encoding_characters

    def other_segment(self, name: str) -> Segment | None:
        """The segment ``name`` that belongs with the current one: the current segment itself, else
        the first such segment in the same group (e.g. the ORC of an ORC/OBR pair), else None."""
        if self.segment is not None and self.segment.name == name:
            return self.segment
        if self.group is None:
            return self.message.segment(name)
        return self.group.first_segment(name)

    def note(self, text: str) -> None:
        self.notes.append(text)
