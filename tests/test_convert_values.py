"""Values that do not parse are kept, not dropped: comparators become Quantity.comparator, anything
else an OBX-5 type cannot read stays as valueString, and every such value is noted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.convert.runtime.engine import Converter, default_mappings_dir
from gateway.errors import MappingError
from gateway.validate import validate_bundle
from tests.support.convert import MSH_ADT, PID, PV1, converter, message, message_provenance, only, resources

ORU = MSH_ADT.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
OBR = "OBR|1|P1|F1|GLU^Glucose^L"


def _observation(kind: str, value: str, units: str = "mmol/L") -> tuple[dict, list[str]]:
    obx = f"OBX|1|{kind}|GLU^Glucose^L||{value}|{units}|||||F"
    conversion = converter().convert_with_report(message(ORU, PID, OBR, obx))
    validate_bundle(conversion.bundle)
    return only(conversion.bundle, "Observation"), conversion.notes


@pytest.mark.parametrize(
    ("value", "quantity"),
    [(">60", {"value": 60, "comparator": ">"}), ("<=0.5", {"value": 0.5, "comparator": "<="}), ("7", {"value": 7})],
)
def test_numbers_with_a_comparator_are_quantities(value: str, quantity: dict) -> None:
    observation, notes = _observation("NM", value)
    assert observation["valueQuantity"] == {**quantity, "unit": "mmol/L"}
    assert notes == []


@pytest.mark.parametrize(("kind", "value"), [("NM", "1,5"), ("NM", "see note"), ("DTM", "20241341"), ("NR", "a^b")])
def test_a_value_its_type_cannot_read_is_kept_as_text_and_noted(kind: str, value: str) -> None:
    observation, notes = _observation(kind, value)
    assert observation["valueString"] == value.split("^")[0]
    assert f"OBX-5 is not a valid {kind}; kept as text" in notes


def test_repeated_values_that_do_not_parse_stay_in_their_components() -> None:
    obx = "OBX|1|NM|8867-4^Heart rate^LN||60~n/a|/min|||||F"
    conversion = converter().convert_with_report(message(ORU, PID, OBR, obx))
    components = only(conversion.bundle, "Observation")["component"]
    assert [c.get("valueQuantity", {}).get("value") or c.get("valueString") for c in components] == [60, "n/a"]
    assert "OBX-5 is not a valid NM; kept as text" in conversion.notes


def test_an_invalid_birth_date_is_noted() -> None:
    conversion = converter().convert_with_report(message(MSH_ADT, PID.replace("19800101", "19801332"), PV1))
    assert "birthDate" not in only(conversion.bundle, "Patient")
    assert "PID-7 is not a date; left out" in conversion.notes


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789.,<>=+- eE", min_size=1, max_size=12).filter(lambda t: t.strip() == t))
def test_an_nm_value_is_a_quantity_or_its_text_never_nothing(value: str) -> None:
    observation, notes = _observation("NM", value, units="")
    if "valueQuantity" in observation:
        assert "value" in observation["valueQuantity"] and notes == []
    else:
        assert observation["valueString"] == value and notes == ["OBX-5 is not a valid NM; kept as text"]


def test_one_bad_result_is_left_out_the_rest_is_converted() -> None:
    good = "OBX|1|NM|GLU^Glucose^L||5.5|mmol/L|||||F"
    no_code = "OBX|2|NM|||6.1|mmol/L|||||F"
    conversion = converter().convert_with_report(message(ORU, PID, OBR, good, no_code))
    validate_bundle(conversion.bundle)  # every reference resolves: nothing points at the left-out one
    observation = only(conversion.bundle, "Observation")
    assert observation["valueQuantity"]["value"] == 5.5
    report = only(conversion.bundle, "DiagnosticReport")
    assert report["result"] == [{"reference": f"Observation/{observation['id']}"}]
    assert any(n.startswith("OBX#5 left out (Observation observation): OBX-3 is empty") for n in conversion.notes)


def test_a_resource_the_message_requires_still_refuses_it() -> None:
    with pytest.raises(MappingError, match="no business identifier"):
        converter().convert(message(MSH_ADT, "PID|1||||Doe^Jane", PV1))


def test_nothing_refers_to_a_left_out_resource_through_a_duplicate(tmp_path: Path) -> None:
    """With on_duplicate keep_first, a second NK1 of the same person *is* the first: when the
    first is left out, the second is not referred to either (the Provenance names neither)."""
    root = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), root)
    patient_map = root / "messages/_patient.yaml"
    patient_map.write_text(
        patient_map.read_text().replace(
            '    map: "NK1[RelatedPerson]"\n', '    map: "NK1[RelatedPerson]"\n    on_duplicate: keep_first\n'
        )
    )
    nk1_map = root / "segments/NK1_RelatedPerson.yaml"
    rule = '{from: NK1-7, to: "relationship[]", datatype: "CWE[CodeableConcept]", table: ContactRole}'
    nk1_map.write_text(nk1_map.read_text().replace(rule, rule[:-1] + ", required: true}"))
    first = "NK1|1|Roe^Rita|SPO|||||||||K77^^^HOSP^MR"
    second = "NK1|2|Roe^Rita|SPO||||EC^Emergency Contact^HL70131|||||K77^^^HOSP^MR"
    conversion = Converter.load(root).convert_with_report(message(MSH_ADT, PID, first, second, PV1))
    validate_bundle(conversion.bundle)
    assert resources(conversion.bundle, "RelatedPerson") == []
    targets = [t["reference"] for t in message_provenance(conversion.bundle)["target"]]
    assert not any(t.startswith("RelatedPerson/") for t in targets)
    assert any(n.startswith("NK1#3 left out (RelatedPerson related_person)") for n in conversion.notes)
