"""Observation and DiagnosticReport categories (issue 14, item 7): vital signs by LOINC code, results
by the order's diagnostic service section, laboratory for a result that names none (US Core)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.hl7.charset import decode_message
from gateway.hl7.message import parse
from tests.conftest import SAMPLES
from tests.support.convert import MSH_ADT, PID, PV1, converter, message, only, resources

ORU = MSH_ADT.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
GLUCOSE = "OBX|1|NM|GLU^Glucose^L||5|mmol/L|||||F"
HEART_RATE = "OBX|2|NM|8867-4^Heart rate^LN||60|/min|||||F"


def _categories(resource: dict) -> list[str]:
    return [coding["code"] for concept in resource.get("category", []) for coding in concept["coding"]]


@pytest.mark.parametrize(("section", "expected"), [("", "laboratory"), ("CH", "laboratory"), ("RAD", "imaging")])
def test_a_result_is_categorised_by_its_section(section: str, expected: str) -> None:
    obr = f"OBR|1|P1|F1|GLU^Glucose^L||||||||||||||||||||{section}"
    bundle = converter().convert(message(ORU, PID, obr, GLUCOSE, HEART_RATE))
    glucose, heart_rate = resources(bundle, "Observation")
    assert (_categories(glucose), _categories(heart_rate)) == ([expected], ["vital-signs"])
    report = only(bundle, "DiagnosticReport")
    assert _categories(report) == [section or "LAB"]


def test_vital_signs_outside_results_and_other_observations() -> None:
    bundle = converter().convert(
        message(MSH_ADT, PID, PV1, "OBX|1|NM|8302-2^Height^LN||180|cm|||||F", "OBX|2|ST|X^Note^L||hi")
    )
    height, note = resources(bundle, "Observation")
    assert (_categories(height), _categories(note)) == (["vital-signs"], [])


@pytest.mark.parametrize(
    "path",
    sorted(p for p in SAMPLES.glob("[A-Z][A-Z][A-Z]_*/*.hl7") if p.parent.name.startswith(("ORU", "OUL"))),
    ids=lambda p: p.name,
)
def test_every_result_in_the_samples_has_a_category(path: Path) -> None:
    """US Core: laboratory results and their reports carry a category."""
    bundle = converter().convert(parse(decode_message(path.read_bytes())))
    for resource in resources(bundle, "Observation") + resources(bundle, "DiagnosticReport"):
        assert _categories(resource), f"{resource['resourceType']}/{resource['id']} has no category"


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("[A-Z][A-Z][A-Z]_*/*.hl7")), ids=lambda p: p.name)
def test_every_observation_has_a_value_or_says_why_not(path: Path) -> None:
    """US Core (and FHIR obs-6): a value, components, the data it derives from, or a
    dataAbsentReason, and a dataAbsentReason only without a value."""
    bundle = converter().convert(parse(decode_message(path.read_bytes())))
    for observation in resources(bundle, "Observation"):
        valued = any(key.startswith("value") for key in observation)
        assert valued or {"component", "derivedFrom", "dataAbsentReason"} & observation.keys(), observation["id"]
        assert not (valued and "dataAbsentReason" in observation), observation["id"]


def test_an_empty_result_value_says_it_is_unknown() -> None:
    obr = "OBR|1|P1|F1|GLU^Glucose^L"
    bundle = converter().convert(message(ORU, PID, obr, "OBX|1|NM|GLU^Glucose^L|||mmol/L|||||P"))
    reason = only(bundle, "Observation")["dataAbsentReason"]["coding"][0]
    assert (reason["system"], reason["code"]) == ("http://terminology.hl7.org/CodeSystem/data-absent-reason", "unknown")
