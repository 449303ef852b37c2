"""Maps written once and used where they apply: segment-to-datatype maps (NTE[Annotation],
RXR[Dosage]) placed by the include's `to`, datatype map variants (EI[Identifier-Placer]), and a
resource's `defaults:` instead of a *_Defaults segment map."""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

import pytest
import yaml

from gateway.convert.runtime.engine import Converter, default_mappings_dir
from gateway.errors import ConfigError
from gateway.hl7.charset import decode_message
from gateway.hl7.message import parse
from tests.conftest import sample
from tests.support.convert import MSH_ADT, PID, PV1, converter, message, only

PLACER = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC", "display": "Placer Identifier"}
FILLER = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "FILL", "display": "Filler Identifier"}
DR_NOTE = "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note"


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    copy = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), copy)
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not unique in {path}"
    path.write_text(text.replace(old, new))


def _rds(dispense_rxr: str) -> dict:
    """RDS^O13 sample with the dispense's RXR (the last one) replaced."""
    text = decode_message(sample("RDS_O13/RDS-O13-01.hl7"))
    head, _, tail = text.rpartition("RXR|PO^oral^HL70162")
    return converter().convert(parse(head + dispense_rxr + tail))


def test_dispense_and_order_read_the_same_rxr_map() -> None:
    # The RXR copies had drifted: the dispense lost RXR-4. One RXR[Dosage] now serves both.
    bundle = _rds("RXR|PO^oral^HL70162|||CH^Chew^HL70165")
    dispense = only(bundle, "MedicationDispense")
    dosage = dispense["dosageInstruction"][0]
    assert dosage["route"]["coding"][0]["code"] == "PO"
    assert dosage["method"]["coding"][0] == {"system": "http://snomed.info/sct", "code": "419747000", "display": "Chew"}
    order_rxr = "RXR|IV^Intravenous|||CH^Chew^HL70165"
    text = decode_message(sample("RDS_O13/RDS-O13-01.hl7")).replace("RXR|PO^oral^HL70162", order_rxr, 1)
    order = only(converter().convert(parse(text)), "MedicationRequest")
    assert order["dosageInstruction"][0]["method"] == dosage["method"]


def test_every_note_is_one_annotation_map() -> None:
    orc = "ORC|NW|P1^PLC|F1^FIL||CM"
    obr = "OBR|1|P1^PLC|F1^FIL|GLU^Glucose^L|||202401011200+0100"
    obx = "OBX|1|NM|GLU^Glucose^L||5.5|mmol/L|||||F"
    note = "NTE|1||a comment~second line||1234^Doe^John|202401021300+0100"
    msh = MSH_ADT.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
    bundle = converter().convert(message(msh, PID, PV1, orc, obr, note, obx, note))
    author = f"Practitioner/{only(bundle, 'Practitioner')['id']}"
    expected = {
        "text": "a comment\nsecond line",
        "authorReference": {"reference": author},
        "time": "2024-01-02T13:00:00+01:00",
    }
    assert only(bundle, "Observation")["note"] == [expected]
    report = only(bundle, "DiagnosticReport")
    assert [e["valueAnnotation"] for e in report["extension"] if e["url"] == DR_NOTE] == [expected]


def test_order_identifiers_come_from_the_ei_variants() -> None:
    msh = MSH_ADT.replace("ADT^A01^ADT_A01", "ORM^O01^ORM_O01")
    bundle = converter().convert(message(msh, PID, PV1, "ORC|SC|P77^PLC|F88^FIL"))
    order = only(bundle, "ServiceRequest")
    assert {"value": "P77", "type": {"coding": [PLACER]}} in order["identifier"]
    assert {"value": "F88", "type": {"coding": [FILLER]}} in order["identifier"]


@pytest.mark.parametrize(("orc5", "status"), [("", "unknown"), ("CM", "completed")])
def test_resource_defaults_fill_only_what_the_message_left_empty(orc5: str, status: str) -> None:
    msh = MSH_ADT.replace("ADT^A01^ADT_A01", "ORM^O01^ORM_O01")
    bundle = converter().convert(message(msh, PID, PV1, f"ORC|SC|P77^PLC||{orc5 and 'G1'}|{orc5}"))
    order = only(bundle, "ServiceRequest")
    assert (order["status"], order["intent"]) == (status, "order")


