"""Which acknowledgement a message asks for: HL7 v2 chapter 2.9 original and enhanced mode.

Original mode (MSH-15 and MSH-16 both empty): exactly one ACK, AA, AE or AR (chapter 2.9.2).
Enhanced mode (either valued): the receiver's accept acknowledgement, CA, CE or CR, sent after the
message is in safe storage, or suppressed, as MSH-15 asks (table 0155, chapter 2.9.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.hl7.message import Segment

#: Table 0155 accept/application acknowledgment conditions.
ALWAYS, NEVER, ERROR_ONLY, SUCCESS_ONLY = "AL", "NE", "ER", "SU"
CONDITIONS = frozenset({ALWAYS, NEVER, ERROR_ONLY, SUCCESS_ONLY})
#: Original-mode outcome -> enhanced-mode accept acknowledgement code (table 0008).
_ENHANCED = {"AA": "CA", "AE": "CE", "AR": "CR"}


@dataclass(frozen=True, slots=True)
class AckMode:
    """The acknowledgement rules one message asked for."""

    enhanced: bool = False
    #: MSH-15 (table 0155). An enhanced-mode message with an empty or unknown MSH-15 gets AL:
    #: an ACK the sender did not need costs less than one it waits for in vain.
    accept: str = ALWAYS

    @classmethod
    def of(cls, msh: Segment) -> AckMode:
        return cls.from_fields(msh.field(15).value, msh.field(16).value)

    @classmethod
    def from_fields(cls, msh15: str, msh16: str) -> AckMode:
        """The mode for MSH-15 and MSH-16 values (first repetition, unescaped)."""
        accept, application = _valued(msh15), _valued(msh16)
        if not accept and not application:
            return ORIGINAL
        condition = accept.upper()
        return cls(True, condition if condition in CONDITIONS else ALWAYS)

    def code(self, outcome: str) -> str:
        """The MSA-1 code for ``outcome`` (AA, AE or AR) in this mode."""
        return _ENHANCED[outcome] if self.enhanced else outcome

    def wants(self, outcome: str) -> bool:
        """Whether an acknowledgement is sent at all for ``outcome`` (AA, AE or AR)."""
        if not self.enhanced or self.accept == ALWAYS:
            return True
        if self.accept == NEVER:
            return False
        return (outcome == "AA") == (self.accept == SUCCESS_ONLY)


ORIGINAL = AckMode()


def _valued(value: str) -> str:
    """``value``, "" when empty, blank or the null value ``""``."""
    value = value.strip()
    return "" if value == '""' else value
