"""The converter's public behaviour: support, errors for bad content, ids, determinism, bundle shape."""

from __future__ import annotations

import pytest

from gateway import fhirjson
from gateway.convert.functions.ids import resource_id
from gateway.convert.runtime.engine import Converter, default_mappings_dir
from gateway.errors import ConfigError, MappingError
from gateway.validate import validate_bundle
from tests.support.convert import (
    MSH_ADT,
    PID,
    PV1,
    converter,
    message,
    message_provenance,
    only,
    resources,
    sample_message,
    segment,
)

ALL_SAMPLES = [
    "v2-to-fhir-ig/ADT_A01.hl7",
    "v2-to-fhir-ig/ORU_R01.hl7",
    "ms-fhir-converter/ADT-A04-01.hl7",
    "ms-fhir-converter/LAB-ORU-1.hl7",
    "ms-fhir-converter/ORU-R01-01.hl7",
]


def test_load_defaults_to_the_repository_mappings() -> None:
    assert default_mappings_dir().name == "mappings" and default_mappings_dir().is_dir()
    loaded = Converter.load()
    for code, trigger in (
        ("ADT", "A01"),
        ("ADT", "A03"),
        ("ADT", "A40"),
        ("ORU", "R01"),
        ("SIU", "S26"),
        ("PPR", "PC3"),
    ):
        assert loaded.supports(code, trigger)
    assert not loaded.supports("ADT", "A99")
    assert not loaded.supports("_common", "")  # an abstract map is no message type
    assert not loaded.supports("", "patient")


def test_missing_mappings_dir_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Converter.load(tmp_path / "nowhere")


def test_unsupported_message_type() -> None:
    msg = message("MSH|^~\\&|A|B|C|D|20240101||ZZZ^Z12|1|P|2.5", PID)
    with pytest.raises(MappingError, match=r"no mapping for message type ZZZ\^Z12 \(supported: ADT\^A01"):
        converter().convert(msg)


def test_no_pid_is_a_mapping_error() -> None:
    with pytest.raises(MappingError, match="no PID segment, so no Patient"):
        converter().convert(message(MSH_ADT, "EVN|A01", PV1))


def test_empty_patient_identifiers_is_a_mapping_error() -> None:
    with pytest.raises(MappingError, match="no business identifier to derive the Patient id") as raised:
        converter().convert(message(MSH_ADT, "PID|1||^^^HOSP^MR||Doe^Jane", PV1))
    # Where, in an analyst's words: the segment and its place, the fields by their HL7 names, the rule.
    assert str(raised.value) == (
        "conversion failed at PID#2 (PID-2 Patient ID, PID-3 Patient Identifier List): no business identifier "
        "to derive the Patient id from (map PID[Patient], rule id: patient)"
    )
    assert raised.value.location()["segment"] == "PID#2" and "Doe" not in str(raised.value)


def test_a_required_field_names_its_segment_field_and_map() -> None:
    oru = "MSH|^~\\&|Lab|LabFac|A|B|||ORU^R01^ORU_R01|9|P|2.3"
    with pytest.raises(MappingError) as raised:
        converter().convert(message(oru, PID, "OBR|1|P1|F1|GLU^Glucose^L"))
    assert str(raised.value) == (
        "conversion failed at MSH#1 (MSH-7 Date Time Of Message): MSH-7 is empty or unusable, "
        "but Provenance.recorded is required (map MSH[Provenance])"
    )


def test_missing_required_code_leaves_that_resource_out_with_a_note() -> None:
    oru = "MSH|^~\\&|Lab|LabFac|A|B|20240101120000+0100||ORU^R01^ORU_R01|9|P|2.5.1"
    obr = "OBR|1|P1|F1|GLU^Glucose^L"
    conversion = converter().convert_with_report(message(oru, PID, obr, "OBX|1|NM|||5.5|mmol/L|||||F"))
    assert not resources(conversion.bundle, "Observation") and "result" not in only(
        conversion.bundle, "DiagnosticReport"
    )
    assert any("OBX-3 is empty or unusable, but Observation.code is required" in n for n in conversion.notes)
    # The message's own resource (the Provenance, from MSH) cannot be left out: the message fails.
    with pytest.raises(MappingError, match=r"MSH-7 is empty or unusable, but Provenance.recorded is required"):
        converter().convert(message(oru.replace("20240101120000+0100", ""), PID, obr))


def test_conversion_is_deterministic_to_the_byte() -> None:
    for path in ALL_SAMPLES:
        first = fhirjson.dumps(converter().convert(sample_message(path)))
        again = fhirjson.dumps(Converter.load().convert(sample_message(path)))
        assert first == again


