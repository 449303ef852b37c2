"""IG segment maps added for issue 14 (item 8): PV1[Patient], PV1[Coverage], SCH[Provenance],
PRT[Patient-GeneralPractitioner-Practitioner], and MSH[Encounter] as the PV1 map's status rule."""

from __future__ import annotations

from tests.support.convert import (
    MSH_ADT,
    PID,
    converter,
    message,
    message_provenance,
    only,
    referenced,
    resources,
    segment,
)

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


# --- addresses and phones that complete a person or organization another field names (`made`) -----


ORM = MSH_ADT.replace("ADT^A01^ADT_A01", "ORM^O01^ORM_O01")
OBR = "OBR|1|P1^OE||CBC^Blood count^L"
FACILITY, FACILITY_ADDRESS, FACILITY_PHONE = (
    "City Clinic^^^^^HOSP^XX^^^CC1",
    "1 Main St^^Bonn^^53111",
    "^WPN^PH^^49^228^5550100",
)
PROVIDER, PROVIDER_ADDRESS = "0148^Lee^Dana", "9 Side Rd^^Bonn^^53113"


def test_the_ordering_facility_and_provider_carry_their_address_and_phone() -> None:
    # Without an ordering provider the facility is the requester: ORC-22/23 complete it.
    orc = segment(
        "ORC", {1: "NW", 2: "P1^OE", 21: FACILITY, 22: FACILITY_ADDRESS, 23: FACILITY_PHONE, 28: "R^Restricted^HL70177"}
    )
    bundle = converter().convert(message(ORM, PID, orc, OBR))
    order = only(bundle, "ServiceRequest")
    facility = referenced(bundle, order["requester"])
    assert facility["resourceType"] == "Organization" and facility["name"] == "City Clinic"
    assert facility["address"][0]["city"] == "Bonn" and facility["telecom"][0]["value"] == "+49 228 5550100"
    assert order["meta"]["security"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R", "display": "restricted"}
    ]
    # The order's Provenance (IG ORC[Provenance]) has the facility as its location, with the same.
    provenance = next(p for p in resources(bundle, "Provenance") if p["id"] != message_provenance(bundle)["id"])
    location = referenced(bundle, provenance["location"])
    assert location["address"]["line"] == ["1 Main St"] and location["telecom"][0]["value"] == "+49 228 5550100"

    # With an ordering provider, ORC-24 is the provider's address; the facility is not the requester.
    orc = segment("ORC", {1: "NW", 2: "P1^OE", 12: PROVIDER, 21: FACILITY, 24: PROVIDER_ADDRESS})
    bundle = converter().convert(message(ORM, PID, orc, OBR))
    provider = referenced(bundle, only(bundle, "ServiceRequest")["requester"])
    assert provider["resourceType"] == "Practitioner" and provider["address"][0]["line"] == ["9 Side Rd"]
    # The same Practitioner (one id, however many fields name it) as the order Provenance's author.
    assert len(resources(bundle, "Practitioner")) == 1
    assert "meta" not in only(bundle, "ServiceRequest")


def test_an_address_does_not_move_the_id_of_the_resource_it_completes() -> None:
    with_address = converter().convert(
        message(ORM, PID, segment("ORC", {1: "NW", 2: "P1^OE", 12: PROVIDER, 24: PROVIDER_ADDRESS}), OBR)
    )
    without = converter().convert(message(ORM, PID, segment("ORC", {1: "NW", 2: "P1^OE", 12: PROVIDER}), OBR))
    assert only(with_address, "Practitioner")["id"] == only(without, "Practitioner")["id"]
    assert "address" not in only(without, "Practitioner")


def test_the_insurance_company_address_is_the_payors() -> None:
    in1 = segment(
        "IN1", {1: "1", 2: "GOLD^Gold^L", 3: "INS1^^^PAYER^NIIP", 4: "Payer Inc", 5: "5 Insurance Way^^Cologne^^50667"}
    )
    bundle = converter().convert(message(MSH_ADT, PID, PV1, in1))
    payor = referenced(bundle, only(bundle, "Coverage")["payor"][0])
    assert payor["name"] == "Payer Inc" and payor["address"][0]["city"] == "Cologne"


def test_a_participants_address_is_the_practitioners() -> None:
    # v2.5.1 ROL: the visit's attending (ROL after PV1) and the patient's primary care provider
    # (ROL PP after PID), each with ROL-11 office address.
    rol_pcp = segment(
        "ROL", {1: "R1", 2: "AD", 3: "PP^Primary Care Provider^HL70443", 4: "0500^Hart^Jo", 11: "3 Oak Ln^^Bonn"}
    )
    rol_visit = segment("ROL", {1: "R2", 2: "AD", 3: "AT^Attending^HL70443", 4: "0600^Vale^Ida", 11: "4 Elm Ln^^Bonn"})
    bundle = converter().convert(message(MSH_ADT, PID, rol_pcp, PV1, rol_visit))
    practitioners = {p["name"][0]["family"]: p for p in resources(bundle, "Practitioner")}
    assert practitioners["Hart"]["address"][0]["line"] == ["3 Oak Ln"]
    assert practitioners["Vale"]["address"][0]["line"] == ["4 Elm Ln"]
    (attending,) = [p for p in only(bundle, "Encounter")["participant"] if p["type"][0]["coding"][0]["code"] == "ATND"]
    assert referenced(bundle, attending["individual"])["name"][0]["family"] == "Vale"

    # v2.8 PRT: a care team member (PRT-14 address, PRT-15 phone on the Practitioner).
    oru = "MSH|^~\\&|Lab|Fac|Rcv|RcvFac|20240101120000+0100||ORU^R01^ORU_R01|CTRL2|P|2.8"
    prt = segment(
        "PRT",
        {2: "AD", 4: "AT^Attending^HL70912", 5: "0700^Rowe^Max", 14: "5 Ash Ln^^Bonn", 15: "^WPN^PH^^49^228^5550700"},
    )
    bundle = converter().convert(message(oru, PID, prt, "OBR|1|P1|F1|GLU^Glucose^L", "OBX|1|NM|GLU^Glucose^L||5|||||F"))
    member = referenced(bundle, only(bundle, "CareTeam")["participant"][0]["member"])
    assert member["address"][0]["line"] == ["5 Ash Ln"] and member["telecom"][0]["value"] == "+49 228 5550700"


def test_an_immunization_keeps_its_confidentiality_label() -> None:
    vxu = MSH_ADT.replace("ADT^A01^ADT_A01", "VXU^V04^VXU_V04")
    orc = segment("ORC", {1: "RE", 3: "IZ-1^EHR", 28: "V^Very restricted^HL70177"})
    rxa = "RXA|0|1|20240101||08^Hep B^CVX|0.5|mL^mL^UCUM||00^New record^NIP001"
    immunization = only(converter().convert(message(vxu, PID, orc, rxa)), "Immunization")
    assert [c["code"] for c in immunization["meta"]["security"]] == ["V"]


def test_the_bed_status_is_the_operational_status_of_the_bed() -> None:
    pv1 = segment("PV1", {1: "1", 2: "I", 3: "W1^R12^B3^HOSP", 19: "V1^^^H^VN", 40: "K"})
    bundle = converter().convert(message(MSH_ADT, PID, pv1))
    bed = referenced(bundle, only(bundle, "Encounter")["location"][0]["location"])
    assert bed["operationalStatus"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0116",
        "code": "K",
        "display": "Contaminated",
    }
    without = converter().convert(message(MSH_ADT, PID, pv1.replace("|K", "|")))
    assert referenced(without, only(without, "Encounter")["location"][0]["location"])["id"] == bed["id"]
