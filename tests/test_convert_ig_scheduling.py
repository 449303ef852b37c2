"""Scheduling and documents (issue 14 items 8 and 10): an appointment's times from TQ1, SCH-11 and
AIS, the FHIR R4 Appointment invariants, and the DocumentReference an ED or RP OBX becomes."""

from __future__ import annotations

from gateway.validate import validate_bundle
from tests.support.convert import PID, converter, message, only, resources, segment

SIU_23 = "MSH|^~\\&|SCHED|CLINIC|R|RF|20240101120000+0100||SIU^{}|C1|P|2.3"
SIU_251 = "MSH|^~\\&|SCHED|CLINIC|R|RF|20240101120000+0100||SIU^{}^SIU_S12|C1|P|2.5.1"
RGS = "RGS|1|A"


def _appointment(*segments: str) -> dict:
    bundle = converter().convert(message(*segments))
    validate_bundle(bundle)
    return only(bundle, "Appointment")


def test_a_v23_appointment_has_the_times_of_sch11() -> None:
    sch = segment("SCH", {1: "P1", 2: "F1", 11: "^^30^20240105100000^20240105103000"})
    appointment = _appointment(SIU_23.format("S12"), sch, PID)
    assert (appointment["start"], appointment["end"]) == ("2024-01-05T10:00:00+01:00", "2024-01-05T10:30:00+01:00")


def test_tq1_times_come_before_the_deprecated_sch11() -> None:
    sch = segment("SCH", {1: "P1", 2: "F1", 11: "^^^20200101080000^20200109080000"})
    tq1 = segment("TQ1", {7: "20240105140000+0100", 8: "20240105144500+0100"})
    ais = segment("AIS", {1: "1", 3: "CONS^Consultation^L", 4: "20240105141000+0100", 7: "20", 8: "min"})
    appointment = _appointment(SIU_251.format("S12"), sch, tq1, PID, RGS, ais)
    assert (appointment["start"], appointment["end"]) == ("2024-01-05T14:00:00+01:00", "2024-01-05T14:45:00+01:00")
    assert appointment["serviceType"][0]["coding"][0]["code"] == "CONS"


def test_without_tq1_and_sch11_the_service_gives_start_and_duration() -> None:
    sch = segment("SCH", {1: "P1", 2: "F1"})
    ais = segment("AIS", {1: "1", 3: "MRI^MRI^L", 4: "20240105141000+0100", 7: "2", 8: "h^hours^ISO+"})
    appointment = _appointment(SIU_251.format("S12"), sch, PID, RGS, ais)
    assert (appointment["start"], appointment["end"]) == ("2024-01-05T14:10:00+01:00", "2024-01-05T16:10:00+01:00")


def test_a_start_and_the_appointment_duration_give_the_end() -> None:
    sch = segment("SCH", {1: "P1", 2: "F1", 9: "45", 10: "min", 11: "^^^202401051000"})
    appointment = _appointment(SIU_23.format("S12"), sch, PID)
    assert (appointment["start"], appointment["end"]) == ("2024-01-05T10:00:00+01:00", "2024-01-05T10:45:00+01:00")
    assert appointment["minutesDuration"] == 45


def test_a_resource_starts_at_its_offset_and_ends_after_its_duration() -> None:
    sch = segment("SCH", {1: "P1", 2: "F1", 11: "^^^202401051000^202401051100"})
    aig = segment(
        "AIG", {1: "1", 3: "US1^Ultrasound 1^L", 4: "EQ^Equipment^L", 9: "15", 10: "min", 11: "30", 12: "min"}
    )
    aip = segment("AIP", {1: "1", 3: "D1^Doe^John", 4: "ATND^attender^L", 6: "202401051000", 9: "1", 10: "h"})
    appointment = _appointment(SIU_23.format("S12"), sch, PID, RGS, aig, aip)
    periods = {p["type"][0]["coding"][0]["code"]: p["period"] for p in appointment["participant"] if "period" in p}
    assert periods["EQ"] == {"start": "2024-01-05T10:15:00+01:00", "end": "2024-01-05T10:45:00+01:00"}
    assert periods["ATND"] == {"start": "2024-01-05T10:00:00+01:00", "end": "2024-01-05T11:00:00+01:00"}