def test_patient_id_prefers_the_mr_identifier() -> None:
    pid = "PID|1||X9^^^OTHER^PI~12345^^^HOSP^MR||Doe^Jane"
    bundle = converter().convert(message(MSH_ADT, pid, PV1))
    assert only(bundle, "Patient")["id"] == resource_id("Patient", "HOSP|12345")
    # Without an MR identifier, the first one.
    bundle = converter().convert(message(MSH_ADT, "PID|1||X9^^^OTHER^PI~77^^^B^AN||Doe", PV1))
    assert only(bundle, "Patient")["id"] == resource_id("Patient", "OTHER|X9")


def test_same_business_identifiers_give_the_same_ids_across_messages() -> None:
    """An A08 update writes the resources the A01 made: same Patient and Encounter ids."""
    a01 = converter().convert(message(MSH_ADT, PID, PV1))
    msh_a08 = MSH_ADT.replace("ADT^A01^ADT_A01|CTRL1", "ADT^A08^ADT_A01|CTRL2")
    a08 = converter().convert(message(msh_a08, PID.replace("Doe^Jane", "Doe^Janet"), PV1))
    for rtype in ("Patient", "Encounter"):
        assert only(a01, rtype)["id"] == only(a08, rtype)["id"]
    assert message_provenance(a01)["id"] != message_provenance(a08)["id"]
    assert only(a08, "Patient")["name"][0]["given"] == ["Janet"]


def test_encounter_id_without_visit_number_uses_patient_and_admit_time() -> None:
    pv1 = segment("PV1", {1: "1", 2: "O", 44: "20240101110000"})
    bundle = converter().convert(message(MSH_ADT, PID, pv1))
    patient_id = only(bundle, "Patient")["id"]
    assert only(bundle, "Encounter")["id"] == resource_id("Encounter", f"admit|{patient_id}|20240101110000")


def test_observation_ids_from_report_and_set_id() -> None:
    oru = "MSH|^~\\&|Lab|LabFac|A|B|20240101120000+0100||ORU^R01^ORU_R01|9|P|2.5.1"
    lines = [oru, PID, "ORC|RE|P1^OE|F1^LAB", "OBR|1|P1^OE|F1^LAB|GLU^Glucose^L"]
    lines += ["OBX|1|NM|GLU^Glucose^L||5.5|mmol/L|||||F", "OBX|2|NM|NA^Sodium^L||140|mmol/L|||||F"]
    bundle = converter().convert(message(*lines))
    report = only(bundle, "DiagnosticReport")
    assert report["id"] == resource_id("DiagnosticReport", "filler|LAB|F1")
    ids = [o["id"] for o in resources(bundle, "Observation")]
    assert ids == [resource_id("Observation", f"{report['id']}|OBSERVATION|{n}|") for n in (1, 2)]
    # Reordering the OBX segments does not change which id each result gets.
    swapped = converter().convert(message(*lines[:4], lines[5], lines[4]))
    assert [o["id"] for o in resources(swapped, "Observation")] == ids[::-1]


def test_duplicate_keys_get_distinct_ids_and_no_duplicate_entries() -> None:
    oru = "MSH|^~\\&|Lab|LabFac|A|B|20240101120000+0100||ORU^R01^ORU_R01|9|P|2.5.1"
    obx = "OBX|1|NM|GLU^Glucose^L||5.5|mmol/L|||||F"
    bundle = converter().convert(message(oru, PID, "OBR|1|P1|F1|GLU^Glucose^L", obx, obx.replace("5.5", "6.1")))
    validate_bundle(bundle)
    ids = [o["id"] for o in resources(bundle, "Observation")]
    assert len(set(ids)) == 2
    # A second PATIENT_RESULT for the same patient reuses the Patient instead of repeating it.
    repeated = converter().convert(message(oru, PID, "OBR|1|P1|F1|GLU", obx, PID, "OBR|1|P2|F2|NA", obx))
    validate_bundle(repeated)
    assert len(resources(repeated, "Patient")) == 1
    assert len(resources(repeated, "DiagnosticReport")) == 2


def test_bundle_shape() -> None:
    bundle = converter().convert(message(MSH_ADT, PID, PV1))
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
        assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    encounter = only(bundle, "Encounter")
    assert encounter["status"] == "in-progress"
    assert encounter["class"]["code"] == "IMP"
    assert encounter["period"] == {"start": "2024-01-01T11:00:00+01:00"}
    validate_bundle(bundle)


def test_timestamps_without_offset_keep_only_the_date() -> None:
    msh = MSH_ADT.replace("20240101120000+0100", "20240101120000")
    pid = segment("PID", {3: "1^^^H^MR", 5: "Doe", 7: "198001011230", 8: "F", 29: "200301021530"})
    bundle = converter().convert(message(msh, pid, PV1))
    patient = only(bundle, "Patient")
    assert patient["birthDate"] == "1980-01-01"
    assert "_birthDate" not in patient  # no birthTime without a zone
    assert patient["deceasedDateTime"] == "2003-01-02"
    # Provenance.recorded is an instant and must have a zone: read as UTC.
    assert message_provenance(bundle)["recorded"] == "2024-01-01T12:00:00Z"


