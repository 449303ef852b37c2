"""Participations (issue 14 item 8): ROL (v2.5.1) and PRT (v2.7 on) after the PID, the PV1, an
order and an observation, and what their role codes make: the patient's general practitioner (a
PractitionerRole), care team, related persons, the visit's participants, an order's requester, an
observation's device (IG PRT[...] and ROL[...] segment maps)."""

from __future__ import annotations

from typing import Any

from tests.support.convert import MSH_ADT, PID, PV1, converter, message, only, referenced, resources, segment

MSH_ORU = "MSH|^~\\&|Lab|Fac|Rcv|RcvFac|20240101120000+0100||ORU^R01^ORU_R01|CTRL2|P|2.8"
MSH_OML = "MSH|^~\\&|Ord|Fac|Rcv|RcvFac|20240101120000+0100||OML^O21^OML_O21|CTRL3|P|2.7"
OBR = "OBR|1|P1|F1|GLU^Glucose^L"
OBX = "OBX|1|NM|GLU^Glucose^L||5|mmol/L|||||F"


def _codes(concepts: list[dict[str, Any]]) -> set[str]:
    return {c["code"] for concept in concepts for c in concept.get("coding", [])}


# -- v2.5.1 ADT: ROL after the PID and after the PV1 ---------------------------------------------------

ROL_PCP = segment(
    "ROL",
    {
        1: "R1^HOSP",
        2: "AD",
        3: "PP^Primary Care Provider^HL70443",
        4: "0148^Lee^Dana",
        5: "20230101",
        12: "^WPN^PH^^^030^5550100",
        13: "CLINIC^^^NORTH",
        14: "North Clinic^^^^^HOSP^XX^^^NC1",
    },
)
ROL_ATTENDING = segment("ROL", {2: "AD", 3: "AT^Attending^HL70443", 4: "0200^Park^Kim", 8: "FU^Follow-up^L"})
ROL_CONSULTING = segment("ROL", {2: "AD", 3: "CP^Consulting^HL70443", 4: "0300^Gray^Alex", 12: "^WPN^PH^^^030^5550300"})
ROL_MOTHER = segment(
    "ROL",
    {
        1: "R9^HOSP",
        2: "AD",
        3: "MTH^Mother^HL70063",
        4: "^Doe^Mary",
        11: "1 Main St^^Berlin^^10115",
        12: "^PRN^PH^^^030^5550900",
    },
)
ROL_ADMITTING = segment("ROL", {2: "AD", 3: "AD^Admitting^HL70443", 4: "0400^Wong^Lee"})


def _adt(*rols_after_pid: str, after_pv1: tuple[str, ...] = ()) -> dict[str, Any]:
    return converter().convert(message(MSH_ADT, "EVN|A01", PID, *rols_after_pid, PV1, *after_pv1))


def test_a_rol_pp_after_the_pid_is_the_general_practitioner_as_a_practitioner_role() -> None:
    bundle = _adt(ROL_PCP)
    patient = only(bundle, "Patient")
    (gp,) = patient["generalPractitioner"]
    role = referenced(bundle, gp)
    assert role["resourceType"] == "PractitionerRole"
    assert role["identifier"] == [{"value": "R1"}]  # ROL-1 role instance id
    assert "446050000" in _codes(role["code"])  # ProviderRole: PP -> SNOMED CT primary care physician
    assert referenced(bundle, role["practitioner"])["name"][0]["family"] == "Lee"
    assert referenced(bundle, role["organization"])["name"] == "North Clinic"
    assert referenced(bundle, role["location"][0])["resourceType"] == "Location"
    assert role["period"]["start"] == "2023-01-01"
    assert role["telecom"][0]["value"] == "030 5550100"


def test_a_rol_after_the_pid_is_not_an_encounter_participant_but_one_after_the_pv1_is() -> None:
    bundle = _adt(ROL_PCP, after_pv1=(ROL_ADMITTING,))
    participants = only(bundle, "Encounter").get("participant", [])
    named = [referenced(bundle, p["individual"])["name"][0]["family"] for p in participants]
    assert named == ["Wong"]
    assert "ADM" in _codes(participants[0]["type"])


