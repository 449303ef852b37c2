"""IG segment maps of patient administration added for issue 14 (item 8): DG1[Encounter] and
DG1[EpisodeOfCare] (a reference's `with`), PD1[Observation-LivingWill], PID[Provenance-Patient],
and fields of PID, PV1, PV2, NK1, IN1 (the subscriber: a reference's `when`, `scope: group` on
a single element), DG1 and PR1 the maps did not read yet. Messages in v2.3, v2.5.1 and v2.8."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from gateway.convert.runtime.engine import Converter, default_mappings_dir
from gateway.errors import ConfigError
from gateway.validate import validate_bundle
from tests.support.convert import (
    MSH_ADT,
    PID,
    PV1,
    converter,
    message,
    message_provenance,
    only,
    referenced,
    resources,
    segment,
)

MSH_23 = MSH_ADT.replace("|2.5.1", "|2.3")
MSH_28 = MSH_ADT.replace("|2.5.1", "|2.8")
ROLE = "http://terminology.hl7.org/CodeSystem/diagnosis-role"


def _dg1(set_id: str, code: str, kind: str, priority: str = "", **more: str) -> str:
    fields = {1: set_id, 3: code, 6: kind, 15: priority}
    fields.update({int(k[1:]): v for k, v in more.items()})
    return segment("DG1", fields)


# -- DG1[Encounter], DG1[EpisodeOfCare] ---------------------------------------------------------------


@pytest.mark.parametrize("msh", [MSH_23, MSH_ADT, MSH_28], ids=["v2.3", "v2.5.1", "v2.8"])
def test_each_diagnosis_entry_has_the_use_and_rank_of_its_own_dg1(msh: str) -> None:
    pv1 = PV1 + "||||||||||EP7^^^HOSP"  # PV1-54: an EpisodeOfCare too
    bundle = converter().convert(
        message(
            msh,
            PID,
            pv1,
            _dg1("1", "I10^Hypertension^I10", "W", "2"),
            _dg1("2", "J18.9^Pneumonia^I10", "A", "1"),
            _dg1("3", "E11.9^Diabetes^I10", "F", "0"),
        )
    )
    validate_bundle(bundle)
    encounter, episode = only(bundle, "Encounter"), only(bundle, "EpisodeOfCare")
    seen = {}
    for entry in encounter["diagnosis"]:
        condition = referenced(bundle, entry["condition"])
        seen[condition["code"]["coding"][0]["code"]] = (
            [c["code"] for c in entry["use"]["coding"]],
            entry.get("rank"),
        )
    assert seen == {
        "I10": (["W"], 2),
        "J18.9": (["AD", "A"], 1),  # admitting: the IG's DiagnosisType map, and the code as sent
        "E11.9": (["F"], None),  # priority 0: not ranked
    }
    assert encounter["diagnosis"][1]["use"]["coding"][0]["system"] == ROLE
    # The EpisodeOfCare says the same in `role` (IG DG1[EpisodeOfCare]), one entry per DG1.
    roles = {
        referenced(bundle, d["condition"])["code"]["coding"][0]["code"]: d.get("rank") for d in episode["diagnosis"]
    }
    assert roles == {"I10": 2, "J18.9": 1, "E11.9": None}
    assert episode["diagnosis"][1]["role"]["coding"][0]["code"] == "AD"


def test_a_visit_refers_only_to_the_diagnoses_of_its_own_visit_group() -> None:
    bar = MSH_ADT.replace("ADT^A01^ADT_A01", "BAR^P01^BAR_P01")
    pv1_a = PV1
    pv1_b = PV1.replace("V100", "V200")
    bundle = converter().convert(
        message(
            bar,
            "EVN|P01|20240101",
            PID,
            pv1_a,
            _dg1("1", "I10^Hypertension^I10", "A", "1"),
            pv1_b,
            _dg1("1", "R51^Headache^I10", "W", "3"),
        )
    )
    by_visit = {
        e["identifier"][0]["value"]: [
            (referenced(bundle, d["condition"])["code"]["coding"][0]["code"], d["rank"]) for d in e["diagnosis"]
        ]
        for e in resources(bundle, "Encounter")
    }
    assert by_visit == {"V100": [("I10", 1)], "V200": [("R51", 3)]}


def test_the_diagnosis_fields_are_read_for_the_unused_field_report() -> None:
    report = converter().convert_with_report(message(MSH_ADT, PID, PV1, _dg1("1", "I10^Hypertension^I10", "A", "1")))
    assert not any(f in ("DG1-6", "DG1-15") for fields in report.unused_fields.values() for f in fields)


def test_a_parent_diagnosis_is_the_condition_this_one_is_due_to() -> None:
    parent = _dg1("1", "I10^Hypertension^I10", "A", "1", f20="D1^HOSP")
    child = _dg1("2", "I13.0^Hypertensive heart disease^I10", "A", "2", f20="D2^HOSP", f22="D1^HOSP")
    bundle = converter().convert(message(MSH_28, PID, PV1, parent, child))
    due = [c for c in resources(bundle, "Condition") if "extension" in c]
    assert [c["identifier"][0]["value"] for c in due] == ["D2"]
    assert due[0]["extension"] == [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/condition-dueTo",
            "valueReference": {"identifier": {"value": "D1"}},
        }
    ]


# -- the engine: `with`, and its checks at load -------------------------------------------------------


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    copy = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), copy)
    return copy


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))


WITH = 'with: "DG1[EncounterDiagnosis]"}'


@pytest.mark.parametrize(
    ("new", "reason"),
    [
        ('with: "DG1[Condition]"}', "not DG1\\[Condition\\], which fills a resource"),
        ('with: "DG1[Nothing]"}', "unknown segment map 'DG1\\[Nothing\\]'"),
        ('with: "NTE[EncounterDiagnosis]"}', "maps NTE, not the segment condition is made from"),
        ('with: "NTE[Annotation]"}', "is a FHIR EncounterDiagnosis, but the map makes a Annotation"),
        (
            'with: "DG1[EpisodeOfCareDiagnosis]"}',
            "is a FHIR EncounterDiagnosis, but the map makes a EpisodeOfCareDiagnosis",
        ),
    ],
)
def test_a_bad_with_is_refused_at_load(mappings: Path, new: str, reason: str) -> None:
    (mappings / "segments/NTE_EncounterDiagnosis.yaml").write_text(
        "segment: NTE\ndatatype: EncounterDiagnosis\nrules:\n  - {from: NTE-1, to: rank, transform: to_positive_int}\n"
    )
    _replace(mappings / "messages/_patient.yaml", WITH, new)
    with pytest.raises(ConfigError) as caught:
        Converter.load(mappings)
    assert "_patient.yaml" in str(caught.value) and re.search(reason, str(caught.value)), str(caught.value)


def test_without_with_the_entry_has_only_the_condition(mappings: Path) -> None:
    _replace(mappings / "messages/_patient.yaml", ", " + WITH, "}")
    bundle = Converter.load(mappings).convert(message(MSH_ADT, PID, PV1, _dg1("1", "I10^Hypertension^I10", "A", "1")))
    (entry,) = only(bundle, "Encounter")["diagnosis"]
    assert list(entry) == ["condition"]


# -- PD1[Observation-LivingWill], PID[Provenance-Patient] -------------------------------------------


def test_a_living_will_is_an_advance_directive_observation() -> None:
    bundle = converter().convert(message(MSH_ADT, PID, "PD1|||||||F", PV1))
    (will,) = resources(bundle, "Observation")
    patient = only(bundle, "Patient")
    assert will["status"] == "final" and will["code"]["coding"][0]["code"] == "75320-2"
    assert will["valueCodeableConcept"]["coding"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v2-0315",
            "code": "F",
            "display": "Yes, patient has a living will but it is not on file",
        }
    ]
    assert will["subject"] == {"reference": f"Patient/{patient['id']}"}
    # One per patient: a later message with another answer updates the same Observation.
    again = converter().convert(message(MSH_ADT.replace("CTRL1", "CTRL2"), PID, "PD1|||||||N", PV1))
    assert only(again, "Observation")["id"] == will["id"]
    assert not resources(converter().convert(message(MSH_ADT, PID, "PD1|||||||", PV1)), "Observation")


def test_the_last_update_of_the_patient_record_is_a_provenance_of_the_patient() -> None:
    pid = segment("PID", {1: "1", 3: "12345^^^HOSP^MR", 5: "Doe^Jane", 33: "20231201101500", 34: "WESTHOSP"})
    bundle = converter().convert(message(MSH_23, pid, PV1))
    validate_bundle(bundle)
    patient, own = only(bundle, "Patient"), message_provenance(bundle)
    (update,) = [p for p in resources(bundle, "Provenance") if p is not own]
    assert update["target"] == [{"reference": f"Patient/{patient['id']}"}]
    assert update["occurredDateTime"] == "2023-12-01T10:15:00+01:00"  # in the zone of MSH-7
    assert update["recorded"] == "2024-01-01T12:00:00+01:00"  # the message time, not the clock
    assert update["activity"]["coding"][0]["code"] == "UPDATE"
    (agent,) = update["agent"]
    assert agent["type"]["coding"][0]["code"] == "performer"
    assert referenced(bundle, agent["who"])["name"] == "WESTHOSP"
    # PID-33 alone names no agent (1..*): no second Provenance.
    alone = converter().convert(message(MSH_23, pid.replace("|WESTHOSP", ""), PV1))
    assert len(resources(alone, "Provenance")) == 1


# -- PID, PV1, PV2 fields --------------------------------------------------------------------------------


def test_county_species_breed_and_tribal_citizenship() -> None:
    pid = segment(
        "PID",
        {
            1: "1",
            3: "12345^^^HOSP^MR",
            5: "Doe^Rex",
            11: "1 Main St^^Springfield^IL",
            12: "17167^Sangamon^FIPS",
            35: "448771007^Canis familiaris^SCT",
            36: "132412002^Collie^SCT",
            39: "170^Navajo Nation^HL70171",
        },
    )
    patient = only(converter().convert(message(MSH_28, pid, PV1)), "Patient")
    assert patient["address"][0]["district"] == "Sangamon"
    animal = next(e for e in patient["extension"] if e["url"].endswith("/patient-animal"))
    assert [(e["url"], e["valueCodeableConcept"]["coding"][0]["code"]) for e in animal["extension"]] == [
        ("species", "448771007"),
        ("breed", "132412002"),
    ]
    (citizenship,) = [e for e in patient["extension"] if e["url"].endswith("/patient-citizenship")]
    assert citizenship["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "170"
    # A county the address names itself (XAD.9) stays; a breed without a species makes no animal.
    own = pid.replace("Springfield^IL", "Springfield^IL^^^^^Menard").replace("448771007^Canis familiaris^SCT", "")
    patient = only(converter().convert(message(MSH_28, own, PV1)), "Patient")
    assert patient["address"][0]["district"] == "Menard"
    assert not any(e["url"].endswith("/patient-animal") for e in patient.get("extension", []))


def test_discharged_to_location_is_the_hospitalization_destination() -> None:
    pv1 = segment(
        "PV1", {1: "1", 2: "I", 19: "V1^^^HOSP^VN", 37: "SNF&Skilled nursing facility&L^20240105", 45: "20240105"}
    )
    bundle = converter().convert(message(MSH_28.replace("ADT^A01^ADT_A01", "ADT^A03^ADT_A03"), PID, pv1))
    validate_bundle(bundle)
    destination = referenced(bundle, only(bundle, "Encounter")["hospitalization"]["destination"])
    assert destination["resourceType"] == "Location" and destination["name"] == "Skilled nursing facility"
    assert destination["type"][0]["coding"][0]["code"] == "SNF"


def test_visit_description_is_the_narrative_and_a_protected_visit_is_restricted() -> None:
    pv2 = segment("PV2", {12: "Observe <24h> after fall", 22: "Y"})
    encounter = only(converter().convert(message(MSH_ADT, PID, PV1, pv2)), "Encounter")
    assert encounter["text"] == {
        "status": "additional",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">Observe &lt;24h&gt; after fall</div>',
    }
    assert encounter["meta"]["security"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R", "display": "restricted"}
    ]
    open_visit = only(converter().convert(message(MSH_ADT, PID, PV1, segment("PV2", {22: "N"}))), "Encounter")
    assert "meta" not in open_visit


# -- IN1 subscriber, NK1, PR1 ---------------------------------------------------------------------------


def test_the_subscriber_is_the_patient_or_the_insured_of_the_same_in1() -> None:
    spouse = segment("IN1", {1: "1", 2: "P1", 3: "I1", 4: "Acme", 16: "Doe^John", 17: "SPO", 18: "19790202"})
    self_ = segment("IN1", {1: "2", 2: "P2", 3: "I2", 4: "Beta", 16: "Doe^Jane", 17: "SEL"})
    unknown = segment("IN1", {1: "3", 2: "P3", 3: "I3", 4: "Gamma"})
    bundle = converter().convert(message(MSH_ADT, PID, PV1, spouse, self_, unknown))
    validate_bundle(bundle)
    patient = only(bundle, "Patient")
    acme, beta, gamma = resources(bundle, "Coverage")
    john = referenced(bundle, acme["subscriber"])
    assert john["resourceType"] == "RelatedPerson" and john["name"] == [{"family": "Doe", "given": ["John"]}]
    assert john["birthDate"] == "1979-02-02" and john["patient"] == {"reference": f"Patient/{patient['id']}"}
    assert acme["relationship"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
        "code": "spouse",
        "display": "Spouse",
    }
    assert beta["subscriber"] == {"reference": f"Patient/{patient['id']}"}
    assert beta["relationship"]["coding"][0]["code"] == "self"
    assert "subscriber" not in gamma  # not the subscriber of another IN1's group
    assert len(resources(bundle, "RelatedPerson")) == 1


def test_next_of_kin_ssn_and_contact_telecom() -> None:
    nk1 = segment("NK1", {1: "1", 2: "Doe^John", 3: "SPO", 37: "123-45-6789", 41: "^PRN^CP^^^555^1234567"})
    bundle = converter().convert(message(MSH_28, PID, nk1, PV1))
    person = only(bundle, "RelatedPerson")
    ssn = next(i for i in person["identifier"] if i.get("system") == "http://hl7.org/fhir/sid/us-ssn")
    assert ssn["value"] == "123-45-6789" and ssn["type"]["coding"][0]["code"] == "SS"
    (contact,) = only(bundle, "Patient")["contact"]
    assert [t["value"] for t in contact["telecom"]] == ["555 1234567"]  # NK1-41, the contact person's


def test_a_parent_procedure_is_what_the_procedure_is_part_of() -> None:
    pr1 = segment("PR1", {1: "1", 3: "0DTJ4ZZ^Appendectomy^I10P", 5: "20240102", 19: "P2^HOSP", 25: "P1^HOSP"})
    procedure = only(converter().convert(message(MSH_28, PID, PV1, pr1)), "Procedure")
    assert procedure["partOf"] == [{"identifier": {"value": "P1"}}]


# -- IAM reporter, IN1 employer, PID-21 mother, PV1-43 history, GT1 guarantor ---------------------------


def test_who_reported_an_adverse_reaction_is_its_recorder() -> None:
    msh = MSH_28.replace("ADT^A01^ADT_A01", "ADT^A60^ADT_A60")
    spouse = segment(
        "IAM", {1: "1", 2: "DA", 3: "70618^Penicillin^RXNORM", 7: "AL1^HOSP", 14: "Doe^John", 15: "SPO^Spouse^HL70063"}
    )
    self_ = segment("IAM", {1: "2", 2: "FA", 3: "227493005^Cashew nuts^SCT", 7: "AL2^HOSP", 14: "Doe^Jane", 15: "SEL"})
    doctor = segment("IAM", {1: "3", 2: "FA", 3: "102263004^Eggs^SCT", 7: "AL3^HOSP", 14: "Smith^Ann^^^Dr"})
    bundle = converter().convert(message(msh, "EVN|A60|20240101", PID, PV1, spouse, self_, doctor))
    validate_bundle(bundle)
    by_spouse, by_self, by_doctor = (referenced(bundle, a["recorder"]) for a in resources(bundle, "AllergyIntolerance"))
    assert by_spouse["resourceType"] == "RelatedPerson" and by_spouse["name"] == [{"family": "Doe", "given": ["John"]}]
    assert by_spouse["relationship"][0]["coding"][0]["code"] == "SPS"
    assert by_self is only(bundle, "Patient")
    assert by_doctor["resourceType"] == "Practitioner" and by_doctor["name"][0]["family"] == "Smith"


def test_the_insured_group_employer_is_the_policy_holder() -> None:
    employer = segment("IN1", {1: "1", 2: "P1", 3: "I1", 4: "Acme", 10: "S123^^^ACME^SN", 11: "Widget Corp"})
    by_id = segment("IN1", {1: "2", 2: "P2", 3: "I2", 4: "Beta", 10: "EMP77^^^STATE^EI"})
    bundle = converter().convert(message(MSH_28, PID, PV1, employer, by_id))
    first, second = resources(bundle, "Coverage")
    assert referenced(bundle, first["policyHolder"])["name"] == "Widget Corp"
    (subscriber_id,) = first["extension"]
    assert subscriber_id["url"] == "http://hl7.org/fhir/5.0/StructureDefinition/extension-Coverage.subscriberId"
    assert subscriber_id["valueIdentifier"]["value"] == "S123"
    assert referenced(bundle, second["policyHolder"])["identifier"][0]["value"] == "EMP77"
    assert "extension" not in second


def test_the_mothers_identifier_names_the_mother() -> None:
    pid = segment("PID", {1: "1", 3: "12345^^^HOSP^MR", 5: "Doe^Baby", 21: "M555^^^HOSP^MR"})
    bundle = converter().convert(message(MSH_23, pid, PV1))
    mother = only(bundle, "RelatedPerson")
    assert mother["identifier"][0]["value"] == "M555"
    assert mother["relationship"][0]["coding"][0]["code"] == "MTH"
    assert mother["patient"] == {"reference": f"Patient/{only(bundle, 'Patient')['id']}"}


def test_a_prior_temporary_location_is_an_encounter_history() -> None:
    pv1 = segment("PV1", {1: "1", 2: "I", 3: "W1^101^A", 19: "V1^^^HOSP^VN", 43: "XRAY^1^^HOSP"})
    bundle = converter().convert(message(MSH_ADT, PID, pv1))
    validate_bundle(bundle)
    history = only(bundle, "Basic")
    assert history["code"]["coding"][0]["code"] == "EncounterHistory"
    assert history["subject"] == {"reference": f"Patient/{only(bundle, 'Patient')['id']}"}
    encounter_ext, location_ext = (
        next(e for e in history["extension"] if e["url"].endswith(suffix)) for suffix in (".encounter", ".location")
    )
    assert encounter_ext["valueReference"] == {"reference": f"Encounter/{only(bundle, 'Encounter')['id']}"}
    (where,) = location_ext["extension"]
    assert where["url"] == "location" and referenced(bundle, where["valueReference"])["name"] == "XRAY 1"
    assert not resources(converter().convert(message(MSH_ADT, PID, PV1)), "Basic")


def test_guarantors_of_the_account_are_persons_or_organizations() -> None:
    pid = segment("PID", {1: "1", 3: "12345^^^HOSP^MR", 5: "Doe^Jane", 18: "ACC1^^^HOSP^AN"})
    person = segment(
        "GT1", {1: "1", 2: "G1^^^HOSP", 3: "Doe^John", 8: "19700101", 9: "M", 11: "SPO", 13: "20240101", 14: "20241231"}
    )
    company = segment("GT1", {1: "2", 3: "Widget Corp", 13: "20240101", 21: "Widget Corp^^^^^HOSP^XX^^^W1"})
    bundle = converter().convert(message(MSH_ADT, pid, PV1, person, company))
    validate_bundle(bundle)
    parties = {
        referenced(bundle, g["party"])["resourceType"]: g["period"] for g in only(bundle, "Account")["guarantor"]
    }
    assert parties == {
        "RelatedPerson": {"start": "2024-01-01", "end": "2024-12-31"},
        "Organization": {"start": "2024-01-01"},
    }
    john = only(bundle, "RelatedPerson")
    assert john["name"] == [{"family": "Doe", "given": ["John"]}] and john["birthDate"] == "1970-01-01"
    assert john["gender"] == "male" and john["relationship"][0]["coding"][0]["code"] == "SPS"


def test_procedure_minutes_make_the_performed_period() -> None:
    pr1 = segment("PR1", {1: "1", 3: "0DTJ4ZZ^Appendectomy^I10P", 5: "20240102101500", 7: "95", 19: "P2^HOSP"})
    procedure = only(converter().convert(message(MSH_28, PID, PV1, pr1)), "Procedure")
    assert procedure["performedPeriod"] == {"start": "2024-01-02T10:15:00+01:00", "end": "2024-01-02T11:50:00+01:00"}
    assert "performedDateTime" not in procedure
    without = only(converter().convert(message(MSH_28, PID, PV1, pr1.replace("|95|", "||"))), "Procedure")
    assert without["performedDateTime"] == "2024-01-02T10:15:00+01:00" and "performedPeriod" not in without


def test_the_clinician_identified_allergen_is_another_coding_of_the_allergen() -> None:
    msh = MSH_28.replace("ADT^A01^ADT_A01", "ADT^A60^ADT_A60")
    iam = segment("IAM", {1: "1", 2: "DA", 3: "70618^Penicillin^RXNORM", 7: "AL1^HOSP", 27: "7980^Penicillin G^RXNORM"})
    allergy = only(converter().convert(message(msh, "EVN|A60|20240101", PID, PV1, iam)), "AllergyIntolerance")
    assert [c["code"] for c in allergy["code"]["coding"]] == ["70618", "7980"]


def test_an_organization_next_of_kin_is_a_contact_with_the_person_to_call_there() -> None:
    nk1 = segment(
        "NK1",
        {
            1: "1",
            3: "EMR^Employer^HL70063",
            13: "Widget Corp",
            30: "Boss^Bea",
            31: "^WPN^PH^^^217^5550100",
            32: "9 Factory Rd^^Springfield^IL",
        },
    )
    bundle = converter().convert(message(MSH_28, PID, nk1, PV1))
    validate_bundle(bundle)
    (contact,) = only(bundle, "Patient")["contact"]
    assert referenced(bundle, contact["organization"])["name"] == "Widget Corp"
    assert contact["name"] == {"family": "Boss", "given": ["Bea"]}
    assert contact["telecom"] == [{"value": "217 5550100", "use": "work", "system": "phone"}]
    assert contact["address"] == {"line": ["9 Factory Rd"], "city": "Springfield", "state": "IL"}
    assert not resources(bundle, "RelatedPerson")  # an organization is no related person
