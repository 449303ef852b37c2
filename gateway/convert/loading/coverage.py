"""How much of the v2-to-FHIR IG's segment maps the mappings implement: which IG maps a segment
map follows (its ``source:`` line names them, ``IG PID[Patient]``) and which of the fields the IG
maps it reads. ``hl7gw mapping-coverage`` prints the table docs/mappings.md carries; the IG's CSVs
are in docs/ig-maps/segments/.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.convert.compilation.maps import Mappings
from gateway.convert.model.yamlfiles import mapping_files, read_yaml

_IG_FILE = re.compile(r"^HL7 Segment - FHIR R4_ (.+?) - .*\.csv$")
_IG_MAP = re.compile(r"\b([A-Z][A-Z0-9]{2})\[([A-Za-z]+(?:-[A-Za-z]+)*)\]")
_FIELD = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d+)$")
#: Columns of an IG segment CSV that name the FHIR target (the element, and its extension column).
_TARGETS = (9, 10)


@dataclass(frozen=True, slots=True)
class MapCoverage:
    """One IG segment map: the fields it maps, ours that follow it, and the fields they read."""

    name: str
    ig_fields: frozenset[int]
    ours: tuple[str, ...]
    read: frozenset[int]


def ig_segment_maps(ig_dir: Path) -> dict[str, frozenset[int]]:
    """IG map name (``PID[Patient]``) -> the numbers of the fields it maps to a FHIR element."""
    found: dict[str, frozenset[int]] = {}
    for path in sorted(ig_dir.glob("*.csv")):
        m = _IG_FILE.match(path.name)
        if m is None:
            continue
        fields = set()
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                field = _FIELD.match(row[1].strip()) if len(row) > max(_TARGETS) else None
                if field is not None and any(row[i].strip() for i in _TARGETS):
                    fields.add(int(field.group(2)))
        found[m.group(1)] = frozenset(fields)
    return found


def followed_ig_maps(mappings: Mappings) -> dict[str, set[str]]:
    """Our segment map name -> the IG segment maps its file's ``source:`` names."""
    followed: dict[str, set[str]] = {}
    for path in mapping_files(mappings.roots, "segments"):
        data = read_yaml(path)
        source = str(data.get("source") or "")
        if "IG" not in source:
            continue
        name = str(data.get("name") or f"{data['segment']}[{data.get('resource') or data.get('datatype')}]")
        followed[name] = {f"{seg}[{target}]" for seg, target in _IG_MAP.findall(source.split("IG", 1)[1])}
    return followed


def coverage(mappings: Mappings, ig_dir: Path) -> list[MapCoverage]:
    """Every IG segment map, with ours that follow it and the IG-mapped fields they read."""
    followed = followed_ig_maps(mappings)
    result = []
    for name, fields in ig_segment_maps(ig_dir).items():
        ours = tuple(sorted(own for own, ig in followed.items() if name in ig))
        segment = name[:3]
        read = {
            number
            for own in ours
            for seg, number in mappings.segment_maps[own].fields
            if seg == segment and number in fields
        }
        result.append(MapCoverage(name, fields, ours, frozenset(read)))
    return result


def coverage_table(mappings: Mappings, ig_dir: Path) -> str:
    """The Markdown table docs/mappings.md carries, with the totals before it."""
    rows = coverage(mappings, ig_dir)
    implemented = sum(1 for row in rows if row.ours)
    mapped = sum(len(row.ig_fields) for row in rows)
    read = sum(len(row.read) for row in rows)
    lines = [
        f"{implemented} of the IG's {len(rows)} segment maps are followed by a map of ours; "
        f"{read} of the {mapped} field rows the IG maps ({100 * read // max(mapped, 1)}%) are read.",
        "",
        "| IG segment map | fields the IG maps | read by ours | our maps |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        ours = ", ".join(f"`{own}`" for own in row.ours) or "-"
        lines.append(f"| {row.name} | {len(row.ig_fields)} | {len(row.read)} | {ours} |")
    return "\n".join(lines) + "\n"
