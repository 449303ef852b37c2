"""One error for every mistake in the mapping files, found when they are loaded.

``MappingSpecError`` says where ("file:line") and what. What is found below the level of a file
(a malformed path, a structure, a FHIR element that does not exist) raises one of its subclasses
without a place; the loader adds it. Nothing of this reaches a message: mappings that do not load
stop the gateway at start (or, at intake, make every message type acceptable until they load).
"""

from __future__ import annotations


class MappingSpecError(ValueError):
    """A mapping file says something that cannot be compiled; ``where`` is "file:line" ("" while unknown)."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where = where
        self.reason = reason


class PathError(MappingSpecError):
    """A path in a mapping is not well formed."""

    def __init__(self, reason: str):
        super().__init__("", reason)


class StructureError(MappingSpecError):
    """A message structure (mappings/structures) is not well formed."""

    def __init__(self, reason: str):
        super().__init__("", reason)


class FhirPathError(MappingSpecError):
    """A target path names an element FHIR R4 does not have, or gives it a value of the wrong type."""

    def __init__(self, reason: str):
        super().__init__("", reason)
