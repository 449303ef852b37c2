"""``hl7gw convert FILE... [--report]``: bundles on stdout, the gaps on stderr."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.services.offline import convert_files
from tests.conftest import SAMPLES
from tests.support.convert import converter


def test_convert_prints_one_bundle_per_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    both = tmp_path / "two.hl7"
    both.write_bytes(
        (SAMPLES / "v2-to-fhir-ig/ADT_A01.hl7").read_bytes()
        + b"\r"
        + (SAMPLES / "ms-fhir-converter/ADT-A02-02.hl7").read_bytes()
    )
    assert main(["convert", str(both)]) == 0
    out, err = capsys.readouterr()
    decoder, bundles, text = json.JSONDecoder(), [], out.strip()
    while text:
        bundle, end = decoder.raw_decode(text)
        bundles.append(bundle)
        text = text[end:].strip()
    assert [b["resourceType"] for b in bundles] == ["Bundle", "Bundle"]
    assert bundles[0]["entry"][0]["resource"]["resourceType"] == "MessageHeader"
    assert bundles[0]["entry"][1]["resource"]["resourceType"] == "Patient"
    assert err == ""


def test_report_lists_unused_segments_and_fields() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = convert_files([str(SAMPLES / "ms-fhir-converter/ADT-A01-01.hl7")], True, out, err, converter())
    assert code == 0
    report = err.getvalue()
    assert "ADT^A01^ADT_A01 MSG00001: " in report
    assert "unused segments: ARV#6" in report and "DB1#13" in report
    assert "    PID#4: PID-1 PID-27 PID-33" in report  # present, read by no map
    assert "1 converted, 0 failed" in report


def test_report_on_the_ig_adt_a01_has_no_unused_segment() -> None:
    err = io.StringIO()
    assert convert_files([str(SAMPLES / "v2-to-fhir-ig/ADT_A01.hl7")], True, io.StringIO(), err, converter()) == 0
    assert "unused segments: none" in err.getvalue()


def test_unconvertible_messages_are_reported_and_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.hl7"
    bad.write_text("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rEVN|A01\r")
    err = io.StringIO()
    assert convert_files([str(bad)], False, io.StringIO(), err, converter()) == 1
    assert "MappingError: ADT_A01: the message has no PID segment" in err.getvalue()
    assert main(["convert", str(tmp_path / "missing.hl7")]) == 2