def test_an_appointment_whose_end_nothing_gives_is_left_out_with_a_note() -> None:
    """R4 app-2/app-3: a booked appointment has start and end; a start alone cannot be written."""
    sch = segment("SCH", {1: "P1", 2: "F1", 11: "^^^202401051000"})
    conversion = converter().convert_with_report(message(SIU_23.format("S12"), sch, PID))
    validate_bundle(conversion.bundle)
    assert resources(conversion.bundle, "Appointment") == []
    assert only(conversion.bundle, "Patient")
    assert any(
        note.startswith("SCH#2 left out (Appointment appointment)") and "app-3" in note for note in conversion.notes
    )


def test_a_cancelled_appointment_may_lack_its_times() -> None:
    sch = segment("SCH", {1: "P1", 2: "F1", 6: "DOC^Doctor ill^L", 11: "^^^202401051000"})
    appointment = _appointment(SIU_23.format("S15"), sch, PID)
    assert appointment["status"] == "cancelled"
    assert "start" not in appointment and "end" not in appointment  # app-2: both or neither
    assert appointment["cancelationReason"]["coding"][0]["code"] == "DOC"


def test_a_deletion_reason_is_no_cancelation_reason() -> None:
    """R4 app-4: cancelationReason only on a cancelled appointment."""
    sch = segment("SCH", {1: "P1", 2: "F1", 6: "ERR^Entered in error^L", 11: "^^^202401051000^202401051030"})
    appointment = _appointment(SIU_23.format("S17"), sch, PID)
    assert appointment["status"] == "entered-in-error"
    assert "cancelationReason" not in appointment and "reasonCode" not in appointment


def test_the_service_status_when_sch25_and_the_event_say_nothing() -> None:
    sch = segment("SCH", {1: "P1", 2: "F1", 11: "^^^202401051000^202401051030"})
    ais = segment("AIS", {1: "1", 3: "CONS^Consultation^L", 10: "Complete"})
    assert _appointment(SIU_251.format("S14"), sch, PID, RGS, ais)["status"] == "fulfilled"
    # An event that ends the appointment outranks the service's status; SCH-25 outranks both.
    assert _appointment(SIU_251.format("S15"), sch, PID, RGS, ais)["status"] == "cancelled"
    sch25 = segment("SCH", {1: "P1", 2: "F1", 11: "^^^202401051000^202401051030", 25: "Started"})
    assert _appointment(SIU_251.format("S15"), sch25, PID, RGS, ais)["status"] == "checked-in"


def test_the_person_who_entered_the_appointment_is_an_enterer_participant() -> None:
    sch = segment("SCH", {1: "P1", 2: "F1", 11: "^^^202401051000^202401051030", 20: "0777^Keyes^Ann"})
    bundle = converter().convert(message(SIU_251.format("S12"), sch, PID))
    validate_bundle(bundle)
    (enterer,) = [
        p
        for p in only(bundle, "Appointment")["participant"]
        if p.get("type", [{}])[0].get("coding", [{}])[0].get("code") == "enterer"
    ]
    practitioner = only(bundle, "Practitioner")
    assert enterer["actor"] == {"reference": f"Practitioner/{practitioner['id']}"}
    assert practitioner["name"][0]["family"] == "Keyes"


