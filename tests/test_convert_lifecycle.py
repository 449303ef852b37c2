"""What trigger events mean for the resources, said as FHIR content the store only has to apply:
A03 finishes the Encounter, A11 cancels it, A29 deletes the Patient, A40/A47 retire the merged
Patient, a corrected OBX (OBX-11 C) replaces its Observation, PC3 deletes the problem."""

from __future__ import annotations

from gateway.convert.functions.ids import resource_id
from gateway.validate import validate_bundle
from tests.support.convert import PID, PV1, converter, message, message_provenance, only, resources, sample_message


def _msh(trigger: str, structure: str = "") -> str:
    kind = f"ADT^{trigger}{'^' + structure if structure else ''}"
    return f"MSH|^~\\&|App|Fac|Rcv|RcvFac|20240101120000+0100||{kind}|C{trigger}|P|2.5.1"


def test_encounter_status_follows_the_event() -> None:
    """IG concept map Event[EncounterStatus]; without a mapped event, the discharge date or class."""
    expected = {
        "A01": "in-progress",
        "A03": "finished",
        "A04": "planned",
        "A05": "planned",
        "A11": "cancelled",
        "A13": "in-progress",
        "A27": "cancelled",
    }
    for trigger, status in expected.items():
        bundle = converter().convert(message(_msh(trigger), "EVN|" + trigger, PID, PV1))
        validate_bundle(bundle)
        assert only(bundle, "Encounter")["status"] == status, trigger
    # A08 says nothing about the visit: the patient class (I, inpatient) decides.
    assert only(converter().convert(message(_msh("A08"), PID, PV1)), "Encounter")["status"] == "in-progress"
    discharged = PV1 + "|20240102100000+0100"
    assert only(converter().convert(message(_msh("A08"), PID, discharged)), "Encounter")["status"] == "finished"


def test_same_visit_same_encounter_across_events() -> None:
    ids = {
        only(converter().convert(message(_msh(t), PID, PV1)), "Encounter")["id"] for t in ("A01", "A03", "A11", "A13")
    }
    assert len(ids) == 1


def test_a29_deletes_the_patient_and_makes_nothing_else() -> None:
    bundle = converter().convert(message(_msh("A29", "ADT_A21"), "EVN|A29", PID, PV1))
    validate_bundle(bundle)
    patient_id = resource_id("Patient", "HOSP|12345")
    deleted = [e for e in bundle["entry"] if "resource" not in e]
    assert deleted == [{"request": {"method": "DELETE", "url": f"Patient/{patient_id}"}}]
    # Nothing but the record of the message is written: its MessageHeader (with the receiving
    # application, a Device, and the facilities, Organizations) and the Provenance.
    written = {e["resource"]["resourceType"] for e in bundle["entry"] if "resource" in e}
    assert written == {"MessageHeader", "Device", "Provenance", "Organization"}
    targets = {t["reference"] for t in message_provenance(bundle)["target"]}
    assert f"Patient/{patient_id}" in targets


