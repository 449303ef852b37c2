"""Loading mappings/: every mistake is caught at load and named by file and line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from gateway.convert.engine import Converter, default_mappings_dir
from gateway.errors import ConfigError
from tests.test_convert_helpers import MSH_ADT, PID, PV1, message, only


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
        ('{from: XPN.1, to: gender}', "a segment map reads segment paths"),
        ('{from: PID-8, to: "gender[", datatype: "CWE[code]"}', "'\\[' without '\\]'"),
        ('{from: PID-8, to: "gen der", datatype: "CWE[code]"}', "expected '.'"),
        ('{from: PID-8, to: gender, datatype: "CWE[gender]"}', "unknown datatype map 'CWE\\[gender\\]'"),
        ('{from: PID-8, to: gender, function: sex_of}', "unknown function 'sex_of'"),
        ('{from: PID-8, to: gender, transform: upper}', "unknown transform 'upper'"),
        ('{from: PID-8, to: gender, when: {is_set: PID-8}}', "unknown condition 'is_set'"),
        ('{from: PID-8, to: gender, when: {in: [PID-8, F]}}', "takes \\[path, \\[values...\\]\\]"),
        ('{form: PID-8, to: gender}', "unknown rule key\\(s\\) \\['form'\\]"),
        ('{from: PID-8, to: gender, repeats: some}', "repeats is first, all or join"),
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
    line = _edit(mappings / "datatypes/DR.yaml", "{from: DR.2, to: end, transform: dtm_to_datetime}",
                 "{from: DR.2, to: end, transform: dtm_to_nothing}")
    error = _load_error(mappings)
    assert f"DR.yaml:{line}:" in error and "dtm_to_nothing" in error


def test_datatype_map_paths_must_name_their_datatype(mappings: Path) -> None:
    _edit(mappings / "datatypes/DR.yaml", "{from: DR.2,", "{from: XX.2,")
    assert "the DR map reads paths such as DR.1" in _load_error(mappings)


def test_message_map_errors(mappings: Path) -> None:
    path = mappings / "messages/ADT_A04.yaml"
    _edit(path, "extends: ADT_A01", "extends: ADT_A99")
    assert "ADT_A04.yaml:3: extends unknown message map 'ADT_A99'" in _load_error(mappings)
    _edit(path, "extends: ADT_A99", "extends: ADT_A08")
    _edit(mappings / "messages/ADT_A08.yaml", "extends: ADT_A01", "extends: ADT_A04")
    assert "extends loops" in _load_error(mappings)


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ('  - "[PD1]"\n', '  - "[PD1}"\n', "is not a segment or group in HL7 syntax"),
        ('    map: "PV1[Encounter]"\n', '    map: "PV1[Visit]"\n', "unknown segment map 'PV1\\[Visit\\]'"),
        ('    map: "PV1[Encounter]"\n', '    map: "PID[Patient]"\n', "maps PID, not PV1"),
        ("    id: encounter\n", "    id: visit\n", "unknown id function 'visit'"),
        ("      - {to: encounter, resource: encounter}\n", "      - {to: encounter, resource: visit}\n",
         "references unknown resource 'visit'"),
        ("    on_duplicate: keep_first\n  encounter:", "    on_duplicate: merge\n  encounter:", "on_duplicate is one of"),
    ],
)
def test_bad_message_map(mappings: Path, old: str, new: str, reason: str) -> None:
    _edit(mappings / "messages/ADT_A01.yaml", old, new)
    error = _load_error(mappings)
    assert "ADT_A01.yaml:" in error and re.search(reason, error), error


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
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Patient", "Encounter", "Provenance"]
    a01 = loaded.convert(message(MSH_ADT, PID, PV1, obx))
    assert only(a01, "Observation")["valueQuantity"]["value"] == 170