def test_practitioner_rols_after_the_pid_are_one_care_team() -> None:
    bundle = _adt(ROL_ATTENDING, ROL_CONSULTING)
    team = only(bundle, "CareTeam")
    assert team["subject"] == {"reference": f"Patient/{only(bundle, 'Patient')['id']}"}
    members = [referenced(bundle, p["member"])["name"][0]["family"] for p in team["participant"]]
    assert members == ["Park", "Gray"]
    assert _codes(team["participant"][0]["role"]) >= {"ATND"} and _codes(team["participant"][1]["role"]) >= {"CON"}
    assert _codes(team["reasonCode"]) == {"FU"}
    assert team["telecom"][0]["value"] == "030 5550300"
    # The same patient's care team is the same resource in the next message.
    assert only(_adt(ROL_CONSULTING), "CareTeam")["id"] == team["id"]
    assert "generalPractitioner" not in only(bundle, "Patient")


def test_a_rol_naming_a_relative_is_a_related_person() -> None:
    bundle = _adt(ROL_MOTHER)
    person = only(bundle, "RelatedPerson")
    assert person["patient"] == {"reference": f"Patient/{only(bundle, 'Patient')['id']}"}
    assert person["name"][0]["family"] == "Doe"
    assert "MTH" in _codes(person["relationship"])
    assert person["address"][0]["city"] == "Berlin"
    assert person["telecom"][0]["value"] == "030 5550900"
    assert person["identifier"][0]["value"] == "R9"
    assert resources(bundle, "CareTeam") == [] and resources(bundle, "PractitionerRole") == []


def test_a_deleted_rol_pp_names_no_general_practitioner() -> None:
    deleted = ROL_PCP.replace("|AD|PP^", "|D|PP^")
    assert "generalPractitioner" not in only(_adt(deleted), "Patient")


# -- v2.8 ADT with PRT (v2.9 sends PRT beside ROL) ------------------------------------------------------


def test_prts_in_an_adt_follow_the_pid_or_the_pv1() -> None:
    msh = MSH_ADT.replace("|2.5.1", "|2.8")
    pcp = "PRT||AD||PP^Primary Care Provider^HL70912|0148^Lee^Dana|||North Clinic^^^^^HOSP^XX^^^NC1"
    attending = "PRT||AD||AT^Attending Provider^HL70912|0200^Park^Kim"
    bundle = converter().convert(message(msh, "EVN|A01", PID, pcp, PV1, attending))
    (gp,) = only(bundle, "Patient")["generalPractitioner"]
    assert _codes(referenced(bundle, gp)["code"]) == {"PP"}
    (participant,) = only(bundle, "Encounter")["participant"]
    role = referenced(bundle, participant["individual"])
    assert role["resourceType"] == "PractitionerRole"
    assert referenced(bundle, role["practitioner"])["name"][0]["family"] == "Park"
    # The PP is a care team member too (IG ADT_A01 follow:PID.PRT), the visit's attending is not.
    (member,) = only(bundle, "CareTeam")["participant"]
    assert referenced(bundle, member["member"])["name"][0]["family"] == "Lee"


# -- v2.8 ORU: PRT of the patient, the visit, the order and the observation ----------------------------


def test_a_prt_pp_with_an_organization_is_a_practitioner_role_general_practitioner() -> None:
    prt = segment(
        "PRT", {2: "A", 4: "PP^Primary Care Provider^HL70912", 5: "0148^Lee^Dana", 8: "North Clinic", 11: "20230101"}
    )
    bundle = converter().convert(message(MSH_ORU, PID, prt, OBR, OBX))
    (gp,) = only(bundle, "Patient")["generalPractitioner"]
    role = referenced(bundle, gp)
    assert role["resourceType"] == "PractitionerRole" and role["period"] == {"start": "2023-01-01"}
    assert referenced(bundle, role["organization"])["name"] == "North Clinic"
    assert role["active"] is True  # PRT-2 A (add)