def test_unmapped_code_keeps_its_coding_in_the_v2_table_system() -> None:
    pid = segment("PID", {3: "12345^^^HOSP^MR", 5: "Doe", 16: "X^Unusual^HL70002"})  # not in table 0002
    conversion = converter().convert_with_report(message(MSH_ADT, pid, PV1))
    status = only(conversion.bundle, "Patient")["maritalStatus"]
    assert status == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0002", "code": "X", "display": "Unusual"}]
    }
    assert any("not in table MaritalStatus" in note for note in conversion.notes)


def test_unmapped_required_binding_code_is_left_out_not_invented() -> None:
    pid = PID.replace("|F", "|Q")
    bundle = converter().convert(message(MSH_ADT, pid, PV1))
    assert "gender" not in only(bundle, "Patient")


def test_value_types() -> None:
    oru = "MSH|^~\\&|Lab|LabFac|A|B|20240101120000+0100||ORU^R01^ORU_R01|9|P|2.5.1"
    obx = [
        "OBX|1|ST|A^a^L||free text \\T\\ more|||||F",
        "OBX|2|TX|B^b^L||line one~line two|||||F",
        "OBX|3|CWE|C^c^L||260385009^Negative^SCT|||||F",
        "OBX|4|SN|D^d^L||>=^10|mg|||||F",
        "OBX|5|SN|E^e^L||^1^-^5|mg|||||F",
        "OBX|6|SN|F^f^L||^1^:^128||||||F",
        "OBX|7|DTM|G^g^L||202401021030+0100|||||F",
        "OBX|8|NM|H^h^L||-0.5|mmol/L^millimole per liter^UCUM|||||C",
        "OBX|9|ED|I^i^L||^AP^PDF^Base64^AAAA|||||F",
    ]
    conversion = converter().convert_with_report(message(oru, PID, "OBR|1|P1|F1|X^x^L", *obx))
    validate_bundle(conversion.bundle)
    values = [
        {k: v for k, v in o.items() if k.startswith("value")} for o in resources(conversion.bundle, "Observation")
    ]
    assert values[0] == {"valueString": "free text & more"}
    assert values[1] == {"valueString": "line one\nline two"}
    assert values[2]["valueCodeableConcept"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "260385009",
        "display": "Negative",
    }
    assert values[3] == {"valueQuantity": {"value": 10, "comparator": ">=", "unit": "mg"}}
    assert values[4] == {"valueRange": {"low": {"value": 1, "unit": "mg"}, "high": {"value": 5, "unit": "mg"}}}
    assert values[5] == {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}}
    assert values[6] == {"valueDateTime": "2024-01-02T10:30:00+01:00"}
    assert values[7] == {
        "valueQuantity": {
            "value": -0.5,
            "unit": "millimole per liter",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        }
    }
    assert values[8] == {}  # R4 Observation has no valueAttachment: the data is a DocumentReference
    document = only(conversion.bundle, "DocumentReference")
    assert document["content"] == [{"attachment": {"contentType": "application/pdf", "data": "AAAA"}}]
    assert resources(conversion.bundle, "Observation")[8]["derivedFrom"] == [
        {"reference": f"DocumentReference/{document['id']}"}
    ]
    assert resources(conversion.bundle, "Observation")[7]["status"] == "corrected"


def test_unused_segments_are_reported() -> None:
    conversion = converter().convert_with_report(sample_message("ms-fhir-converter/ADT-A01-01.hl7"))
    assert {"DB1#13", "PDA#24"} <= set(conversion.unused_segments)  # GT1#19: a guarantor now
    assert "SFT#2" not in conversion.unused_segments  # the MessageHeader's software, and a Device
    assert not any(s.startswith(("MSH", "PID", "PV1#", "OBX", "AL1")) for s in conversion.unused_segments)
    # The IG's ADT_A01 uses every segment it maps (IG message map ADT_A01).
    assert converter().convert_with_report(sample_message("v2-to-fhir-ig/ADT_A01.hl7")).unused_segments == []


def test_segments_out_of_structure_are_unused_not_lost() -> None:
    """A Z-segment or a segment out of order never breaks grouping; it is reported."""
    lines = [MSH_ADT, PID, "ZPI|1|custom", PV1, "OBX|1|NM|8302-2^Height^LN||170|cm|||||F"]
    conversion = converter().convert_with_report(message(*lines))
    assert conversion.unused_segments == ["ZPI#3"]
    observation = only(conversion.bundle, "Observation")
    assert observation["encounter"] == {"reference": f"Encounter/{only(conversion.bundle, 'Encounter')['id']}"}