def test_no_segment_map_is_a_copy_of_another() -> None:
    """Two maps with the same rules (the five NTE maps were) are one map used twice; and the
    identifier types of order numbers live in the EI variants, not in copies of a rule."""
    root = default_mappings_dir() / "segments"
    rules = {path.name: yaml.safe_load(path.read_text())["rules"] for path in sorted(root.glob("*.yaml"))}
    for (a, ra), (b, rb) in itertools.combinations(rules.items(), 2):
        assert ra != rb, f"{a} and {b} have the same rules: use one map"
    for name, rule in ((name, rule) for name, listed in rules.items() for rule in listed):
        typed = rule.get("datatype") == "EI[Identifier]" and "type" in rule.get("set", {})
        assert not typed, f"{name}: {rule['from']} is an EI variant (EI[Identifier-Placer], ...)"


@pytest.mark.parametrize(
    ("path", "old", "new", "reason"),
    [
        (
            "messages/PPR_PC1.yaml",
            '{segment: NTE, map: "NTE[Annotation]", to: "note[]"}',
            '{segment: NTE, map: "NTE[Annotation]"}',
            r"NTE\[Annotation\] makes a Annotation: say where it goes",
        ),
        (
            "messages/PPR_PC1.yaml",
            'to: "note[]"',
            'to: "identifier[]"',
            "Annotation",
        ),
        (
            "messages/PPR_PC1.yaml",
            'to: "note[]"',
            'to: "notes[]"',
            "no element 'notes'",
        ),
        (
            "messages/_orders.yaml",
            '{segment: TQ1, map: "TQ1[ServiceRequest]", scope: order}',
            '{segment: TQ1, map: "TQ1[ServiceRequest]", scope: order, to: "note[]"}',
            "fills the resource itself",
        ),
        (
            "messages/RDS_O13.yaml",
            '    map: "RXD[MedicationDispense]"',
            '    segment: RXR\n    map: "RXR[Dosage]"',
            "makes a Dosage, not a resource",
        ),
        (
            "messages/ORM_O01.yaml",
            "defaults: {intent: original-order, status: unknown}",
            "defaults: {intent: original-order, state: unknown}",
            "no element 'state'",
        ),
        (
            "messages/ORM_O01.yaml",
            "defaults: {intent: original-order, status: unknown}",
            'defaults: {intent: original-order, "note[]": {text: x}}',
            "names one element",
        ),
        (
            "datatypes/EI.yaml",
            "PlacerGroup:\n    map: Identifier\n    set:",
            "PlacerGroup:\n    map: Identifier\n    sets:",
            "unknown key",
        ),
        (
            "datatypes/EI.yaml",
            "  Identifier-PlacerGroup:\n    map: Identifier\n",
            "  Identifier-PlacerGroup:\n    map: Coding\n",
            r"unknown datatype map 'EI\[Coding\]'",
        ),
        ("segments/RXR_Dosage.yaml", "datatype: Dosage\n", "datatype: Dosage\nresource: MedicationRequest\n", "either"),
        ("segments/RXR_Dosage.yaml", "datatype: Dosage\n", "datatype: Patient\n", "not a FHIR datatype"),
        ("segments/RXR_Dosage.yaml", "to: method,", "to: methods,", "no element 'methods'"),
    ],
)
def test_bad_shared_maps_are_refused_at_load(mappings: Path, path: str, old: str, new: str, reason: str) -> None:
    _edit(mappings / path, old, new)
    with pytest.raises(ConfigError) as caught:
        Converter.load(mappings)
    assert Path(path).name in str(caught.value) and re.search(reason, str(caught.value)), str(caught.value)


def test_variant_of_a_map_of_another_type_is_refused(mappings: Path) -> None:
    _edit(
        mappings / "datatypes/EI.yaml",
        "  Identifier-PlacerGroup:\n    map: Identifier\n",
        "  Coding-X:\n    map: Identifier\n",
    )
    with pytest.raises(ConfigError, match="adds constants to a map of its own FHIR type"):
        Converter.load(mappings)
