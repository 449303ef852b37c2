"""Identifier systems (issue 14, item 6): an assigning authority becomes Identifier.system by the
IG's CX.4 rule, known OIDs and namespaces as their canonical URIs, a site's namespaces by its table."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.convert.runtime.engine import Converter, default_mappings_dir
from tests.support.convert import MSH_ADT, PV1, converter, message, only


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
        ("77^^^HOSP^MR", None),
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
    assert (
        only(conv.convert(message(MSH_ADT, "PID|1||77^^^HOSP^MR||Doe^Jane", PV1)), "Patient")["id"]
        == only(converter().convert(message(MSH_ADT, "PID|1||77^^^HOSP^MR||Doe^Jane", PV1)), "Patient")["id"]
    )  # the Patient's id does not depend on the system: nothing stored moves
