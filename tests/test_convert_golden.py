"""Golden tests: each sample message beside the bundle it must convert to (tests/golden/).

Regenerate after a reviewed mapping change with ``HL7GW_UPDATE_GOLDEN=1 pytest tests/test_convert_golden.py``
and read the diff before accepting it. The bundle is a pure function of the message, so nothing
volatile needs removing before the comparison.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from gateway.validate import validate_bundle
from tests.conftest import SAMPLES
from tests.test_convert_helpers import converter, only, resources, sample_message

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("HL7GW_UPDATE_GOLDEN") == "1"

CASES = {
    "ig-ADT_A01": "v2-to-fhir-ig/ADT_A01.hl7",
    "ig-ORU_R01": "v2-to-fhir-ig/ORU_R01.hl7",
    "ms-ADT-A01-01": "ms-fhir-converter/ADT-A01-01.hl7",  # v2.8
    "ms-ADT-A04-01": "ms-fhir-converter/ADT-A04-01.hl7",
    "ms-ADT-A08-01": "ms-fhir-converter/ADT-A08-01.hl7",
    "ms-ADT01-23": "ms-fhir-converter/ADT01-23.hl7",  # v2.3, no MSH-9.3
    "ms-ORU-R01-01": "ms-fhir-converter/ORU-R01-01.hl7",  # v2.5.1, every ORU group
    "ms-ORU-R01-RMGEAD": "ms-fhir-converter/ORU-R01-RMGEAD.hl7",  # v2.4
    "ms-LAB-ORU-1": "ms-fhir-converter/LAB-ORU-1.hl7",  # v2.5, byte order mark, two orders
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bundle_matches_golden(name: str) -> None:
    bundle = converter().convert(sample_message(CASES[name]))
    golden = GOLDEN / f"{name}.fhir.json"
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n")
    assert golden.exists(), f"no golden file; create it with HL7GW_UPDATE_GOLDEN=1 ({golden})"
    assert bundle == orjson.loads(golden.read_bytes())


def _supported_samples() -> list[str]:
    found = []
    for path in sorted(SAMPLES.glob("*/*.hl7")):
        rel = str(path.relative_to(SAMPLES))
        code, trigger, _ = sample_message(rel).message_type
        if converter().supports(code, trigger):
            found.append(rel)
    return found


SUPPORTED = _supported_samples()


def test_every_adt_and_oru_sample_is_supported() -> None:
    assert len(SUPPORTED) >= 15
    assert {"v2-to-fhir-ig/ADT_A01.hl7", "v2-to-fhir-ig/ORU_R01.hl7"} <= set(SUPPORTED)


@pytest.mark.parametrize("path", SUPPORTED)
def test_every_supported_sample_converts_to_a_valid_bundle(path: str) -> None:
    bundle = converter().convert(sample_message(path))
    validate_bundle(bundle)
    provenance = only(bundle, "Provenance")
    others = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Provenance"]
    assert len(provenance["target"]) == len(others)


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
    encounter = only(bundle, "Encounter")
    assert encounter["class"]["code"] == "EMER"
    assert encounter["identifier"][0]["value"] == "81456267"
    assert encounter["subject"] == {"reference": f"Patient/{patient['id']}"}
    height = only(bundle, "Observation")
    assert height["valueQuantity"] == {
        "value": 190,
        "unit": "centimeter",
        "system": "http://unitsofmeasure.org",
        "code": "cm",
    }


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
    patient = only(bundle, "Patient")
    assert report["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert all(o["subject"] == report["subject"] for o in observations)
    note = report["extension"][0]
    assert note["url"] == "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note"
    assert note["valueAnnotation"]["text"] == "Allergy test interpretations are subjective."


def test_provenance_names_the_message() -> None:
    bundle = converter().convert(sample_message("v2-to-fhir-ig/ADT_A01.hl7"))
    provenance = only(bundle, "Provenance")
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
