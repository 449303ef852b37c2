"""What FHIR R4 elements exist, read from the fhir.resources R4B models, for the load-time checks of
target paths (``Encounter.location[].status``) and for keeping choice elements single-typed.

Only the structure is used (element names, types, repetition, choice groups), which R4 and R4B
share for every element the mappings write.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass

from fhir.resources.R4B import get_fhir_model_class

from gateway.convert.model.mapping_errors import FhirPathError
from gateway.convert.model.paths import Step, TargetPath

#: Primitive types a value of one of them may be written to (FHIR R4 datatypes.html: code, id, uri,
#: url, markdown, canonical, oid and uuid are all strings).
_STRINGS = frozenset({"string", "code", "id", "uri", "url", "markdown", "canonical", "oid", "uuid"})
_QUANTITIES = frozenset({"Quantity", "SimpleQuantity", "Duration", "Age", "Count", "Distance", "MoneyQuantity"})
_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt"})


@dataclass(frozen=True, slots=True)
class FhirElement:
    name: str
    #: The FHIR type: a primitive ("code"), a datatype ("Period"), a backbone ("EncounterLocation").
    type: str
    is_list: bool
    #: The choice element this is a variant of ("occurrence" for occurrencePeriod), or None.
    choice: str | None


def _type_name(annotation: typing.Any) -> tuple[str, bool]:
    """(FHIR type name, is_list) of a fhir.resources field annotation."""
    is_list = False
    current = annotation
    while True:
        origin = typing.get_origin(current)
        args = typing.get_args(current)
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            current = next(a for a in args if a is not type(None))
        elif origin in (list, list):
            is_list = True
            current = args[0]
        elif origin is typing.Annotated:
            marker = args[1]
            name = type(marker).__name__
            return name[:1].lower() + name[1:], is_list
        else:
            break
    builtin = {bool: "boolean", str: "string", int: "integer", float: "decimal"}.get(current)
    if builtin is not None:
        return builtin, is_list
    name = getattr(current, "__name__", str(current))
    if name.endswith("Type"):
        name = name[: -len("Type")]
    if name == "FHIRPrimitiveExtension":
        name = "Element"
    return name, is_list


@functools.cache
def elements(type_name: str) -> dict[str, FhirElement] | None:
    """The elements of a FHIR resource, datatype or backbone element by JSON name; None for a
    primitive or an unknown type."""
    try:
        model = get_fhir_model_class(type_name)
    except (KeyError, ValueError):
        return None
    found: dict[str, FhirElement] = {}
    for field_name, info in model.model_fields.items():
        json_name = info.alias or field_name
        if json_name == "fhir_comments":
            continue
        type_, is_list = _type_name(info.annotation)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        choice = extra.get("one_of_many")
        found[json_name] = FhirElement(json_name, type_, is_list, str(choice) if choice else None)
    return found


def is_resource_type(name: str) -> bool:
    try:
        model = get_fhir_model_class(name)
    except (KeyError, ValueError):
        return False
    from fhir.resources.R4B.resource import Resource

    return isinstance(model, type) and issubclass(model, Resource)


def _compatible(written: str, element: str) -> bool:
    written = written.split("-", 1)[0]
    if written == element:
        return True
    if written in _STRINGS and element in _STRINGS:
        return True
    if written in _QUANTITIES and element in _QUANTITIES:
        return True
    if written in _INTEGERS and element in _INTEGERS | {"decimal"}:
        return True
    return False


@dataclass(frozen=True, slots=True)
class ResolvedPath:
    """Per step of a target path: the names of the other variants of its choice element (None when
    the step is no choice), so a writer never gives one choice element two types."""

    exclusive: tuple[frozenset[str] | None, ...]


def resolve(
    root: str, path: TargetPath, types: tuple[str, ...] = (), prefix: TargetPath | None = None
) -> ResolvedPath | None:
    """Check ``prefix`` + ``path`` against the elements of ``root``; raise FhirPathError naming the
    first element that does not exist or does not take the written type. None when ``root`` is
    not a FHIR type this module knows (then nothing can be checked)."""
    if elements(root) is None:
        return None
    steps: list[Step] = list(prefix.steps if prefix is not None else ()) + list(path.steps)
    skip = len(steps) - len(path.steps)
    current = root
    exclusive: list[frozenset[str] | None] = []
    for n, step in enumerate(steps):
        known = elements(current)
        if known is None:
            raise FhirPathError(f"{current} is a primitive; it has no element {step.name!r}")
        where = f"{current}.{step.name}"
        if step.kind == "choice":
            variants = {name: e for name, e in known.items() if e.choice == step.name}
            if not variants:
                raise FhirPathError(f"{where}[x] is not a choice element of FHIR {current}")
            for written in types:
                if written.split("-", 1)[0] == "choice":
                    continue
                suffix = "Reference" if is_resource_type(written) else written.split("-", 1)[0]
                name = step.name + suffix[:1].upper() + suffix[1:]
                if name not in variants:
                    raise FhirPathError(f"{where}[x] has no type {suffix} (it takes {', '.join(sorted(variants))})")
            if n >= skip:
                exclusive.append(frozenset(variants))
            return ResolvedPath(tuple(exclusive))
        element = known.get(step.name)
        if element is None:
            raise FhirPathError(f"FHIR {current} has no element {step.name!r}")
        if step.kind in ("append", "keyed", "first") and not element.is_list:
            raise FhirPathError(f"{where} does not repeat; write {step.name}, not {step.name}[...]")
        if step.kind == "" and element.is_list:
            raise FhirPathError(f"{where} repeats; write {step.name}[] (or [0], [key=value])")
        if n >= skip:
            siblings = frozenset(name for name, e in known.items() if element.choice and e.choice == element.choice)
            exclusive.append(siblings - {step.name} if element.choice else None)
        current = element.type
    for written in types:
        base = written.split("-", 1)[0]
        if base == "choice":
            raise FhirPathError(f"{path.text}: a map that chooses among FHIR types writes an element[x]")
        expected = "Reference" if is_resource_type(base) else base
        if not _compatible(expected, current):
            raise FhirPathError(f"{path.text} is a FHIR {current}, but the map makes a {expected}")
    return ResolvedPath(tuple(exclusive))
