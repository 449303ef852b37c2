"""The published JSON Schema of the mapping language (mappings/mapping.schema.json): generated from
the loader's own definitions, satisfied by every shipped file, and refusing what the loader refuses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from gateway.convert.loading.schema import mapping_schema
from gateway.convert.runtime.engine import Converter, default_mappings_dir
from gateway.errors import ConfigError

SCHEMA_FILE = default_mappings_dir() / "mapping.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_published_schema_is_what_the_loader_defines() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == mapping_schema(), "regenerate: hl7gw mapping-schema > " + str(
        SCHEMA_FILE
    )


def test_cli_prints_the_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "mapping-schema"], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == mapping_schema()


def test_every_shipped_mapping_file_satisfies_the_schema(validator: jsonschema.Draft202012Validator) -> None:
    files = sorted(default_mappings_dir().rglob("*.yaml"))
    kinds = {path.parent.name for path in files}
    assert {"messages", "segments", "datatypes", "tables", "structures"} <= kinds
    problems = {
        str(path.relative_to(default_mappings_dir())): [
            e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))
        ]
        for path in files
    }
    assert {name: errors for name, errors in problems.items() if errors} == {}


MISTAKES = [
    ("segments/PID_Patient.yaml", "{from: PID-8, to: gender,", "{form: PID-8, to: gender,"),
    ("segments/PID_Patient.yaml", "transform: dtm_to_date}", "transform: dtm_to_day}"),
    ("segments/PID_Patient.yaml", "when: {not_valued: PID-29}", "when: {is_empty: PID-29}"),
    ("segments/PID_Patient.yaml", "resource: Patient\n", ""),
    ("segments/RXR_Dosage.yaml", "datatype: Dosage\n", "datatype: Dosage\nresource: MedicationRequest\n"),
    ("messages/RDS_O13.yaml", '    map: "RXD[MedicationDispense]"', '    maps: "RXD[MedicationDispense]"'),
    ("messages/RDS_O13.yaml", '{segment: RXR, map: "RXR[Dosage]",', '{segment: RXR, mapping: "RXR[Dosage]",'),
    ("messages/RDS_O13.yaml", "      - {to: subject, resource: patient}\n", "      - {to: subject}\n"),
    ("messages/ORM_O01.yaml", "    id: request\n", "    id: requests\n"),
    (
        "datatypes/EI.yaml",
        "PlacerGroup:\n    map: Identifier\n    set:",
        "PlacerGroup:\n    map: Identifier\n    sets:",
    ),
    ("datatypes/CWE.yaml", "function: codeable_concept", "function: codeable_concepts"),
    ("tables/AdministrativeSex.yaml", "  F: {code: female, display: Female}", "  F: {display: Female}"),
    ("structures/ADT_A01.yaml", "structure: ADT_A01\n", "structure: ADT_A01\nversion: 2.5\n"),
]


@pytest.mark.parametrize(("path", "old", "new"), MISTAKES)
def test_schema_and_loader_refuse_the_same_mistakes(
    validator: jsonschema.Draft202012Validator, tmp_path: Path, path: str, old: str, new: str
) -> None:
    root = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), root)
    text = (root / path).read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {path}"
    (root / path).write_text(text.replace(old, new))
    assert list(validator.iter_errors(yaml.safe_load((root / path).read_text()))), f"the schema accepts {new!r}"
    with pytest.raises(ConfigError):
        Converter.load(root)
