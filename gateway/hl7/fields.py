"""The names HL7 gives segment fields (``PID-3`` is "Patient Identifier List"), from hl7apy's
definitions, for operators reading a message or an error; cached per segment and version."""

from __future__ import annotations

import functools
import importlib
import re

#: hl7apy module names, the version most messages use first; a field a version lacks is looked up
#: in the others (Z-segments have no name anywhere).
_VERSIONS = ("v2_5_1", "v2_5", "v2_4", "v2_3_1", "v2_3", "v2_6", "v2_7", "v2_7_1", "v2_8", "v2_8_1", "v2_8_2")
#: ``PID-3``, ``PID-3.4``, ``PID-3.4.1``: the segment and field of a path.
_PATH = re.compile(r"([A-Z][A-Z0-9]{2})-(\d+)")
#: Words HL7 writes in capitals or with punctuation, which title case would spoil.
_KEEP = {"ID": "ID", "PID": "PID", "SSN": "SSN", "MSH": "MSH", "OF": "Of", "S": "'s"}


def _module(version: str) -> str:
    return "v" + version.replace(".", "_") if version else ""


@functools.cache
def _segment_names(module: str, segment: str) -> dict[int, str]:
    """field number -> hl7apy's long name (``PATIENT_IDENTIFIER_LIST``) in one version."""
    try:
        segments = importlib.import_module(f"hl7apy.{module}.segments").SEGMENTS
    except ImportError:
        return {}
    definition = segments.get(segment)
    if not definition or len(definition) < 2:
        return {}
    names: dict[int, str] = {}
    for entry in definition[1]:
        head, _, number = entry[0].rpartition("_")
        if head == segment and number.isdigit() and entry[1] is not None and len(entry[1]) > 3:
            names[int(number)] = entry[1][3]
    return names


def _readable(long_name: str) -> str:
    """``PATIENT_IDENTIFIER_LIST`` -> "Patient Identifier List"; ``SET_ID_PV1`` -> "Set ID PV1"."""
    words = [
        _KEEP.get(word, word if any(c.isdigit() for c in word) else word.capitalize())
        for word in long_name.split("_")
        if word
    ]
    return " ".join(words).replace(" 's", "'s")


@functools.cache
def field_name(segment: str, number: int, version: str = "") -> str:
    """HL7's name of field ``number`` of ``segment`` (the message's version first, MSH-12 like
    "2.5.1"); "" when no version defines it (a Z-segment, a field beyond the standard)."""
    wanted = _module(version)
    for module in ((wanted,) if wanted in _VERSIONS else ()) + _VERSIONS:
        long_name = _segment_names(module, segment).get(number)
        if long_name:
            return _readable(long_name)
    return ""


def named_path(path: str, version: str = "") -> str:
    """``PID-3`` -> "PID-3 Patient Identifier List", ``PID-3.1`` -> "PID-3.1 in Patient Identifier
    List"; a path without a known field as it is."""
    found = _PATH.match(path)
    if found is None:
        return path
    name = field_name(found.group(1), int(found.group(2)), version)
    if not name:
        return path
    return f"{path} {name}" if found.end() == len(path) else f"{path} in {name}"


@functools.cache
def _component_names(module: str, segment: str, number: int) -> dict[int, str]:
    """component number -> hl7apy's long name (``FAMILY_NAME``) of field ``number`` of ``segment``."""
    try:
        segments = importlib.import_module(f"hl7apy.{module}.segments").SEGMENTS
    except ImportError:
        return {}
    definition = segments.get(segment)
    for entry in definition[1] if definition and len(definition) > 1 else ():
        if entry[0] == f"{segment}_{number}" and entry[1] and entry[1][0] == "sequence":
            return {
                int(name.rpartition("_")[2]): spec[3]
                for name, spec, *_ in entry[1][1]
                if name.rpartition("_")[2].isdigit() and len(spec) > 3 and spec[3]
            }
    return {}


@functools.cache
def component_name(segment: str, field: int, component: int, version: str = "") -> str:
    """HL7's name of a component (``PID-5.1`` is "Family Name"); "" when no version defines it."""
    wanted = _module(version)
    for module in ((wanted,) if wanted in _VERSIONS else ()) + _VERSIONS:
        long_name = _component_names(module, segment, field).get(component)
        if long_name:
            return _readable(long_name)
    return ""
