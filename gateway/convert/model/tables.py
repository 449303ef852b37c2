"""Vocabulary: v2 table codes to FHIR codings, and v2 coding-system names to FHIR system URIs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Where HL7-defined v2 tables live as FHIR code systems (terminology.hl7.org, "v2-0001" etc.).
V2_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-"
_HL7_TABLE_NAME = re.compile(r"^HL7(\d{4})$")
_URI = re.compile(r"^(?:urn:[a-z0-9][a-z0-9-]*:\S+|https?://\S+)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Table:
    """One concept map: a v2 code to a FHIR coding ``{"system", "code", "display"}``."""

    name: str
    #: The HL7 table number ("0001"), when the codes come from an HL7 table.
    v2_table: str | None
    codes: dict[str, dict[str, str]]
    _folded: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._folded.update({code.upper(): coding for code, coding in self.codes.items()})

    def lookup(self, code: str) -> dict[str, str] | None:
        """The FHIR coding for a v2 code (exact match first, then case-insensitive), or None."""
        found = self.codes.get(code)
        return found if found is not None else self._folded.get(code.upper())

    @property
    def v2_system(self) -> str | None:
        """The system that keeps an unmapped code as it was sent."""
        return V2_SYSTEM + self.v2_table if self.v2_table else None


@dataclass(frozen=True, slots=True)
class CodingSystems:
    """v2 coding-system names (HL7 table 0396, CWE.3/6/12) to FHIR system URIs."""

    names: dict[str, str]

    def system(self, name: str) -> str | None:
        """The URI for a CWE.3 value: a known name, ``HL7nnnn`` tables, or a value already a URI.

        Local names ("L", "99zzz") have no FHIR system; the coding then carries no system rather
        than an invented one.
        """
        name = name.strip()
        if not name:
            return None
        found = self.names.get(name) or self.names.get(name.upper())
        if found:
            return found
        m = _HL7_TABLE_NAME.match(name.upper())
        if m:
            return V2_SYSTEM + m.group(1)
        if _URI.match(name):
            return name
        return None
