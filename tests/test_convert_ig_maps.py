"""IG segment maps added for issue 14 (item 8): PV1[Patient], PV1[Coverage], SCH[Provenance],
PRT[Patient-GeneralPractitioner-Practitioner], and MSH[Encounter] as the PV1 map's status rule."""

from __future__ import annotations

from tests.support.convert import MSH_ADT, PID, converter, message, message_provenance, only, segment

PV1 = segment("PV1", {1: "1", 2: "I", 16: "VIP^Very important^L", 19: "V1^^^H^VN", 20: "SP^20240101"})
IN1 = "IN1|1|GOLD^Gold^L|INS1^^^PAYER^NIIP|Payer Inc"


def test_the_visit_says_the_patient_is_a_vip_and_how_it_is_paid() -> None:
    bundle = converter().convert(message(MSH_ADT, PID, PV1, IN1))
    (importance,) = only(bundle, "Patient")["extension"]
    assert importance["url"] == "http://hl7.org/fhir/StructureDefinition/patient-importance"
    assert importance["valueCodeableConcept"]["coding"][0]["code"] == "VIP"
    assert only(bundle, "Coverage")["type"]["coding"][0]["code"] == "SP"


def test_a_primary_care_provider_prt_is_the_general_practitioner() -> None:
    oru = MSH_ADT.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
    prt = "PRT||AD||PP^Primary Care Provider^HL70912|0148^Lee^Dana"
    obr, obx = "OBR|1|P1|F1|GLU^Glucose^L", "OBX|1|NM|GLU^Glucose^L||5|mmol/L|||||F"
    bundle = converter().convert(message(oru, PID, prt, obr, obx))
    (gp,) = only(bundle, "Patient")["generalPractitioner"]
    practitioner = only(bundle, "Practitioner")
    assert gp == {"reference": f"Practitioner/{practitioner['id']}"} and practitioner["name"][0]["family"] == "Lee"
    other_role = converter().convert(message(oru, PID, prt.replace("PP^Primary", "AT^Attending"), obr, obx))
    assert "generalPractitioner" not in only(other_role, "Patient")


def test_who_entered_an_appointment_is_an_agent_of_the_provenance() -> None:
    siu = MSH_ADT.replace("ADT^A01^ADT_A01", "SIU^S12^SIU_S12")
    sch = segment("SCH", {1: "A1^PLC", 2: "A1F^FIL", 20: "0777^Keyes^Ann"})
    bundle = converter().convert(message(siu, sch, PID))
    enterers = [a for a in message_provenance(bundle)["agent"] if a["type"]["coding"][0]["code"] == "enterer"]
    assert [a["who"]["reference"].split("/")[0] for a in enterers] == ["Practitioner"]


def test_a_prt_after_an_obx_says_where_it_was_observed() -> None:
    oru = MSH_ADT.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
    prt = "PRT||AD||RO^Responsible Observer^HL70912|||||LAB1^^^MAINLAB"
    bundle = converter().convert(message(oru, PID, "OBR|1|P1|F1|GLU^Glucose^L", "OBX|1|NM|GLU^Glucose^L||5|||||F", prt))
    event_location = "http://hl7.org/fhir/StructureDefinition/event-location"
    (where,) = [e for e in only(bundle, "Observation")["extension"] if e["url"] == event_location]
    target = where["valueReference"]["reference"].split("/")[1]
    location = next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == target)
    assert "LAB1" in location["name"]
