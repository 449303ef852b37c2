"""Loading mappings/: every mistake is caught at load and named by file and line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from gateway.convert.runtime.engine import Converter, default_mappings_dir
from gateway.errors import ConfigError
from tests.support.convert import MSH_ADT, PID, PV1, message, only


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    copy = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), copy)
    return copy


def _edit(path: Path, old: str, new: str) -> int:
    """Replace ``old`` (which must occur once) and return the 1-based line it starts on."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not unique in {path}"
    path.write_text(text.replace(old, new))
    return text[: text.index(old)].count("\n") + 1


def _load_error(root: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        Converter.load(root)
    return str(caught.value)


PID_MAP = "segments/PID_Patient.yaml"
GENDER_RULE = '{from: PID-8, to: gender, datatype: "CWE[code]", table: AdministrativeSex}'


@pytest.mark.parametrize(
    ("new", "reason"),
    [
        ('{from: PID-8, to: gender, datatype: "CWE[code]", table: Sex}', "unknown table 'Sex'"),
        ('{from: PID-8x, to: gender, datatype: "CWE[code]"}', "'PID-8x' is not a source path"),
        ('{from: PID-0, to: gender, datatype: "CWE[code]"}', "positions start at 1"),
        ("{from: XPN.1, to: gender}", "a segment map reads segment paths"),
        ('{from: PID-8, to: "gender[", datatype: "CWE[code]"}', "'\\[' without '\\]'"),
        ('{from: PID-8, to: "gen der", datatype: "CWE[code]"}', "expected '.'"),
        ('{from: PID-8, to: gender, datatype: "CWE[gender]"}', "unknown datatype map 'CWE\\[gender\\]'"),
        ("{from: PID-8, to: gender, function: sex_of}", "unknown function 'sex_of'"),
        ("{from: PID-8, to: gender, transform: upper}", "unknown transform 'upper'"),
        ("{from: PID-8, to: gender, when: {is_set: PID-8}}", "unknown condition 'is_set'"),
        ("{from: PID-8, to: gender, when: {in: [PID-8, F]}}", "takes \\[path, \\[values...\\]\\]"),
        ("{form: PID-8, to: gender}", "unknown rule key\\(s\\) \\['form'\\]"),
        ("{from: PID-8, to: gender, repeats: some}", "repeats is first, all or join"),
        ('{from: PID-8, to: "value[x]", transform: dtm_to_date}', "needs a datatype map"),
        ('{from: PID-8, to: gender, datatype: "CX[Identifier]", table: AdministrativeSex}', "a table cannot be passed"),
    ],
)
def test_bad_rule_names_file_and_line(mappings: Path, new: str, reason: str) -> None:
    line = _edit(mappings / PID_MAP, GENDER_RULE, new)
    error = _load_error(mappings)
    assert f"PID_Patient.yaml:{line}:" in error
    assert re.search(reason, error), error


def test_bad_datatype_map_is_caught_even_when_unused(mappings: Path) -> None:
    line = _edit(
        mappings / "datatypes/DR.yaml",
        "{from: DR.2, to: end, transform: dtm_to_datetime}",
        "{from: DR.2, to: end, transform: dtm_to_nothing}",
    )
    error = _load_error(mappings)
    assert f"DR.yaml:{line}:" in error and "dtm_to_nothing" in error


def test_datatype_map_paths_must_name_their_datatype(mappings: Path) -> None:
    _edit(mappings / "datatypes/DR.yaml", "{from: DR.2,", "{from: XX.2,")
    assert "the DR map reads paths such as DR.1" in _load_error(mappings)


def test_message_map_errors(mappings: Path) -> None:
    path = mappings / "messages/ADT_A04.yaml"
    line = _edit(path, "extends: ADT_A01", "extends: ADT_A99")
    assert f"ADT_A04.yaml:{line}: extends unknown message map 'ADT_A99'" in _load_error(mappings)
    _edit(path, "extends: ADT_A99", "extends: ADT_A08")
    _edit(mappings / "messages/ADT_A08.yaml", "extends: ADT_A01", "extends: ADT_A04")
    assert "extends loops" in _load_error(mappings)


@pytest.mark.parametrize(
    ("path", "old", "new", "reason"),
    [
        ("structures/ADT_A01.yaml", '  - "[PD1]"\n', '  - "[PD1}"\n', "is not a segment or group in HL7 syntax"),
        (
            "messages/_patient.yaml",
            '    map: "NK1[RelatedPerson]"\n',
            '    map: "NK1[Kin]"\n',
            "unknown segment map 'NK1\\[Kin\\]'",
        ),
        ("messages/_patient.yaml", '    map: "NK1[RelatedPerson]"\n', '    map: "PID[Patient]"\n', "maps PID, not NK1"),
        ("messages/_patient.yaml", "    id: encounter\n", "    id: visit\n", "unknown id function 'visit'"),
        (
            "messages/_patient.yaml",
            "      - {to: patient, resource: patient}\n  account:",
            "      - {to: patient, resource: kin}\n  account:",
            "references unknown resource 'kin'",
        ),
        (
            "messages/_patient.yaml",
            "    on_duplicate: keep_first\n    references:\n      # The primary care",
            "    on_duplicate: replace\n    references:\n      # The primary care",
            "on_duplicate is one of",
        ),
        (
            "messages/_patient.yaml",
            '      - {segment: ROL, map: "ROL[Encounter]", after: PV1}\n',
            '      - {segment: ROL, map: "ROL[Encounter]", after: PV1, before: PV1}\n',
            "say after or before, not both",
        ),
        (
            "messages/_patient.yaml",
            '    before: PV1\n    map: "PRT[CareTeam]"\n',
            '    before: PV1X\n    map: "PRT[CareTeam]"\n',
            "after / before name a segment",
        ),
        (
            "messages/_patient.yaml",
            "      - {to: device, resource: device, scope: up}\n",
            "      - {to: device, resource: device, scope: message}\n",
            "scope message can name several resources",
        ),
        (
            "messages/_patient.yaml",
            "    when: {valued: PID-18}\n",
            "    when: {valued: PID-x}\n",
            "'PID-x' is not a source path",
        ),
        (
            "messages/_patient.yaml",
            "    id: {identifier: [PID-18]}\n",
            "    id: {identifier: [PID-18], by: name}\n",
            "unknown key",
        ),
        ("messages/ADT_A01.yaml", "structure: ADT_A01\n", "structure: ADT_A99\n", "unknown structure 'ADT_A99'"),
    ],
)
def test_bad_message_map(mappings: Path, path: str, old: str, new: str, reason: str) -> None:
    line = _edit(mappings / path, old, new)
    error = _load_error(mappings)
    assert f"{Path(path).name}:" in error and re.search(reason, error), error
    if not path.startswith("messages/_patient") or "references" in reason:
        return
    assert f"{Path(path).name}:{line}" in error or f"{Path(path).name}:{line - 1}" in error or Path(path).name in error


def test_bad_table_and_bad_yaml(mappings: Path) -> None:
    _edit(mappings / "tables/NameType.yaml", "table: NameType", "table: NameTypes")
    assert "must match the file name 'NameType'" in _load_error(mappings)
    _edit(mappings / "tables/NameType.yaml", "table: NameTypes", "table: NameType")
    _edit(mappings / "tables/NameType.yaml", "  BAD: {code: old, display: Old}", "  BAD: {code: old, display: Old")
    assert "NameType.yaml: not valid YAML" in _load_error(mappings)


def test_extends_overrides_and_removes_resources(mappings: Path) -> None:
    """A derived map lists only what differs; `name: null` drops an inherited resource."""
    (mappings / "messages/ADT_A04.yaml").write_text(
        "message: ADT_A04\nextends: ADT_A01\nresources:\n  observation: null\n"
    )
    loaded = Converter.load(mappings)
    msh = MSH_ADT.replace("ADT^A01^ADT_A01", "ADT^A04^ADT_A01")
    obx = "OBX|1|NM|8302-2^Height^LN||170|cm|||||F"
    bundle = loaded.convert(message(msh, PID, PV1, obx))
    assert "Observation" not in [e["resource"]["resourceType"] for e in bundle["entry"]]
    a01 = loaded.convert(message(MSH_ADT, PID, PV1, obx))
    assert only(a01, "Observation")["valueQuantity"]["value"] == 170


# --- checked against the definitions: HL7 v2.3-v2.8 (hl7apy) and FHIR R4 (fhir.resources) ------------


@pytest.mark.parametrize(
    ("new", "reason"),
    [
        ('{from: PID-99, to: gender, datatype: "CWE[code]"}', "PID-99: PID has \\d+ fields in HL7 v2.3-v2.8, not 99"),
        ('{from: PID-8.30, to: gender, datatype: "CWE[code]"}', "PID-8.30: no component 30"),
        (
            '{from: PID-3, to: gender, datatype: "CWE[code]"}',
            "PID-3 is CX in HL7 v2.3-v2.8, but the rule reads it as CWE",
        ),
        ("{from: QQQ-8, to: gender}", "HL7 v2.3-v2.8 have no segment QQQ"),
        ('{from: PID-8, to: sex, datatype: "CWE[code]"}', "FHIR Patient has no element 'sex'"),
        ('{from: PID-8, to: "gender[]", datatype: "CWE[code]"}', "Patient.gender does not repeat"),
        (
            '{from: PID-8, to: gender, datatype: "CWE[CodeableConcept]"}',
            "gender is a FHIR code, but the map makes a CodeableConcept",
        ),
        (
            '{from: PID-8, to: "deceased[x]", datatype: "CWE[CodeableConcept]"}',
            "Patient.deceased\\[x\\] has no type CodeableConcept",
        ),
        ('{from: PID-8, to: "name", datatype: "XPN[HumanName]"}', "Patient.name repeats"),
    ],
)
def test_paths_are_checked_against_hl7_and_fhir(mappings: Path, new: str, reason: str) -> None:
    line = _edit(mappings / PID_MAP, GENDER_RULE, new)
    error = _load_error(mappings)
    assert f"PID_Patient.yaml:{line}:" in error
    assert re.search(reason, error), error


def test_datatype_map_paths_are_checked(mappings: Path) -> None:
    line = _edit(mappings / "datatypes/DR.yaml", "{from: DR.2, to: end,", "{from: DR.9, to: end,")
    error = _load_error(mappings)
    assert f"DR.yaml:{line}:" in error and "DR.9: no component 9" in error, error


def test_resource_maps_name_their_id(mappings: Path) -> None:
    line = _edit(mappings / "datatypes/XON.yaml", "  Organization:\n    id: identifier\n", "  Organization:\n")
    error = _load_error(mappings)
    assert "XON.yaml:" in error and "names its `id` key function" in error, (line, error)


def test_site_defined_segments_are_not_checked_against_hl7(mappings: Path) -> None:
    (mappings / "segments/ZPI_Patient.yaml").write_text(
        'segment: ZPI\nresource: Patient\nrules:\n  - {from: ZPI-42.3, to: "extension[+url=http://x.org/z].valueString"}\n'
    )
    assert Converter.load(mappings, overlay_dir=None, default_tz=None, sender_tz=None).supports("ADT", "A01")
