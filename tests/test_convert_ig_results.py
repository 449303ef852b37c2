"""IG result maps added for issue 14 (item 8, results): OBR[Specimen] (the specimen of v2.3/2.4
feeds, OBR-15), a child order's link to its parent (OBR-29, OBR-26), and the OBX, SPM, ORC and OBR
fields the IG maps that were not read (sub-id, producer, equipment, medical director, ...)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.convert.functions.ids import resource_id
from gateway.convert.runtime.engine import Converter, default_mappings_dir
from gateway.errors import ConfigError
from tests.support.convert import converter, message, only, referenced, resources, sample_message, segment

MSH_23 = "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240301093000+0100||ORU^R01|M1|P|2.3"
MSH_251 = "MSH|^~\\&|MICRO|CITYLAB|EHR|GENHOSP|20240305101500+0100||ORU^R01^ORU_R01|M2|P|2.5.1"
MSH_27 = MSH_251.replace("2.5.1", "2.7")
PID = "PID|1||12345^^^HOSP^MR||Doe^Jane||19800101|F"
PV1 = "PV1|1|O|||||||||||||||||V100^^^HOSP^VN"
OBR_23 = segment(
    "OBR",
    {
        1: "1",
        2: "P100^EHR",
        3: "F200^LAB",
        4: "CUL^Urine culture^L",
        7: "20240301080000+0100",
        9: "15^mL",
        10: "0777^Keyes^Ann",
        13: "F",
        14: "20240301083000+0100",
        15: "UR&Urine&HL70070^BOR^clean catch^BLDV&Vein&HL70163",
        22: "20240301090000+0100",
        24: "MB",
        25: "F",
        39: "Collected by the patient",
    },
)
OBX_23 = "OBX|1|ST|CUL^Culture^L||E. coli||||||F"

# A urine culture (the isolate in OBX 1, sub-id 1) and its susceptibility panel: a child order
# whose OBR-26 names the isolate and whose OBR-29 names the culture's placer and filler numbers.
CULTURE = [
    "ORC|RE|ORD448^EHR|MB-118^MICRO||CM",
    "OBR|1|ORD448^EHR|MB-118^MICRO|630-4^Bacteria identified in Urine by Culture^LN|||20240303071500+0100"
    "||||||||||||||20240305100000+0100||MB|F",
    "OBX|1|CWE|630-4^Bacteria identified in Urine by Culture^LN|1|112283007^Escherichia coli^SCT||||||F",
    "OBX|2|CWE|630-4^Bacteria identified in Urine by Culture^LN|2|3092008^Staphylococcus aureus^SCT||||||F",
]
SUSCEPTIBILITY = [
    "ORC|RE|ORD448^EHR|MB-118-S1^MICRO||CM",
    segment(
        "OBR",
        {
            1: "2",
            2: "ORD448^EHR",
            3: "MB-118-S1^MICRO",
            4: "29576-6^Bacterial susceptibility panel^LN",
            25: "F",
            26: "630-4&Bacteria identified in Urine by Culture&LN^1^Escherichia coli",
            29: "ORD448&EHR^MB-118&MICRO",
        },
    ),
    "OBX|1|SN|18864-9^Ampicillin [Susceptibility]^LN|1|<=^2|ug/mL||S|||F",
    "OBX|2|SN|18906-8^Ciprofloxacin [Susceptibility]^LN|1|>^4|ug/mL||R|||F",
]


def by_code(bundle: dict[str, Any], resource_type: str, code: str) -> dict[str, Any]:
    (found,) = [r for r in resources(bundle, resource_type) if r["code"]["coding"][0]["code"] == code]
    return found


def ref(resource: dict[str, Any]) -> dict[str, str]:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


# --- OBR[Specimen] --------------------------------------------------------------------------------


def test_a_v23_order_names_its_specimen_in_obr_15() -> None:
    bundle = converter().convert(message(MSH_23, PID, PV1, OBR_23, OBX_23))
    specimen = only(bundle, "Specimen")
    assert [c["code"] for c in specimen["type"]["coding"]] == ["UR", "UR"]  # table 0487 first, then as sent
    assert specimen["type"]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0487"
    (container,) = specimen["container"]
    assert container["additiveCodeableConcept"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0371",
        "code": "BOR",
        "display": "Borate Boric Acid",
    }
    assert [n["text"] for n in specimen["note"]] == ["clean catch", "Collected by the patient"]
    collection = specimen["collection"]
    assert collection["bodySite"]["coding"][0]["code"] == "BLDV"
    assert collection["collectedDateTime"] == "2024-03-01T08:00:00+01:00"
    assert collection["quantity"] == {"value": 15, "unit": "mL"}
    assert referenced(bundle, collection["collector"])["name"][0]["family"] == "Keyes"
    assert collection["fastingStatusCodeableConcept"]["coding"][0]["code"] == "F"
    assert specimen["receivedTime"] == "2024-03-01T08:30:00+01:00"
    # The order, the report and the result refer to it; it names its order and patient.
    order, report = only(bundle, "ServiceRequest"), only(bundle, "DiagnosticReport")
    assert order["specimen"] == [ref(specimen)] and report["specimen"] == [ref(specimen)]
    assert only(bundle, "Observation")["specimen"] == ref(specimen)
    assert specimen["request"] == [ref(order)] and specimen["subject"] == ref(only(bundle, "Patient"))
    # One Specimen per order, keyed on the order's own id (which OBR-15 text does not move).
    assert specimen["id"] == resource_id("Specimen", f"obr|{order['id']}")
    other_text = converter().convert(message(MSH_23, PID, PV1, OBR_23.replace("clean catch", "midstream"), OBX_23))
    assert only(other_text, "Specimen")["id"] == specimen["id"]


def test_the_collection_period_and_a_text_that_is_no_fasting_status() -> None:
    obr = OBR_23.replace("|20240301080000+0100|", "|20240301080000+0100|20240301081500+0100|", 1)
    obr = obr.replace("|F|20240301083000", "|on antibiotics|20240301083000")
    collection = only(converter().convert(message(MSH_23, PID, obr, OBX_23)), "Specimen")["collection"]
    assert collection["collectedPeriod"] == {"start": "2024-03-01T08:00:00+01:00", "end": "2024-03-01T08:15:00+01:00"}
    assert "fastingStatusCodeableConcept" not in collection and "collectedDateTime" not in collection


def test_no_obr_specimen_without_obr_15_or_beside_an_spm() -> None:
    without = OBR_23.replace("UR&Urine&HL70070^BOR^clean catch^BLDV&Vein&HL70163", "")
    assert resources(converter().convert(message(MSH_23, PID, without, OBX_23)), "Specimen") == []
    # A sender with SPM segments: the SPM's Specimen only, not a second one from OBR-15.
    msh = MSH_23.replace("ORU^R01|M1|P|2.3", "ORU^R01^ORU_R01|M1|P|2.5.1")
    spm = "SPM|1|SP1&LAB||UR^Urine^HL70487"
    bundle = converter().convert(message(msh, PID, OBR_23, OBX_23, spm))
    (specimen,) = resources(bundle, "Specimen")
    assert specimen["identifier"][0]["value"] == "SP1"
    assert only(bundle, "DiagnosticReport")["specimen"] == [ref(specimen)]


# --- OBR-29 / OBR-26: a child order and its parent ------------------------------------------------


def test_a_susceptibility_panel_is_based_on_its_culture_and_derives_from_the_isolate() -> None:
    bundle = converter().convert(message(MSH_251, PID, *CULTURE, *SUSCEPTIBILITY))
    culture, panel = by_code(bundle, "ServiceRequest", "630-4"), by_code(bundle, "ServiceRequest", "29576-6")
    logical = {
        "identifier": {
            "value": "MB-118",
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "FILL",
                        "display": "Filler Identifier",
                    }
                ]
            },
        },
        "type": "ServiceRequest",
    }
    assert panel["basedOn"] == [logical, ref(culture)]
    assert "basedOn" not in culture
    values = {
        o["id"]: o.get("valueCodeableConcept", {}).get("coding", [{}])[0].get("code")
        for o in resources(bundle, "Observation")
    }
    e_coli = next(o for o in resources(bundle, "Observation") if values[o["id"]] == "112283007")
    for code in ("18864-9", "18906-8"):
        assert by_code(bundle, "Observation", code)["derivedFrom"] == [ref(e_coli)]
    assert all(
        "derivedFrom" not in o for o in resources(bundle, "Observation") if o["code"]["coding"][0]["code"] == "630-4"
    )


def test_the_parent_is_found_by_the_key_its_own_order_gives() -> None:
    # The child names only the parent's placer number, and the parent has no filler number: the
    # parent is keyed on its placer number (id: order), and so is the reference.
    culture = [CULTURE[0].replace("MB-118^MICRO", ""), CULTURE[1].replace("MB-118^MICRO", ""), CULTURE[2]]
    child = [SUSCEPTIBILITY[0], SUSCEPTIBILITY[1].replace("ORD448&EHR^MB-118&MICRO", "ORD448&EHR"), *SUSCEPTIBILITY[2:]]
    bundle = converter().convert(message(MSH_251, PID, *culture, *child))
    culture_order = by_code(bundle, "ServiceRequest", "630-4")
    assert culture_order["id"] == resource_id("ServiceRequest", "placer|EHR|ORD448")
    panel = by_code(bundle, "ServiceRequest", "29576-6")
    assert panel["basedOn"][0]["identifier"]["value"] == "ORD448"
    assert panel["basedOn"][1] == ref(culture_order)


def test_a_parent_sent_earlier_is_named_by_its_identifier_only() -> None:
    bundle = converter().convert(message(MSH_251, PID, *SUSCEPTIBILITY))
    (based_on,) = only(bundle, "ServiceRequest")["basedOn"]
    assert based_on["identifier"]["value"] == "MB-118" and based_on["type"] == "ServiceRequest"
    assert all("derivedFrom" not in o for o in resources(bundle, "Observation"))


# --- OBX: sub-id, producer, equipment, medical director -------------------------------------------

OBX_LAB = segment(
    "OBX",
    {
        1: "1",
        2: "NM",
        3: "2345-7^Glucose^LN",
        4: "2",
        5: "5.4",
        6: "mmol/L",
        11: "F",
        15: "05D0642827^CITYLAB^CLIA",
        18: "ANALYZER-7^CITYLAB~ANALYZER-8^CITYLAB",
        23: "City Laboratory^L^^^^CLIA&2.16.840.1.113883.4.7&ISO^XX^^^05D0642827",
        24: "1200 Harbor Blvd^^Springfield^IL^62701",
        25: "9911^Nakamura^Ken^^^Dr",
    },
)
OBR_LAB = "OBR|1|P1^EHR|F1^LAB|GLU^Glucose^L|||20240305080000+0100||||||||||||||||||F"


def test_an_observation_keeps_its_sub_id_producer_device_and_medical_director() -> None:
    second = OBX_LAB.replace("OBX|1|NM|2345-7^Glucose^LN|2", "OBX|2|NM|2951-2^Sodium^LN|1")
    bundle = converter().convert(message(MSH_251, PID, OBR_LAB, OBX_LAB, second))
    glucose = by_code(bundle, "Observation", "2345-7")
    (sub_id,) = glucose["extension"]
    assert sub_id == {
        "url": "http://hl7.org/fhir/StructureDefinition/observation-v2-subid",
        "extension": [{"url": "original-sub-identifier", "valueString": "2"}],
    }
    performers = [referenced(bundle, p) for p in glucose["performer"]]
    organizations = [p for p in performers if p["resourceType"] == "Organization"]
    assert sorted(o["name"] for o in organizations) == ["CITYLAB", "City Laboratory"]
    producer = next(o for o in organizations if o["name"] == "CITYLAB")
    assert producer["identifier"] == [{"value": "05D0642827"}]
    (director,) = [p for p in performers if p["resourceType"] == "PractitionerRole"]
    assert director["code"][0]["coding"][0]["code"] == "MDIR"
    assert referenced(bundle, director["practitioner"])["name"][0]["family"] == "Nakamura"
    assert referenced(bundle, director["organization"])["name"] == "City Laboratory"
    # The first equipment instance is the device; the sodium names the same one and director.
    device = referenced(bundle, glucose["device"])
    assert device["identifier"] == [{"value": "ANALYZER-7"}]
    sodium = by_code(bundle, "Observation", "2951-2")
    assert sodium["device"] == glucose["device"]
    analyzers = [d for d in resources(bundle, "Device") if d.get("identifier") == [{"value": "ANALYZER-7"}]]
    assert len(resources(bundle, "PractitionerRole")) == 1 and len(analyzers) == 1  # (and MSH-5's Device)
    assert ref(director) in sodium["performer"]


def test_a_v28_sub_id_keeps_its_group_and_sequence() -> None:
    msh = MSH_251.replace("2.5.1", "2.8")
    obx = OBX_LAB.replace("^LN|2|", "^LN|1.2^1^2^ISO-1|", 1)
    (sub_id,) = only(converter().convert(message(msh, PID, OBR_LAB, obx)), "Observation")["extension"]
    assert sub_id["extension"] == [
        {"url": "original-sub-identifier", "valueString": "1.2"},
        {"url": "group", "valueDecimal": 1},
        {"url": "sequence", "valueDecimal": 2},
        {"url": "identifier", "valueString": "ISO-1"},
    ]


def test_no_medical_director_no_role() -> None:
    obx = OBX_LAB.replace("|9911^Nakamura^Ken^^^Dr", "")
    bundle = converter().convert(message(MSH_251, PID, OBR_LAB, obx))
    assert resources(bundle, "PractitionerRole") == []
    assert [p["reference"].split("/")[0] for p in only(bundle, "Observation")["performer"]] == [
        "Organization",
        "Organization",
    ]


# --- SPM, ORC and OBR rows of the report ----------------------------------------------------------


def test_a_specimen_names_its_parent_additive_availability_and_shipment() -> None:
    spm = segment(
        "SPM",
        {
            1: "1",
            2: "SP-889&MICRO",
            3: "SP-880&MICRO",
            4: "UR^Urine^HL70487",
            6: "BOR^Borate Boric Acid^HL70371",
            20: "N",
            27: "TUBE^Tube^L",
            32: "SHIP-31&MICRO",
        },
    )
    specimen = only(converter().convert(message(MSH_251, PID, OBR_LAB, OBX_LAB, spm)), "Specimen")
    assert specimen["parent"] == [{"identifier": {"value": "SP-880"}, "type": "Specimen"}]
    (container,) = specimen["container"]
    assert container["type"]["coding"][0]["code"] == "TUBE"
    assert container["additiveCodeableConcept"]["coding"][0]["code"] == "BOR"
    assert specimen["status"] == "unavailable"
    assert {"value": "SHIP-31", "type": {"text": "Shipment ID"}} in specimen["identifier"]


def test_the_report_keeps_the_placer_group_status_reason_confidentiality_and_performers() -> None:
    orc = segment("ORC", {1: "RE", 2: "P1^EHR", 3: "F1^LAB", 4: "GRP77^EHR", 16: "RR^Rerun^L", 28: "R"})
    obr = segment(
        "OBR",
        {1: "1", 2: "P1^EHR", 3: "F1^LAB", 4: "GLU^Glucose^L", 25: "F", 34: "7781&Brandt&Lena", 35: "5520&Ochoa&Luis"},
    )
    bundle = converter().convert(message(MSH_27, PID, orc, obr, OBX_LAB))
    report = only(bundle, "DiagnosticReport")
    group = next(i for i in report["identifier"] if i["type"]["coding"][0]["code"] == "PGN")
    assert group["value"] == "GRP77"
    (reason,) = report["extension"]
    assert reason["url"] == "http://hl7.org/fhir/StructureDefinition/event-statusReason"
    assert reason["valueCodeableConcept"]["coding"][0]["code"] == "RR"
    assert report["meta"]["security"][0]["code"] == "R"
    functions = [
        (referenced(bundle, p)["name"][0]["family"], p["extension"][0]["valueCodeableConcept"]["coding"][0]["code"])
        for p in report["performer"]
    ]
    assert functions == [("Brandt", "SPRF"), ("Ochoa", "TRANS")]


def test_the_microbiology_sample_links_the_panel_to_the_culture() -> None:
    bundle = converter().convert(sample_message("ORU_R01/hl7gw-microbiology.hl7"))
    culture = by_code(bundle, "ServiceRequest", "630-4")
    assert ref(culture) in by_code(bundle, "ServiceRequest", "29576-6")["basedOn"]
    isolate = by_code(bundle, "Observation", "630-4")
    assert by_code(bundle, "Observation", "18993-6")["derivedFrom"] == [ref(isolate)]


def test_the_performing_organization_gets_its_address_without_changing_its_id() -> None:
    bundle = converter().convert(message(MSH_251, PID, OBR_LAB, OBX_LAB))
    observation = only(bundle, "Observation")
    performing = next(
        referenced(bundle, p)
        for p in observation["performer"]
        if referenced(bundle, p).get("name") == "City Laboratory"
    )
    (address,) = performing["address"]
    assert address["line"] == ["1200 Harbor Blvd"] and address["city"] == "Springfield"
    (director,) = resources(bundle, "PractitionerRole")
    assert director["organization"] == ref(performing)  # the same Organization, once
    # An organization known only by its name is keyed on what OBX-23 says, before the address.
    named = OBX_LAB.replace("City Laboratory^L^^^^CLIA&2.16.840.1.113883.4.7&ISO^XX^^^05D0642827", "Small Lab")
    with_address = converter().convert(message(MSH_251, PID, OBR_LAB, named))
    without = converter().convert(
        message(MSH_251, PID, OBR_LAB, named.replace("1200 Harbor Blvd^^Springfield^IL^62701", ""))
    )
    small = [o for o in resources(with_address, "Organization") if o.get("name") == "Small Lab"]
    assert [o["id"] for o in small] == [
        o["id"] for o in resources(without, "Organization") if o.get("name") == "Small Lab"
    ]
    assert small[0]["address"][0]["city"] == "Springfield"


# --- what the loader refuses ---------------------------------------------------------------------

OBX_23_RULE = """  - from: OBX-23
    to: "performer[]"
    datatype: "XON[Organization]"
    made:
      - {from: OBX-24, to: "address[]", datatype: "XAD[Address]"}"""


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (
            'XON[Organization]"\n    made:',
            'XON[string]"\n    made:',
            "`made` belongs to a segment map rule whose datatype map makes a resource",
        ),
        ('to: "address[]", datatype: "XAD[Address]"', 'to: "gender", datatype: "XAD[Address]"', "Organization has no"),
    ],
)
def test_made_rules_complete_only_a_made_resource(tmp_path: Path, old: str, new: str, reason: str) -> None:
    root = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), root)
    path = root / "segments/OBX_Observation.yaml"
    text = path.read_text()
    assert text.count(OBX_23_RULE) == 1
    path.write_text(text.replace(OBX_23_RULE, OBX_23_RULE.replace(old, new)))
    with pytest.raises(ConfigError, match=reason):
        Converter.load(root)


def test_a_reference_by_key_names_both_functions(tmp_path: Path) -> None:
    root = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), root)
    path = root / "messages/_results.yaml"
    text = path.read_text()
    path.write_text(text.replace("key: parent_order, match: order}", "key: parent_order}"))
    with pytest.raises(ConfigError, match="names both `key` and `match`"):
        Converter.load(root)


def test_a_v28_observation_type_is_a_category() -> None:
    msh = MSH_251.replace("2.5.1", "2.8")
    obx = OBX_LAB + "||||RSLT"
    categories = only(converter().convert(message(msh, PID, OBR_LAB, obx)), "Observation")["category"]
    assert {"system": "http://terminology.hl7.org/CodeSystem/v2-0936", "code": "RSLT", "display": "Result"} in [
        c["coding"][0] for c in categories
    ]


def test_a_note_keeps_its_comment_type() -> None:
    nte = "NTE|1|L|Confirm resistance by disk diffusion.|RE^Remark^HL70364"
    (note,) = only(converter().convert(message(MSH_251, PID, OBR_LAB, OBX_LAB, nte)), "Observation")["note"]
    assert note["extension"] == [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/annotationType",
            "valueCodeableConcept": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0364", "code": "RE", "display": "Remark"}
                ]
            },
        }
    ]


def test_an_order_keeps_its_callback_phone_number() -> None:
    obr = segment("OBR", {1: "1", 2: "P1^EHR", 3: "F1^LAB", 4: "GLU^Glucose^L", 17: "^WPN^PH^^1^217^5550100", 25: "F"})
    (callback,) = only(converter().convert(message(MSH_251, PID, obr, OBX_LAB)), "ServiceRequest")["extension"]
    assert callback["url"] == "http://hl7.org/fhir/StructureDefinition/servicerequest-order-callback-phone-number"
    assert callback["valueContactPoint"]["system"] == "phone" and "5550100" in callback["valueContactPoint"]["value"]