def test_a40_retires_the_merged_patient() -> None:
    mrg = "MRG|99999^^^HOSP^MR||||||Doe^Janet"
    bundle = converter().convert(message(_msh("A40", "ADT_A39"), "EVN|A40", PID, mrg))
    validate_bundle(bundle)
    survivor, retired = resources(bundle, "Patient")
    assert survivor["id"] == resource_id("Patient", "HOSP|12345")
    assert retired["id"] == resource_id("Patient", "HOSP|99999")  # the id an earlier message gave it
    assert retired["active"] is False
    assert retired["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert survivor["link"] == [{"other": {"reference": f"Patient/{retired['id']}"}, "type": "replaces"}]
    assert retired["identifier"][0]["value"] == "99999" and retired["name"][0]["given"] == ["Janet"]


def test_a40_with_two_merges_and_a47_identifier_change() -> None:
    bundle = converter().convert(sample_message("ms-fhir-converter/ADT-A40-02.hl7"))
    patients = resources(bundle, "Patient")
    assert len(patients) == 4
    assert sum(1 for p in patients if p.get("active") is False) == 2
    bundle = converter().convert(sample_message("ms-fhir-converter/ADT-A47-01.hl7"))
    retired = [p for p in resources(bundle, "Patient") if p.get("active") is False]
    assert len(retired) == 1 and retired[0]["link"][0]["type"] == "replaced-by"


def test_corrected_result_replaces_the_observation() -> None:
    oru = "MSH|^~\\&|Lab|LabFac|A|B|20240101120000+0100||ORU^R01^ORU_R01|{}|P|2.5.1"
    lines = [PID, "OBR|1|P1|F1|GLU^Glucose^L|||20240101110000+0100||||||||||||||||||F"]
    final = converter().convert(message(oru.format(1), *lines, "OBX|1|NM|GLU^Glucose^L||5.5|mmol/L|||||F"))
    corrected = converter().convert(message(oru.format(2), *lines, "OBX|1|NM|GLU^Glucose^L||6.5|mmol/L|||||C"))
    before, after = only(final, "Observation"), only(corrected, "Observation")
    assert before["id"] == after["id"]
    assert (before["status"], after["status"]) == ("final", "corrected")
    assert after["valueQuantity"]["value"] == 6.5


def test_problem_delete_is_a_delete_entry() -> None:
    msh = "MSH|^~\\&|PL|HOSP|||20040629164652||PPR^{}|{}|P|2.3.1"
    pid = "PID|||10290^^^WEST^MR||KARLS^TOM||20040530|M"
    prb = "PRB|AD|2004062916460000|596.5^BLADDER DYSFUNCTION^I9|26744|||20040629||||||ACTIVE"
    added = converter().convert(message(msh.format("PC1", 1), pid, prb))
    deleted = converter().convert(message(msh.format("PC3", 2), pid, prb.replace("PRB|AD", "PRB|DE")))
    validate_bundle(deleted)
    condition = only(added, "Condition")
    assert condition["code"]["coding"][0]["code"] == "596.5"
    assert {"request": {"method": "DELETE", "url": f"Condition/{condition['id']}"}} in deleted["entry"]
    assert resources(deleted, "Condition") == []


def test_appointment_status_follows_the_event_when_sch25_is_silent() -> None:
    for trigger, status in (("S12", "booked"), ("S15", "cancelled"), ("S17", "entered-in-error"), ("S26", "noshow")):
        msh = f"MSH|^~\\&|App|Fac|R|RF|20240101120000+0100||SIU^{trigger}^SIU_S12|1|P|2.5.1"
        # The times: FHIR R4 app-3 wants them of all but proposed, cancelled or waitlisted ones.
        bundle = converter().convert(message(msh, "SCH|P1|F1|||||||||^^^202401051000^202401051030", PID))
        validate_bundle(bundle)
        assert only(bundle, "Appointment")["status"] == status


def test_the_adt_events_added_for_issue_14() -> None:
    """A12, A17, A21, A22, A23, A34, A35, A38: each gives what the event means (the samples'
    golden bundles hold the rest)."""

    def bundle(name: str) -> dict:
        found = converter().convert(sample_message(f"{name}/hl7gw-{name}.hl7"))
        validate_bundle(found)
        return found

    statuses = {t: only(bundle(f"ADT_{t}"), "Encounter")["status"] for t in ("A12", "A21", "A22", "A38")}
    assert statuses == {"A12": "in-progress", "A21": "onleave", "A22": "in-progress", "A38": "cancelled"}
    swap = bundle("ADT_A17")
    patients = {p["id"] for p in resources(swap, "Patient")}
    subjects = [e["subject"]["reference"].split("/")[1] for e in resources(swap, "Encounter")]
    assert len(patients) == 2 and set(subjects) == patients  # each visit with its own patient
    a23 = bundle("ADT_A23")
    deleted = [e["request"]["url"] for e in a23["entry"] if e["request"]["method"] == "DELETE"]
    segments = [line for line in sample_message("ADT_A23/hl7gw-ADT_A23.hl7").to_er7("\n").split("\n")[1:] if line]
    visit = converter().convert(message(_msh("A04", "ADT_A01"), *segments))  # the visit it removes
    assert deleted == [f"Encounter/{only(visit, 'Encounter')['id']}"]
    merged = [p for p in resources(bundle("ADT_A34"), "Patient") if p.get("active") is False]
    assert len(merged) == 1 and merged[0]["link"][0]["type"] == "replaced-by"
    accounts = resources(bundle("ADT_A35"), "Account")
    assert [a["identifier"][0]["value"] for a in accounts] == ["AC500098"]