def test_a_prt_with_a_location_only_is_a_practitioner_role_too() -> None:
    prt = "PRT||A||PP^Primary Care Provider^HL70912|0148^Lee^Dana||||CLINIC^^^NORTH"
    bundle = converter().convert(message(MSH_ORU, PID, prt, OBR, OBX))
    (gp,) = only(bundle, "Patient")["generalPractitioner"]
    role = referenced(bundle, gp)
    assert role["active"] is True and referenced(bundle, role["location"][0])["resourceType"] == "Location"


def test_a_deleted_prt_pp_is_an_inactive_role_and_no_general_practitioner() -> None:
    prt = "PRT||D||PP^Primary Care Provider^HL70912|0148^Lee^Dana|||North Clinic"
    bundle = converter().convert(message(MSH_ORU, PID, prt, OBR, OBX))
    assert "generalPractitioner" not in only(bundle, "Patient")
    assert only(bundle, "PractitionerRole")["active"] is False
    assert resources(bundle, "CareTeam") == []


def test_a_prt_naming_a_guardian_is_a_related_person_not_a_practitioner() -> None:
    prt = segment(
        "PRT",
        {
            2: "AD",
            4: "GRD^Guardian^HL70063",
            5: "^Roe^Sam",
            11: "20240101",
            14: "1 Side St^^Hamburg",
            15: "^PRN^PH^^^040^5551234",
        },
    )
    bundle = converter().convert(message(MSH_ORU, PID, prt, OBR, OBX))
    person = only(bundle, "RelatedPerson")
    assert person["name"][0]["family"] == "Roe" and "GRD" in _codes(person["relationship"])
    assert person["period"] == {"start": "2024-01-01"}
    assert person["address"][0]["city"] == "Hamburg" and person["telecom"][0]["value"] == "040 5551234"
    assert resources(bundle, "PractitionerRole") == [] and resources(bundle, "Practitioner") == []


def test_a_visit_prt_is_an_encounter_participant() -> None:
    pv1 = "PV1|1|I|||||||||||||||||V7^^^HOSP^VN"
    prt = "PRT||AD||AT^Attending Provider^HL70912|0200^Park^Kim"
    bundle = converter().convert(message(MSH_ORU, PID, pv1, prt, OBR, OBX))
    (participant,) = only(bundle, "Encounter")["participant"]
    role = referenced(bundle, participant["individual"])
    assert referenced(bundle, role["practitioner"])["name"][0]["family"] == "Park"
    assert resources(bundle, "CareTeam") == []  # the visit's, not the patient's care team


def test_an_ordering_provider_prt_is_the_requester_when_the_orc_names_none() -> None:
    orc = "ORC|RE|P1|F1"
    prt = "PRT||AD||OP^Ordering Provider^HL70912|0500^Stone^Eve"
    bundle = converter().convert(message(MSH_ORU, PID, orc, prt, OBR, OBX))
    requester = referenced(bundle, only(bundle, "ServiceRequest")["requester"])
    assert requester["resourceType"] == "PractitionerRole"
    assert referenced(bundle, requester["practitioner"])["name"][0]["family"] == "Stone"
    # ORC-12 comes first: the PRT does not replace it.
    named = converter().convert(message(MSH_ORU, PID, orc + "|||||||||0600^Hill^Jo", prt, OBR, OBX))
    assert referenced(named, only(named, "ServiceRequest")["requester"])["resourceType"] == "Practitioner"


