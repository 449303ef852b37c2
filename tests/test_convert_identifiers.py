"""Identifier systems (issue 14, item 6): an assigning authority becomes Identifier.system by the
IG's CX.4 rule, known OIDs and namespaces as their canonical URIs, a site's namespaces by its table."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.convert.runtime.engine import Converter, default_mappings_dir
from gateway.errors import MappingError
from gateway.hl7.charset import decode_message
from gateway.hl7.message import parse
from tests.conftest import SAMPLES
from tests.support.convert import MSH_ADT, PV1, converter, message, only, resources

CORPUS = sorted(p for folder in ("ms-fhir-converter", "v2-to-fhir-ig") for p in (SAMPLES / folder).glob("*.hl7"))
_MISLABELLED = {"MDM_01.hl7", "SIU_12.hl7", "OML-O21-02.hl7"}


def _systems(conv: Converter, pid3: str) -> list[tuple[str | None, str]]:
    patient = only(conv.convert(message(MSH_ADT, f"PID|1||{pid3}||Doe^Jane", PV1)), "Patient")
    return [(i.get("system"), i["value"]) for i in patient["identifier"]]


@pytest.mark.parametrize(
    ("cx", "system"),
    [
        ("123456789^^^&2.16.840.1.113883.4.1&ISO^SS", "http://hl7.org/fhir/sid/us-ssn"),
        ("123456789^^^SSA^SS", "http://hl7.org/fhir/sid/us-ssn"),
        ("1234567893^^^&2.16.840.1.113883.4.6&ISO^NPI", "http://hl7.org/fhir/sid/us-npi"),
        ("77^^^LAB&1.2.840.1&ISO^MR", "urn:oid:1.2.840.1"),
        ("77^^^&3a3f4c1e-5f0b-4a4c-9a8e-2b9d1f0e7c11&UUID^MR", "urn:uuid:3a3f4c1e-5f0b-4a4c-9a8e-2b9d1f0e7c11"),
        ("77^^^https://hospital.example.org/mrn^MR", "https://hospital.example.org/mrn"),
        # A namespace no line names: under the table's `*` base, percent-encoded (never no system).
        ("77^^^HOSP^MR", "urn:hl7gw:v2-namespace:HOSP"),
        ("77^^^Good Health^MR", "urn:hl7gw:v2-namespace:Good%20Health"),
        ("77^^^^MR", None),  # no authority named: nothing to say
    ],
)
def test_the_assigning_authority_becomes_the_system(cx: str, system: str | None) -> None:
    assert _systems(converter(), cx) == [(system, cx.split("^")[0])]


def test_a_site_names_its_own_namespaces(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "tables").mkdir(parents=True)
    shipped = (default_mappings_dir() / "tables/IdentifierSystem.yaml").read_text()
    (site / "tables/IdentifierSystem.yaml").write_text(shipped + "  HOSP: https://hospital.example.org/fhir/sid/mrn\n")
    conv = Converter.load(overlay_dir=site)
    assert _systems(conv, "77^^^HOSP^MR~9^^^SSA^SS") == [
        ("https://hospital.example.org/fhir/sid/mrn", "77"),
        ("http://hl7.org/fhir/sid/us-ssn", "9"),
    ]
    site_base = shipped.replace('"*": "urn:hl7gw:v2-namespace:"', '"*": "https://hospital.example.org/fhir/sid/"')
    (site / "tables/IdentifierSystem.yaml").write_text(site_base)
    assert _systems(Converter.load(overlay_dir=site), "77^^^EPI^MR") == [
        ("https://hospital.example.org/fhir/sid/EPI", "77")
    ]
    assert (
        only(conv.convert(message(MSH_ADT, "PID|1||77^^^HOSP^MR||Doe^Jane", PV1)), "Patient")["id"]
        == only(converter().convert(message(MSH_ADT, "PID|1||77^^^HOSP^MR||Doe^Jane", PV1)), "Patient")["id"]
    )  # the Patient's id does not depend on the system: nothing stored moves


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_every_corpus_patient_identifier_with_an_authority_has_a_system(path: Path) -> None:
    """US Core: Patient.identifier.system. Every PID-3 repetition that names its assigning authority
    (CX.4) is an identifier with a system."""
    msg = parse(decode_message(path.read_bytes()))
    try:
        bundle = Converter.load(unplaced="note").convert(msg) if path.name in _MISLABELLED else converter().convert(msg)
    except MappingError:
        pytest.skip("not a message this trigger converts")
    named = {rep[1].value for pid in msg.all("PID") for rep in pid.repetitions(3) if rep[4].value}
    for patient in resources(bundle, "Patient"):
        for identifier in patient.get("identifier", []):
            if identifier["value"] in named:
                assert identifier.get("system"), identifier["value"]
