"""Golden tests: each message in samples/<TRIGGER>/ beside the bundle it must convert to
(<name>.fhir.json), and every sample message converts to a bundle that two validators accept.

Regenerate after a reviewed mapping change with ``HL7GW_UPDATE_GOLDEN=1 pytest tests/test_convert_golden.py``
and read the diff before accepting it. The bundle is a pure function of the message; the comparison
still drops what would be volatile in a bundle (Bundle.id, timestamp, meta.lastUpdated) should a map
ever write it.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import fhirkit
import orjson
import pytest

from gateway.convert.runtime.engine import Converter
from gateway.errors import MappingError
from gateway.hl7.charset import decode_message
from gateway.hl7.message import parse
from gateway.validate import validate_bundle
from tests.conftest import SAMPLES
from tests.support.convert import converter, message_provenance, only, resources, sample_message

UPDATE = os.environ.get("HL7GW_UPDATE_GOLDEN") == "1"
#: samples/<MSG_TRIGGER>/ folders: the golden copies, one folder per trigger event.
GOLDEN = sorted(p for p in SAMPLES.glob("[A-Z][A-Z][A-Z]_*/*.hl7"))
#: The corpus the samples come from (MS FHIR-Converter and the v2-to-FHIR IG), every message.
CORPUS = sorted(p for folder in ("ms-fhir-converter", "v2-to-fhir-ig") for p in (SAMPLES / folder).glob("*.hl7"))
_VOLATILE = ("lastUpdated", "timestamp")


def strip_volatile(value: Any) -> Any:
    """The bundle without the values that could differ between two runs."""
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def _convert(path: Path) -> dict:
    return converter().convert(parse(decode_message(path.read_bytes())))


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_bundle_matches_golden(path: Path) -> None:
    bundle = _convert(path)
    if path.name.startswith("hl7gw-"):  # ours (the corpus copies are validated below)
        validate_bundle(bundle)
        assert [str(i) for i in fhirkit.validate(bundle) if i.severity == "error"] == []
    golden = path.with_suffix(".fhir.json")
    if UPDATE:
        golden.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n")
    assert golden.exists(), f"no golden file; create it with HL7GW_UPDATE_GOLDEN=1 ({golden})"
    assert strip_volatile(bundle) == strip_volatile(orjson.loads(golden.read_bytes()))


def test_every_trigger_has_a_golden_sample() -> None:
    triggers = {p.parent.name for p in GOLDEN}
    corpus = {"_".join(parse(decode_message(p.read_bytes())).message_type[:2]) for p in CORPUS}
    assert len(corpus) == 60
    assert corpus <= triggers
    for path in GOLDEN:  # a golden copy sits in the folder of its trigger
        assert "_".join(parse(decode_message(path.read_bytes())).message_type[:2]) == path.parent.name


#: Corpus messages whose MSH-9 names another type than their segments follow (an MDM and an SIU sent
#: as ADT, an OML as ORM^O01): the segments that fit nowhere, which make them dead letters by default.
MISLABELLED = {
    "MDM_01.hl7": ("ADT_A01", "ORC#6, TQ1#7, OBR#8, NTE#9, TXA#10, ORC#11, OBR#12"),
    "SIU_12.hl7": (
        "ADT_A60",
        "SCH#2, PD1#4, OBX#7, DG1#8, RGS#9, AIS#10, AIG#12, AIL#14, AIP#16, RGS#17, AIS#18, AIG#19, AIL#20, AIP#21",
    ),
    "OML-O21-02.hl7": ("ORM_O01", "TQ1#5, SPM#12, SPM#16"),
}


@functools.cache
def _noting_converter() -> Converter:
    return Converter.load(unplaced="note")


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_corpus_message_converts_to_a_valid_bundle(path: Path) -> None:
    """fhir.resources R4B models plus our checks, and the independent FHIR R4 validator fhirkit.
    A message with segments that fit nowhere is refused naming them, or, by the sender's setting,
    converted without them and noted on the Provenance; never converted as if they were not there."""
    message = parse(decode_message(path.read_bytes()))
    if path.name in MISLABELLED:
        structure, unplaced = MISLABELLED[path.name]
        with pytest.raises(MappingError, match=re.escape(f"{unplaced} fit nowhere in the {structure} structure")):
            converter().convert(message)
        bundle = _noting_converter().convert(message)
        provenance = message_provenance(bundle)
        notes = [e["valueAnnotation"]["text"] for e in provenance["extension"] if e["url"].endswith("/note")]
        assert notes == [f"Not converted: {unplaced}, which fit nowhere in the {structure} structure"]
    else:
        bundle = converter().convert(message)
    validate_bundle(bundle)
    problems = [str(issue) for issue in fhirkit.validate(bundle) if issue.severity == "error"]
    assert problems == []
    provenance = message_provenance(bundle)
    targets = {t["reference"] for t in provenance["target"]}
    others = {e["request"]["url"] for e in bundle["entry"]} - {f"Provenance/{provenance['id']}"}
    assert targets == others


# --- key facts, stated explicitly so that a bad golden file cannot hide them -------------------------


def test_ig_adt_a01_patient() -> None:
    bundle = converter().convert(sample_message("v2-to-fhir-ig/ADT_A01.hl7"))
    patient = only(bundle, "Patient")
    assert patient["identifier"][0]["value"] == "1032702"
    assert patient["identifier"][0]["type"]["coding"][0]["code"] == "MR"
    official = patient["name"][0]
    assert official["family"] == "Everywoman"
    assert official["given"][0] == "Eve"
    assert patient["birthDate"] == "1970-06-01"
    assert patient["gender"] == "female"
    assert patient["maritalStatus"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
        "code": "M",
        "display": "Married",
    }
    race = next(e for e in patient["extension"] if e["url"].endswith("us-core-race"))
    assert [e["valueCoding"]["code"] for e in race["extension"] if e["url"] == "ombCategory"] == ["1002-5", "2106-3"]
    encounter = only(bundle, "Encounter")
    assert encounter["class"]["code"] == "EMER"
    assert encounter["status"] == "in-progress"  # A01 (IG Event[EncounterStatus])
    assert encounter["identifier"][0]["value"] == "81456267"
    assert encounter["subject"] == {"reference": f"Patient/{patient['id']}"}
    attender = next(p for p in encounter["participant"] if p["type"][0]["coding"][0]["code"] == "ATND")
    practitioner = attender["individual"]["reference"].split("/")[1]
    assert any(
        r["id"] == practitioner and r["name"][0]["family"] == "Doctor" for r in resources(bundle, "Practitioner")
    )
    height = only(bundle, "Observation")
    assert height["valueQuantity"] == {
        "value": 190,
        "unit": "centimeter",
        "system": "http://unitsofmeasure.org",
        "code": "cm",
    }
    allergy = only(bundle, "AllergyIntolerance")
    assert allergy["code"] == {"text": "Timothy Grass"} and allergy["category"] == ["environment"]
    assert only(bundle, "Coverage")["beneficiary"] == {"reference": f"Patient/{patient['id']}"}


def test_ig_oru_r01_results() -> None:
    bundle = converter().convert(sample_message("v2-to-fhir-ig/ORU_R01.hl7"))
    observations = resources(bundle, "Observation")
    assert len(observations) == 3
    first, second, third = (o["valueQuantity"] for o in observations)
    assert first == {"value": 3.9, "unit": "kU/L"}
    assert second == {"value": 0.59, "unit": "kU/L"}
    assert third == {"value": 0.1, "comparator": "<", "unit": "kU/L"}
    assert [o["code"]["coding"][0]["code"] for o in observations] == ["6153-1", "6041-8", "6265-3"]
    assert all(o["status"] == "final" for o in observations)
    assert observations[0]["interpretation"][0]["coding"][0]["code"] == "A"
    assert observations[0]["referenceRange"][0]["text"] == "<0.10"
    report = only(bundle, "DiagnosticReport")
    assert report["status"] == "final"
    assert report["code"]["coding"][0]["code"] == "51523-9"
    assert report["result"] == [{"reference": f"Observation/{o['id']}"} for o in observations]
    order = only(bundle, "ServiceRequest")
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]
    assert order["status"] == "completed" and order["intent"] == "order"  # ORC-5 CM
    patient = only(bundle, "Patient")
    assert report["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert all(o["subject"] == report["subject"] for o in observations)
    note = report["extension"][0]
    assert note["url"] == "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note"
    assert note["valueAnnotation"]["text"] == "Allergy test interpretations are subjective."
    # ORC-12 and OBR-16 name the same ordering provider: one Practitioner.
    radon = [p for p in resources(bundle, "Practitioner") if p["name"][0]["family"] == "Radon"]
    assert len(radon) == 1
    assert order["requester"] == {"reference": f"Practitioner/{radon[0]['id']}"}


def test_provenance_names_the_message() -> None:
    bundle = converter().convert(sample_message("v2-to-fhir-ig/ADT_A01.hl7"))
    provenance = message_provenance(bundle)
    assert provenance["recorded"] == "2015-06-01T13:58:23+01:00"  # MSH-7, not the clock
    what = provenance["entity"][0]["what"]
    assert what["identifier"] == {"system": "urn:hl7gw:message", "value": "SndApp|SndFac|4637382"}
    assert "ADT^A01^ADT_A01" in what["display"]
    targets = {t["reference"] for t in provenance["target"]}
    assert targets == {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"][:-1]}
    assert bundle["entry"][-1]["resource"] is provenance


def test_observation_notes_and_two_orders() -> None:
    bundle = converter().convert(sample_message("ms-fhir-converter/LAB-ORU-1.hl7"))
    reports = resources(bundle, "DiagnosticReport")
    assert len(reports) == 2
    assert [len(r["result"]) for r in reports] == [5, 5]
    assert len({o["id"] for o in resources(bundle, "Observation")}) == 10
    pending = resources(bundle, "Observation")[0]
    assert pending["status"] == "registered"  # OBX-11 "I": specimen in lab, results pending
    assert "valueQuantity" not in pending

    bundle = converter().convert(sample_message("ms-fhir-converter/ORU-R01-01.hl7"))
    noted = [o for o in resources(bundle, "Observation") if "note" in o]
    assert [n["text"] for n in noted[0]["note"]] == ["Submission of serum", "No Antibodies Detected"]