def test_a_device_prt_after_an_obx_is_its_device() -> None:
    device = segment(
        "PRT",
        {
            2: "AD",
            4: "EQUIP^Equipment^HL70912",
            10: "GLUCO-7^LAB",
            16: "00643169001763",
            17: "20200101",
            18: "20300101",
            19: "LOT42",
            20: "SN-9",
            22: "GLUCOMETER^Glucose meter^L",
        },
    )
    obx2 = "OBX|2|NM|K^Potassium^L||4|mmol/L|||||F"
    bundle = converter().convert(message(MSH_ORU, PID, OBR, OBX, device, obx2))
    # (MSH-5, the receiving application, is a Device of the MessageHeader too.)
    (made,) = [d for d in resources(bundle, "Device") if "udiCarrier" in d]
    assert made["identifier"][0]["value"] == "GLUCO-7"
    assert made["udiCarrier"] == [{"deviceIdentifier": "00643169001763"}]
    assert (made["manufactureDate"], made["expirationDate"]) == ("2020-01-01", "2030-01-01")
    assert (made["lotNumber"], made["serialNumber"]) == ("LOT42", "SN-9")
    assert _codes([made["type"]]) == {"GLUCOMETER"}
    glucose, potassium = resources(bundle, "Observation")
    assert glucose["device"] == {"reference": f"Device/{made['id']}"}
    assert "device" not in potassium  # another OBX's PRT is not this one's


def test_a_prt_address_after_an_obx_says_where_it_was_observed() -> None:
    prt = segment("PRT", {2: "AD", 4: "RO^Responsible Observer^HL70912", 14: "1 Lab Rd^^Bonn^^53111"})
    bundle = converter().convert(message(MSH_ORU, PID, OBR, OBX, prt))
    event_location = "http://hl7.org/fhir/StructureDefinition/event-location"
    (where,) = [e for e in only(bundle, "Observation")["extension"] if e["url"] == event_location]
    assert referenced(bundle, where["valueReference"])["address"]["city"] == "Bonn"


# -- v2.7 OML: an order's PRT -------------------------------------------------------------------------


def test_each_order_has_its_own_ordering_provider_prt() -> None:
    first = ["ORC|NW|P1", "PRT||AD||OP^Ordering Provider^HL70912|0500^Stone^Eve", "OBR|1|P1||GLU^Glucose^L"]
    second = ["ORC|NW|P2", "OBR|1|P2||K^Potassium^L"]
    bundle = converter().convert(message(MSH_OML, PID, *first, *second))
    glucose, potassium = resources(bundle, "ServiceRequest")
    requester = referenced(bundle, glucose["requester"])
    assert referenced(bundle, requester["practitioner"])["name"][0]["family"] == "Stone"
    assert "requester" not in potassium


def test_an_ordering_provider_prt_after_the_obr_is_the_requester() -> None:
    order = ["ORC|NW|P1", "OBR|1|P1||GLU^Glucose^L", "PRT||AD||OP^Ordering Provider^HL70912|0500^Stone^Eve"]
    bundle = converter().convert(message(MSH_OML, PID, *order))
    assert referenced(bundle, only(bundle, "ServiceRequest")["requester"])["resourceType"] == "PractitionerRole"


def test_a_person_prt_after_an_obx_is_its_performer() -> None:
    prt = "PRT||AD||RO^Responsible Observer^HL70912|0700^Quinn^Ray"
    obx2 = "OBX|2|NM|K^Potassium^L||4|mmol/L|||||F"
    bundle = converter().convert(message(MSH_ORU, PID, OBR, OBX, prt, obx2))
    glucose, potassium = resources(bundle, "Observation")
    (performer,) = glucose["performer"]
    role = referenced(bundle, performer)
    assert referenced(bundle, role["practitioner"])["name"][0]["family"] == "Quinn"
    assert "performer" not in potassium


def test_the_orders_interpreter_and_technician_prts_are_on_the_report() -> None:
    pri = "PRT||AD||PRI^Principal Result Interpreter^HL70912|0800^Ito^Ken"
    tn = "PRT||AD||TN^Technician^HL70912|0900^Berg^Ola"
    bundle = converter().convert(message(MSH_ORU, PID, "ORC|RE|P1|F1", OBR, pri, tn, OBX))
    report = only(bundle, "DiagnosticReport")
    (interpreter,) = report["resultsInterpreter"]
    (performer,) = report["performer"]
    family = [
        referenced(bundle, referenced(bundle, r)["practitioner"])["name"][0]["family"] for r in (interpreter, performer)
    ]
    assert family == ["Ito", "Berg"]
