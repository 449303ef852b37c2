"""The JSON Schema of the mapping language, made from the loader's own key sets and the function
registry, so that an editor checks a mapping file as the loader will (keys, names of functions,
conditions and id keys, the shape of rules). The loader still checks more than a schema can: that
paths exist in HL7 v2 and FHIR, and that named maps and tables exist.

``hl7gw mapping-schema`` prints it; ``mappings/mapping.schema.json`` is this output, kept in step
by a test.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.convert import functions
from gateway.convert.compilation.compiler import EACH_RULE_KEYS, REPEATS, RULE_KEYS
from gateway.convert.compilation.maps import DATATYPE_FILE_KEYS, DATATYPE_MAP_KEYS, SEGMENT_MAP_KEYS
from gateway.convert.functions.ids import ID_KEYS, MADE_KEYS
from gateway.convert.loading.loader import STRUCTURE_KEYS, SYSTEMS_KEYS, TABLE_ENTRY_KEYS, TABLE_KEYS
from gateway.convert.loading.messages import (
    DUPLICATE_POLICIES,
    ID_SPEC_KEYS,
    INCLUDE_KEYS,
    INCLUDE_SCOPES,
    MESSAGE_KEYS,
    REFERENCE_KEYS,
    REQUESTS,
    RESOURCE_KEYS,
    SCOPES,
)

SCHEMA_ID = "urn:hl7gw:schema:mapping"
MAP_NAME = r"^[A-Z][A-Z0-9]{1,2}\[[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*\]$"
TEXT = {"type": "string"}
NOTE = {"type": "string", "description": "free text, ignored"}
NOT_NULL = {"not": {"type": "null"}}
CONSTANTS = {"type": "object", "minProperties": 1}
SEGMENT_NAME = {"type": "string", "minLength": 3, "maxLength": 3}

#: What each key means, shown by editors; the full text is docs/mappings.md.
DESCRIPTIONS = {
    "from": "source path: PID-3, PID-3.4 (segment maps) or CX.4 (datatype maps)",
    "to": "target path: birthDate, identifier[], dosageInstruction[0], extension[url=...], value[x]",
    "datatype": "a datatype map, e.g. CX[Identifier]",
    "by": "the field that chooses the datatype map (OBX-2)",
    "datatypes": "value of `by` -> datatype map",
    "function": "a named builder (gateway/convert/functions/)",
    "transform": "a named transform of the text (gateway/convert/functions/)",
    "table": "a vocabulary table (mappings/tables/)",
    "value": "a constant; with `from`, written only when the source is valued",
    "when": "conditions, all of which must hold",
    "wrap": "put the value under this element first",
    "set": "constants written into the value (replacing)",
    "defaults": "constants written where the value (or the resource) has nothing",
    "default": "the value when the rule produced none",
    "repeats": "first, all (each repetition) or join (text repetitions joined by line breaks)",
    "required": "no value -> the message is refused (MappingError)",
    "enrich": "write only into an element an earlier rule made",
    "each": "rules making one object per repetition of `from`",
    "source": "the IG map this follows",
    "note": "free text, ignored",
}


def _object(
    keys: Iterable[str], properties: dict[str, Any], required: Iterable[str] = (), **extra: Any
) -> dict[str, Any]:
    """An object schema with exactly ``keys`` (the loader's set), typed by ``properties``."""
    keys = sorted(keys)
    missing = set(properties) - set(keys)
    assert not missing, f"schema types keys the loader does not know: {missing}"
    props = {}
    for key in keys:
        prop = dict(properties.get(key, {}))
        if key in DESCRIPTIONS and "description" not in prop and "$ref" not in prop:
            prop["description"] = DESCRIPTIONS[key]
        props[key] = prop
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = sorted(required)
    return {**schema, **extra}


def _enum(names: Iterable[str]) -> dict[str, Any]:
    return {"enum": sorted(names)}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """A key of a derived message map's resource may be null: it removes the inherited key."""
    return {"anyOf": [schema, {"type": "null"}]}


def _defs() -> dict[str, Any]:
    map_name = {"type": "string", "pattern": MAP_NAME}
    condition = {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {name: {} for name in sorted(functions.CONDITIONS)},
        "additionalProperties": False,
        "description": "one {condition: argument}: {valued: PID-29}, {in: [XAD.7, [M, SH]]}",
    }
    rule = _object(
        RULE_KEYS,
        {
            "from": TEXT,
            "to": TEXT,
            "datatype": map_name,
            "by": TEXT,
            "datatypes": {"type": "object", "additionalProperties": map_name},
            "function": _enum(functions.BUILDERS),
            "transform": _enum(functions.TRANSFORMS),
            "table": TEXT,
            "value": NOT_NULL,
            "when": {"$ref": "#/$defs/when"},
            "wrap": TEXT,
            "set": CONSTANTS,
            "defaults": CONSTANTS,
            "default": NOT_NULL,
            "repeats": _enum(REPEATS),
            "required": {"type": "boolean"},
            "enrich": {"type": "boolean"},
            "each": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/rule"}},
            "made": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/rule"}},
            "note": NOTE,
        },
        required=["to"],
    )
    each_rule = _object(
        EACH_RULE_KEYS,
        {"from": TEXT, "to": TEXT, "when": {"$ref": "#/$defs/when"}, "note": NOTE},
        required=["from", "to", "each"],
    )
    each_rule["properties"]["each"] = {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/rule"}}
    rules = {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/rule"}}
    include = _object(
        INCLUDE_KEYS,
        {
            "segment": TEXT,
            "map": map_name,
            "scope": _enum(INCLUDE_SCOPES),
            "to": TEXT,
            "after": SEGMENT_NAME,
            "before": SEGMENT_NAME,
            "note": NOTE,
        },
        required=["segment", "map"],
    )
    reference = _object(
        REFERENCE_KEYS,
        {
            "to": TEXT,
            "resource": TEXT,
            "scope": _enum(SCOPES),
            "wrap": TEXT,
            "set": CONSTANTS,
            "if_empty": {"type": "boolean"},
            "key": _enum(ID_KEYS),
            "match": _enum(ID_KEYS),
            "when": {"$ref": "#/$defs/when"},
            "with": {
                **map_name,
                "description": "a segment-to-datatype map of the referenced resource's segment that completes "
                "the value (DG1[EncounterDiagnosis]: use and rank beside the condition)",
            },
            "required": {"type": "boolean"},
            "note": NOTE,
        },
        required=["to", "resource"],
    )
    strings = {"anyOf": [TEXT, {"type": "array", "items": TEXT}]}
    resource_id = {
        "anyOf": [
            _enum(ID_KEYS),
            _object(ID_SPEC_KEYS, {"identifier": strings, "within": strings, "fields": strings, "note": NOTE}),
        ]
    }
    resource_props: dict[str, Any] = {
        "segment": TEXT,
        "groups": {"type": "array", "minItems": 1, "items": TEXT},
        "map": map_name,
        "include": {"type": "array", "items": {"$ref": "#/$defs/include"}},
        "id": resource_id,
        "required": {"type": "boolean"},
        "on_duplicate": _enum(DUPLICATE_POLICIES),
        "references": {"type": "array", "items": {"$ref": "#/$defs/reference"}},
        "when": {"$ref": "#/$defs/when"},
        "unless_with": {"type": "array", "items": SEGMENT_NAME},
        "after": SEGMENT_NAME,
        "before": SEGMENT_NAME,
        "request": _enum(REQUESTS),
        "defaults": CONSTANTS,
        "note": NOTE,
    }
    resource = _object(
        RESOURCE_KEYS | {"add_include", "add_references"},
        {
            **{key: _nullable(value) for key, value in resource_props.items()},
            "add_include": resource_props["include"],
            "add_references": resource_props["references"],
        },
    )
    message = _object(
        MESSAGE_KEYS,
        {
            "message": TEXT,
            "extends": TEXT,
            "abstract": {"type": "boolean"},
            "structure": {"anyOf": [TEXT, {"$ref": "#/$defs/structureEntries"}]},
            "resources": {
                "type": "object",
                "additionalProperties": {"anyOf": [{"$ref": "#/$defs/resource"}, {"type": "null"}]},
            },
            "source": TEXT,
            "note": NOTE,
        },
        required=["message"],
    )
    segment_map = _object(
        SEGMENT_MAP_KEYS,
        {
            "segment": {"type": "string", "minLength": 3, "maxLength": 3},
            "resource": TEXT,
            "datatype": TEXT,
            "name": map_name,
            "rules": rules,
            "when": {"$ref": "#/$defs/when"},
            "base": TEXT,
            "source": TEXT,
            "note": NOTE,
        },
        required=["segment", "rules"],
        oneOf=[{"required": ["resource"]}, {"required": ["datatype"]}],
    )
    datatype_map = _object(
        DATATYPE_MAP_KEYS,
        {
            "rules": rules,
            "function": _enum(functions.BUILDERS),
            "choice": {"type": "boolean"},
            "id": _enum(MADE_KEYS),
            "map": TEXT,
            "set": CONSTANTS,
            "source": TEXT,
            "note": NOTE,
        },
        oneOf=[{"required": ["rules"]}, {"required": ["function"]}, {"required": ["map", "set"]}],
    )
    datatype_file = _object(
        DATATYPE_FILE_KEYS,
        {
            "datatype": TEXT,
            "maps": {"type": "object", "minProperties": 1, "additionalProperties": {"$ref": "#/$defs/datatypeMap"}},
            "source": TEXT,
            "note": NOTE,
        },
        required=["datatype", "maps"],
    )
    entry = _object(TABLE_ENTRY_KEYS, {"code": TEXT, "display": TEXT, "system": TEXT}, required=["code"])
    table = _object(
        TABLE_KEYS,
        {
            "table": TEXT,
            "v2_table": TEXT,
            "system": TEXT,
            "map": {"type": "object", "additionalProperties": {"anyOf": [TEXT, entry]}},
            "source": TEXT,
            "note": NOTE,
        },
        required=["table", "map"],
    )
    systems = _object(
        SYSTEMS_KEYS,
        {"table": TEXT, "systems": {"type": "object", "additionalProperties": TEXT}, "source": TEXT, "note": NOTE},
        required=["table", "systems"],
    )
    structure_entries = {
        "type": "array",
        "minItems": 1,
        "items": {
            "anyOf": [
                TEXT,
                {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "additionalProperties": {"$ref": "#/$defs/structureEntries"},
                },
            ]
        },
    }
    structure = _object(
        STRUCTURE_KEYS,
        {"structure": TEXT, "segments": {"$ref": "#/$defs/structureEntries"}, "source": TEXT, "note": NOTE},
        required=["structure", "segments"],
    )
    return {
        "condition": condition,
        "when": {"anyOf": [{"$ref": "#/$defs/condition"}, {"type": "array", "items": {"$ref": "#/$defs/condition"}}]},
        "rule": {"if": {"required": ["each"]}, "then": each_rule, "else": rule},
        "include": include,
        "reference": reference,
        "resource": resource,
        "messageMap": message,
        "segmentMap": segment_map,
        "datatypeMap": datatype_map,
        "datatypeFile": datatype_file,
        "table": {"if": {"required": ["systems"]}, "then": systems, "else": table},
        "structureEntries": structure_entries,
        "structure": structure,
    }


def mapping_schema() -> dict[str, Any]:
    """One schema for every file under mappings/: the kind of file is told by its first key."""
    kinds = [
        ("message", "messageMap"),
        ("segments", "structure"),
        ("segment", "segmentMap"),
        ("maps", "datatypeFile"),
        ("table", "table"),
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "hl7gw mapping file",
        "description": "A file under mappings/: messages, structures, segments, datatypes, tables (docs/mappings.md)",
        "type": "object",
        "anyOf": [{"required": [key]} for key, _ in kinds],
        "allOf": [{"if": {"required": [key]}, "then": {"$ref": f"#/$defs/{name}"}} for key, name in kinds],
        "$defs": _defs(),
    }
