"""Load-time checks of the v2 side of the mappings against hl7apy's definitions of HL7 v2.3 to 2.8.

Every path a mapping reads (``PID-3.4``, ``CX.4``) must exist in at least one of those versions,
and a rule that hands the value to a datatype map (``datatype: "CX[Identifier]"``) must read a
field or component of that datatype in at least one version (datatypes that replaced each other,
CE and CWE, TS and DTM, count as the same). The FHIR side is checked as the rules are compiled
(gateway.convert.model.fhirmodel). A mistake raises ConfigError naming the file and line.

Z-segments and Z-datatypes are site-defined and have no HL7 definition; they are not checked.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable

from gateway.convert.compilation.compiler import PathUse
from gateway.convert.compilation.maps import Mappings
from gateway.convert.model.paths import SourcePath
from gateway.errors import ConfigError

#: The HL7 versions the mappings serve (hl7apy module names).
VERSIONS = ("v2_3", "v2_3_1", "v2_4", "v2_5", "v2_5_1", "v2_6", "v2_7", "v2_7_1", "v2_8", "v2_8_1", "v2_8_2")
#: Datatypes one version replaced by another, or that the maps read alike (chapter 2A).
_FAMILIES = (
    frozenset({"CE", "CWE", "CNE", "CF", "IS", "ID"}),
    frozenset({"TS", "DTM", "DT"}),
    frozenset({"ST", "TX", "FT"}),
    frozenset({"CQ", "NM"}),
)


class _Definitions:
    """segment -> field -> datatypes, and datatype -> component -> datatypes, over VERSIONS."""

    def __init__(self) -> None:
        self.fields: dict[str, dict[int, set[str]]] = {}
        self.components: dict[str, dict[int, set[str]]] = {}
        for version in VERSIONS:
            try:
                segments = importlib.import_module(f"hl7apy.{version}.segments").SEGMENTS
                datatypes = importlib.import_module(f"hl7apy.{version}.datatypes").DATATYPES_STRUCTS
            except ImportError:
                continue
            for name, definition in segments.items():
                if name == "ANYHL7SEGMENT" or len(definition) < 2:
                    continue
                fields = self.fields.setdefault(name, {})
                for entry in definition[1]:
                    head, _, number = entry[0].rpartition("_")
                    if head == name and number.isdigit() and entry[1] is not None:
                        fields.setdefault(int(number), set()).add(entry[1][2])
            for name, components in datatypes.items():
                known = self.components.setdefault(name, {})
                for entry in components:
                    head, _, number = entry[0].rpartition("_")
                    if number.isdigit() and entry[1] is not None:
                        known.setdefault(int(number), set()).add(entry[1][2])


@functools.cache
def definitions() -> _Definitions:
    return _Definitions()


def _descend(datatypes: Iterable[str], positions: tuple[int, ...], text: str) -> set[str]:
    """The datatypes at ``positions`` below values of ``datatypes``; raises ValueError if none has them."""
    current = set(datatypes)
    defs = definitions()
    for n in positions:
        below: set[str] = set()
        widths = []
        for datatype in current:
            if datatype == "varies":
                below.add("varies")
                continue
            components = defs.components.get(datatype)
            if components is None:
                continue  # a primitive: it has no components
            widths.append(f"{datatype} has {max(components)}")
            below |= components.get(n, set())
        if not below:
            raise ValueError(
                f"{text}: no component {n} in HL7 v2.3-v2.8 ({', '.join(sorted(widths)) or 'a primitive has none'})"
            )
        current = below
    return current


def datatypes_at(path: SourcePath) -> set[str] | None:
    """The HL7 datatypes ``path`` has in v2.3-v2.8 (None: site-defined, not checked); ValueError
    naming what does not exist."""
    defs = definitions()
    if path.segment is not None:
        if path.segment.startswith("Z"):
            return None
        fields = defs.fields.get(path.segment)
        if fields is None:
            raise ValueError(f"{path.text}: HL7 v2.3-v2.8 have no segment {path.segment}")
        found = fields.get(path.field)
        if not found:
            raise ValueError(f"{path.text}: {path.segment} has {max(fields)} fields in HL7 v2.3-v2.8, not {path.field}")
        return _descend(found, path.positions, path.text)
    datatype = path.datatype or ""
    if datatype.startswith("Z"):
        return None
    if datatype not in defs.components:
        raise ValueError(f"{path.text}: HL7 v2.3-v2.8 have no composite datatype {datatype}")
    return _descend({datatype}, path.positions, path.text)


def _matches(expected: str, found: set[str]) -> bool:
    if expected in found or "varies" in found:
        return True
    return any(expected in family and found & family for family in _FAMILIES)


def check_path(use: PathUse) -> None:
    """Raise ConfigError if ``use`` names a path that does not exist or has another datatype."""
    try:
        found = datatypes_at(use.path)
    except ValueError as exc:
        raise ConfigError(f"mapping error at {use.where}: {exc}") from None
    if found is None or use.datatype is None:
        return
    if not _matches(use.datatype, found):
        raise ConfigError(
            f"mapping error at {use.where}: {use.path.text} is {'/'.join(sorted(found))} in HL7 v2.3-v2.8, "
            f"but the rule reads it as {use.datatype}"
        )


def check_mappings(mappings: Mappings) -> None:
    """Check every path the compiled maps read (each distinct use once)."""
    seen: set[tuple[str, str | None]] = set()
    for use in mappings.path_uses:
        key = (use.path.text, use.datatype)
        if key in seen:
            continue
        check_path(use)
        seen.add(key)