def test_each_note_is_an_r5_note_with_author_time_and_type() -> None:
    sch = segment("SCH", {1: "P1", 2: "F1", 11: "^^^202401051000^202401051030"})
    nte = "NTE|1|L|Bring prior films.|RE^Remark^HL70364|0777^Keyes^Ann|202401011130"
    appointment = _appointment(SIU_251.format("S12"), sch, nte, "NTE|2|L|Fasting.", PID)
    assert appointment["comment"] == "Bring prior films.\nFasting."  # R4 has one comment: the NTEs, as lines
    notes = [e["valueAnnotation"] for e in appointment["extension"] if e["url"].endswith("Appointment.note")]
    assert [n["text"] for n in notes] == ["Bring prior films.", "Fasting."]
    assert notes[0]["time"] == "2024-01-01T11:30:00+01:00"
    assert notes[0]["authorReference"]["reference"].startswith("Practitioner/")
    (kind,) = notes[0]["extension"]
    assert kind["url"] == "http://hl7.org/fhir/StructureDefinition/annotationType"
    assert kind["valueCodeableConcept"]["coding"][0]["code"] == "RE"


def test_the_patient_is_the_r5_subject_of_the_appointment() -> None:
    sch = segment("SCH", {1: "P1", 2: "F1", 11: "^^^202401051000^202401051030"})
    bundle = converter().convert(message(SIU_251.format("S12"), sch, PID))
    (subject,) = [e for e in only(bundle, "Appointment")["extension"] if e["url"].endswith("Appointment.subject")]
    assert subject["valueReference"] == {"reference": f"Patient/{only(bundle, 'Patient')['id']}"}