def test_memoized_results_are_copies() -> None:
    """Repeated values come from the converter's memo; changing one bundle never leaks into the next."""
    loaded = Converter.load()
    path = "v2-to-fhir-ig/ORU_R01.hl7"
    first = loaded.convert_with_report(sample_message(path))
    patient = only(first.bundle, "Patient")
    patient["identifier"][0]["value"] = "changed"
    patient["name"].append({"family": "Extra"})
    resources(first.bundle, "Observation")[0]["valueQuantity"]["unit"] = "changed"
    again = loaded.convert_with_report(sample_message(path))
    loaded.clear_caches()
    fresh = loaded.convert_with_report(sample_message(path))
    assert again.bundle == fresh.bundle
    assert only(again.bundle, "Patient")["identifier"][0]["value"] == "1032702"
    assert again.notes == fresh.notes == first.notes and fresh.notes  # notes are replayed on a hit


def test_memo_keys_on_separators() -> None:
    """The same bytes mean different values under different encoding characters."""
    loaded = Converter.load()
    standard = loaded.convert(message(MSH_ADT, "PID|1||12345^^^HOSP^MR||Doe#Jane^X", PV1))
    other_msh = MSH_ADT.replace("^", "#")
    other = loaded.convert(message(other_msh, "PID|1||12345###HOSP#MR||Doe#Jane^X", PV1))
    assert only(standard, "Patient")["name"][0] == {"family": "Doe#Jane", "given": ["X"]}
    assert only(other, "Patient")["name"][0] == {"family": "Doe", "given": ["Jane^X"]}


def test_structure_from_msh_9_3_else_from_the_trigger() -> None:
    """MSH-9.3 names the structure (chapter 2.14.9.9); without it, or when it names no structure we
    know (the MS samples' ADT_A04), the trigger's structure (ADT_A01 for A04) groups the segments."""
    lines = [PID, PV1, "OBX|1|NM|8302-2^Height^LN||170|cm|||||F", "AL1|1|DA|1605^Penicillin^L"]
    for msh_9 in ("ADT^A04", "ADT^A04^ADT_A01", "ADT^A04^ADT_A04"):
        msh = MSH_ADT.replace("ADT^A01^ADT_A01", msh_9)
        conversion = converter().convert_with_report(message(msh, "EVN|A04", *lines))
        assert conversion.unused_segments == [], msh_9
        assert only(conversion.bundle, "Encounter")["status"] == "planned"  # A04 (IG Event[EncounterStatus])
        assert only(conversion.bundle, "AllergyIntolerance")["code"]["coding"][0]["code"] == "1605"


def test_memo_is_bounded_in_bytes_and_skips_long_texts() -> None:
    """The memo stores of a mapping set share a byte budget, and a long value (a report's text, an
    attachment) is converted without being kept: neither a feed of distinct values nor one large
    message grows the converter's memory."""
    from gateway.convert.compilation.memo import MAX_MEMO_TEXT, MemoBudget

    loaded = Converter.load()
    memos = loaded.base.mappings.memos
    assert isinstance(memos, MemoBudget) and memos.limit > 0
    long_value = "R" * (MAX_MEMO_TEXT + 1)
    obx = f"OBX|1|TX|8302-2^Height^LN||{long_value}||||||F"
    bundle = loaded.convert(message(MSH_ADT, PID, PV1, obx))
    assert long_value in str(bundle)
    kept = [key for store in memos.stores for key in store]
    assert kept and not any(isinstance(part, str) and long_value in part for key in kept for part in key)
    # A small budget: distinct values fill it, then everything starts over.
    memos.limit = 20_000
    for n in range(40):
        loaded.convert(message(MSH_ADT, f"PID|1||{n}^^^HOSP^MR||Doe{n}^Jane", PV1))
        assert memos.used <= memos.limit
    assert sum(len(store) for store in memos.stores) < 40


def test_resource_ids_of_long_keys_are_made_but_not_cached() -> None:
    """Ids are cached by key (feeds name the same patients again), but a junk identifier of any length
    in a bad message must not be kept: the cache holds 65,536 keys, which could be megabytes each."""
    from gateway.convert.functions.ids import _cached_id

    before = _cached_id.cache_info().currsize
    long_key = "M" * 100_000
    assert resource_id("Patient", long_key) == resource_id("Patient", long_key)  # the same id, from the key
    assert resource_id("Patient", long_key) != resource_id("Patient", long_key[:-1])
    assert _cached_id.cache_info().currsize == before
    resource_id("Patient", f"short-{before}")
    assert _cached_id.cache_info().currsize == before + 1
