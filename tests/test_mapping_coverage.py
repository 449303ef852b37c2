"""The IG coverage table in docs/mappings.md is what the mappings and the IG's CSVs give now."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gateway.convert.loading.coverage import coverage, coverage_table
from tests.support.convert import converter

ROOT = Path(__file__).resolve().parent.parent
IG = ROOT / "docs" / "ig-maps" / "segments"


def test_the_documented_table_is_current() -> None:
    docs = (ROOT / "docs" / "mappings.md").read_text()
    (documented,) = re.findall(r"<!-- coverage:start -->\n(.*?)<!-- coverage:end -->", docs, re.S)
    assert documented == coverage_table(converter().mappings, IG), "regenerate: hl7gw mapping-coverage"


def test_the_command_prints_it() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "mapping-coverage"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == coverage_table(converter().mappings, IG)


def test_a_followed_map_reads_what_it_says() -> None:
    rows = {row.name: row for row in coverage(converter().mappings, IG)}
    assert len(rows) == 75
    pid = rows["PID[Patient]"]
    assert pid.ours == ("PID[Patient]", "PID[RelatedPerson-Mother]") and {3, 5, 7, 8, 21} <= pid.read <= pid.ig_fields
    assert rows["NTE[Observation]"].ours == ("NTE[Annotation]",)  # named in its source: line
    assert rows["MSH[Bundle]"].ours == () and not rows["MSH[Bundle]"].read
    header = rows["MSH[MessageHeader]"]
    assert header.ours == ("MSH[MessageHeader]",) and {3, 4, 5, 6, 9, 11} <= header.read <= header.ig_fields