def test_the_order_an_appointment_is_for() -> None:
    """IG SCH[ServiceRequest] and AIS[ServiceRequest]: SCH-26/27 name it, AIS its services."""
    sch = segment("SCH", {1: "P1", 2: "F1", 11: "^^^202401051000^202401051100", 25: "Complete", 27: "ORD7^LAB"})
    ais = segment(
        "AIS", {1: "1", 3: "CONS^Consultation^L", 5: "15", 6: "min", 7: "30", 8: "min", 11: "PRE^Preparation^L"}
    )
    bundle = converter().convert(message(SIU_251.format("S12"), sch, PID, RGS, ais))
    validate_bundle(bundle)
    order, appointment = only(bundle, "ServiceRequest"), only(bundle, "Appointment")
    assert appointment["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]
    assert (order["status"], order["intent"]) == ("completed", "order")
    assert [i["value"] for i in order["identifier"]] == ["ORD7", "CONS", "PRE"]
    assert order["identifier"][0]["type"]["coding"][0]["code"] == "FILL"
    assert order["code"]["coding"][0]["code"] == "CONS"
    assert order["occurrencePeriod"] == {"start": "2024-01-05T10:15:00+01:00", "end": "2024-01-05T10:45:00+01:00"}
    assert order["subject"] == {"reference": f"Patient/{only(bundle, 'Patient')['id']}"}
    # Without SCH-26/27 the appointment names no order.
    plain = converter().convert(message(SIU_251.format("S12"), sch.replace("|ORD7^LAB", ""), PID, RGS, ais))
    assert resources(plain, "ServiceRequest") == [] and "basedOn" not in only(plain, "Appointment")


# --- documents: an OBX of type ED or RP (item 10) --------------------------------------------------

ORU = "MSH|^~\\&|LAB|HOSP|R|RF|20240101120000+0100||ORU^R01^ORU_R01|L1|P|2.5.1"
OBR = "OBR|1|PL1|FL1^LAB|11502-2^Laboratory report^LN"
ED_OBX = "OBX|1|ED|11502-2^Laboratory report^LN||LAB^application^pdf^Base64^JVBERi0xLjQK||||||F"


def test_an_ed_result_is_a_document_about_the_patient_of_its_kind() -> None:
    bundle = converter().convert(message(ORU, PID, OBR, ED_OBX))
    validate_bundle(bundle)
    document, observation, patient = (
        only(bundle, "DocumentReference"),
        only(bundle, "Observation"),
        only(bundle, "Patient"),
    )
    assert document["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert document["type"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "11502-2",
        "display": "Laboratory report",
    }
    assert document["category"][0]["coding"][0]["code"] == "clinical-note"
    assert document["content"] == [{"attachment": {"contentType": "application/pdf", "data": "JVBERi0xLjQK"}}]
    assert observation["derivedFrom"] == [{"reference": f"DocumentReference/{document['id']}"}]
    # Keyed on its report and OBX-1/OBX-3, not on the data: the same data in another patient's
    # report is another document; the same message again, the same one.
    other = converter().convert(message(ORU, PID.replace("12345", "67890"), OBR.replace("FL1", "FL2"), ED_OBX))
    assert only(other, "DocumentReference")["id"] != document["id"]
    assert only(converter().convert(message(ORU, PID, OBR, ED_OBX)), "DocumentReference")["id"] == document["id"]


def test_each_repetition_of_a_pointer_is_a_content_of_one_document() -> None:
    obx = "OBX|1|RP|18748-4^Diagnostic imaging study^LN||http://pacs/1^PACS^image^jpeg~http://pacs/2^PACS^image^jpeg||||||F"
    bundle = converter().convert(message(ORU, PID, OBR, obx))
    validate_bundle(bundle)
    urls = [c["attachment"]["url"] for c in only(bundle, "DocumentReference")["content"]]
    assert urls == ["http://pacs/1", "http://pacs/2"]


def test_an_ed_result_without_data_is_no_document() -> None:
    bundle = converter().convert(message(ORU, PID, OBR, "OBX|1|ED|11502-2^Laboratory report^LN||||||||F"))
    validate_bundle(bundle)
    assert resources(bundle, "DocumentReference") == []
    assert only(bundle, "Observation")["dataAbsentReason"]["coding"][0]["code"] == "unknown"


MDM = "MSH|^~\\&|DOC|HOSP|R|RF|20240101120000+0100||MDM^T02^MDM_T02|D1|P|2.5.1"
EVN = "EVN|T02|20240101120000"
PV1 = "PV1|1|O"
TXA = "TXA|1|CN^Consultation note^L|TX|20240101110000+0100|||||||||DOC1^HOSP||||||AU"


def test_an_mdm_document_keeps_its_txa_type_and_is_a_clinical_note() -> None:
    obx = "OBX|1|TX|NOTE^Note line^L||First line.||||||F"
    bundle = converter().convert(message(MDM, EVN, PID, PV1, TXA, obx))
    validate_bundle(bundle)
    document = only(bundle, "DocumentReference")
    assert document["type"]["coding"] == [{"code": "CN", "display": "Consultation note"}]
    assert document["category"][0]["coding"][0]["code"] == "clinical-note"
    assert resources(bundle, "Observation") == []


def test_the_people_of_a_document_are_agents_of_the_message_provenance() -> None:
    """IG TXA[Provenance]: originator, authenticators (TXA-22, PPN) and recipients (TXA-23)."""
    txa = TXA.replace("|||||||||DOC1^HOSP", "|||||0555^Smith^Sam||||DOC1^HOSP") + (
        "||Typo fixed|0777^Keyes^Ann^^^^^^^^^^^^20240101115500+0100|0888^Ray^Rob"
    )
    obx = "OBX|1|TX|NOTE^Note line^L||First line.||||||F"
    bundle = converter().convert(message(MDM, EVN, PID, PV1, txa, obx))
    validate_bundle(bundle)
    provenance = only(bundle, "Provenance")
    names = {p["id"]: p["name"][0]["family"] for p in resources(bundle, "Practitioner")}

    def kind(agent: dict) -> str:
        return (agent.get("type") or agent["role"][0])["coding"][0]["code"]

    people = {
        (kind(a), names[a["who"]["reference"].split("/")[1]])
        for a in provenance["agent"]
        if "Practitioner/" in a["who"].get("reference", "")
    }
    assert people == {("author", "Smith"), ("attester", "Keyes"), ("IRCP", "Ray")}
    assert provenance["reason"] == [{"text": "Typo fixed"}]
