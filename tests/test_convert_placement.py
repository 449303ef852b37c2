"""Segments out of the standard's order: placed where they fit earlier on, and a segment that fits
nowhere is never dropped silently (the message is refused, or converted with a note)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.settings import load_settings
from gateway.convert.model.structure import group_segments, segment_names
from gateway.convert.runtime.engine import Converter
from gateway.errors import ConfigError, MappingError
from tests.support.convert import MSH_ADT, PID, PV1, converter, message, message_provenance, only, resources

AL1 = "AL1|1|DA|1605^Penicillin^L|SV|Rash"
DG1 = "DG1|1||I10^Hypertension^I10|||F"
OBX = "OBX|1|NM|8302-2^Height^LN||180|cm|||||F"
IN1 = "IN1|1|GOLD^Gold Plan^L|INS1^^^PAYER^NIIP|Payer Inc"
IN2 = "IN2|1|123-45-6789"
GT1 = "GT1|1||Doe^John"
NOTE_URL = "http://hl7.org/fhir/StructureDefinition/note"


def test_an_allergy_after_the_diagnoses_is_kept() -> None:
    bundle = converter().convert(message(MSH_ADT, PID, PV1, DG1, AL1))
    assert only(bundle, "AllergyIntolerance")["code"]["coding"][0]["code"] == "1605"
    assert only(bundle, "Condition")["code"]["coding"][0]["code"] == "I10"


def test_clinical_segments_after_the_insurance_are_kept() -> None:
    bundle = converter().convert(message(MSH_ADT, PID, PV1, GT1, IN1, OBX, AL1, DG1, IN2))
    assert only(bundle, "Observation")["code"]["coding"][0]["code"] == "8302-2"
    assert len(resources(bundle, "AllergyIntolerance")) == len(resources(bundle, "Condition")) == 1
    assert len(resources(bundle, "Coverage")) == 1


def test_the_insurance_group_stays_open_across_a_late_segment() -> None:
    structure = converter().mappings.structures["ADT_A01"]
    msg = message(MSH_ADT, PID, PV1, IN1, OBX, IN2)
    root, unplaced = group_segments(structure, msg.segments)
    assert unplaced == []
    insurance = next(node for _, node in root.walk() if node.name == "INSURANCE")
    assert [s.name for s in insurance.items] == ["IN1", "IN2"]
    assert [s.name for s, node in root.walk() if node is root][-1] == "OBX"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_grouping_places_or_reports_every_segment(data: st.DataObject) -> None:
    """Whatever the order, each segment ends in the tree or in the unplaced list, exactly once."""
    name = data.draw(st.sampled_from(["ADT_A01", "ORU_R01", "ORM_O01", "SIU_S12", "RDE_O11", "VXU_V04"]))
    structure = converter().mappings.structures[name]
    names = sorted(segment_names(structure) - {"MSH"}) + ["ZPI", "QRD", "XYZ"]
    picked = data.draw(st.lists(st.sampled_from(names), max_size=30))
    msg = message(MSH_ADT, *(f"{n}|{i}" for i, n in enumerate(picked, 1)))
    root, unplaced = group_segments(structure, msg.segments)
    placed = [s for s, _ in root.walk()]
    assert sorted(map(id, placed + unplaced)) == sorted(map(id, msg.segments))
    assert all(s.name not in segment_names(structure) and not s.name.startswith("Z") for s in unplaced)


ORU_IN_ADT = (MSH_ADT, PID, PV1, "ORC|RE|P1|F1", "OBR|1|P1|F1|GLU^Glucose^L", OBX)


def test_segments_that_fit_nowhere_refuse_the_message_by_default() -> None:
    with pytest.raises(MappingError, match=r"ORC#4, OBR#5 fit nowhere in the ADT_A01 structure"):
        converter().convert(message(*ORU_IN_ADT))


def test_a_sender_may_have_them_noted_on_the_provenance() -> None:
    noting = Converter.load(sender_unplaced={"App|Fac": "note"})
    conversion = noting.convert_with_report(message(*ORU_IN_ADT))
    text = "Not converted: ORC#4, OBR#5, which fit nowhere in the ADT_A01 structure"
    assert message_provenance(conversion.bundle)["extension"] == [{"url": NOTE_URL, "valueAnnotation": {"text": text}}]
    assert text in conversion.notes
    assert {"ORC#4", "OBR#5"} <= set(conversion.unused_segments)
    other_sender = message(MSH_ADT.replace("|App|Fac|", "|Other|Fac|"), *ORU_IN_ADT[1:])
    with pytest.raises(MappingError, match="fit nowhere"):
        noting.convert(other_sender)


def test_the_policy_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HL7GW_UNPLACED_SEGMENTS", "note")
    monkeypatch.setenv("HL7GW_SENDER_UNPLACED_SEGMENTS", "LAB|MERCY=reject, RIS|MERCY=note")
    conversion = load_settings().conversion
    assert conversion.unplaced_segments == "note"
    assert conversion.sender_unplaced_segments == {"LAB|MERCY": "reject", "RIS|MERCY": "note"}
    assert Converter.configured(conversion).convert(message(*ORU_IN_ADT))
    monkeypatch.setenv("HL7GW_SENDER_UNPLACED_SEGMENTS", "LAB|MERCY=drop")
    with pytest.raises(ConfigError, match="HL7GW_SENDER_UNPLACED_SEGMENTS"):
        load_settings()
    monkeypatch.setenv("HL7GW_UNPLACED_SEGMENTS", "ignore")
    with pytest.raises(ConfigError, match="HL7GW_UNPLACED_SEGMENTS"):
        load_settings()
