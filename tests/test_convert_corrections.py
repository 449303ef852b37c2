"""Small wrong outputs corrected (issue 14, item 11): each test is the message that showed one."""

from __future__ import annotations

import base64

import pytest

from gateway.validate import validate_bundle
from tests.support.convert import MSH_ADT, PID, PV1, converter, message, only, resources, segment

ORM = MSH_ADT.replace("ADT^A01^ADT_A01", "ORM^O01^ORM_O01")
ORU = MSH_ADT.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")


def test_a_visit_that_is_not_applicable_makes_no_encounter() -> None:
    bundle = converter().convert(message(MSH_ADT, PID, "PV1|1|N"))
    validate_bundle(bundle)
    assert resources(bundle, "Encounter") == []
    assert only(converter().convert(message(MSH_ADT, PID, "PV1|1|O")), "Encounter")["class"]["code"] == "AMB"


@pytest.mark.parametrize(
    ("al1_3", "snomed"),
    [("^NKA", "716186003"), ("NKA^No known allergies^L", "716186003"), ("NKDA^^L", "409137002")],
)
def test_no_known_allergies_is_that_statement_not_an_allergy_to_nka(al1_3: str, snomed: str) -> None:
    bundle = converter().convert(message(MSH_ADT, PID, PV1, f"AL1|1|DA|{al1_3}"))
    code = only(bundle, "AllergyIntolerance")["code"]
    assert code["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": snomed,
        "display": code["coding"][0]["display"],
    }


def test_an_allergen_keeps_its_code() -> None:
    bundle = converter().convert(message(MSH_ADT, PID, PV1, "AL1|1|DA|1605^Penicillin^L"))
    assert only(bundle, "AllergyIntolerance")["code"] == {"coding": [{"code": "1605", "display": "Penicillin"}]}


def test_the_ordering_facility_requests_and_the_control_reason_is_a_status_reason() -> None:
    fields = {1: "CA", 2: "P77^PLC", 16: "NOREASON^Patient request^L", 21: "Mercy Lab^L^^^^MERCY^XX^^^M1"}
    order = only(converter().convert(message(ORM, PID, PV1, segment("ORC", fields))), "ServiceRequest")
    assert "performer" not in order and "reasonCode" not in order
    assert order["requester"]["reference"].startswith("Organization/")
    status_reason = "http://hl7.org/fhir/StructureDefinition/request-statusReason"
    (reason,) = [e["valueCodeableConcept"] for e in order["extension"] if e["url"] == status_reason]
    assert reason["coding"][0]["code"] == "NOREASON"
    with_provider = segment("ORC", {**fields, 12: "0148^Lee^Dana"})
    requested = only(converter().convert(message(ORM, PID, PV1, with_provider)), "ServiceRequest")
    assert requested["requester"]["reference"].startswith("Practitioner/")


def test_an_invalid_oid_gives_no_identifier_without_a_value() -> None:
    msh = MSH_ADT.replace("|App|Fac|", "|App|Fac^1.2.3.X^ISO|")
    bundle = converter().convert(message(msh, PID, PV1))
    validate_bundle(bundle)
    assert all("value" in i for r in bundle["entry"] for i in r.get("resource", {}).get("identifier", []))
    # The sending facility (MSH-4); the receiving facility RcvFac (MessageHeader) is another.
    (sender,) = [o for o in resources(bundle, "Organization") if o.get("name") == "Fac"]
    assert "identifier" not in sender


def test_tq1_priority_wins_over_the_deprecated_obr5() -> None:
    obr = "OBR|1|P1|F1|GLU^Glucose^L|R"
    bundle = converter().convert(message(ORU, PID, "ORC|RE|P1|F1", obr, "TQ1|1||||||||S"))
    assert only(bundle, "ServiceRequest")["priority"] == "stat"
    without_timing = converter().convert(message(ORU, PID, "ORC|RE|P1|F1", obr))
    assert only(without_timing, "ServiceRequest")["priority"] == "routine"


def test_a_note_sent_as_several_text_lines_is_one_document() -> None:
    mdm = MSH_ADT.replace("ADT^A01^ADT_A01", "MDM^T02^MDM_T02")
    txa = "TXA|1|CN^Consultation note^L|TX|20240101120000+0100||||||||DOC1^HOSP||||||AU"
    lines = [
        "OBX|1|TX|NOTE^Note^L||First line",
        "OBX|2|TX|NOTE^Note^L||Second line~Third line",
        "OBX|3|FT|NOTE^Note^L||End",
    ]
    bundle = converter().convert(message(mdm, "EVN|T02", PID, PV1, txa, *lines))
    validate_bundle(bundle)
    (content,) = only(bundle, "DocumentReference")["content"]
    text = base64.b64decode(content["attachment"]["data"]).decode()
    assert (content["attachment"]["contentType"], text) == ("text/plain", "First line\nSecond line\nThird line\nEnd")
