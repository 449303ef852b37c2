"""Small helpers for the values rules make: emptiness, copies, choice types, repetitions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway import fhirjson
from gateway.convert.model.context import Context


def choice_suffix(fhir_type: str) -> str:
    """FHIR type -> value[x] suffix: "dateTime" -> "DateTime", "Identifier-Extension" -> "Identifier"."""
    base = fhir_type.split("-", 1)[0]
    return base[:1].upper() + base[1:]


def is_empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def clone(value: Any) -> Any:
    """A copy of JSON-like data (dicts, lists, scalars, and a choice's (type, value) pair);
    a JSON round trip in C is faster than copying in Python."""
    kind = type(value)
    if kind is dict or kind is list:
        return fhirjson.loads(fhirjson.dumps(value))
    if kind is tuple:
        return value[0], clone(value[1])
    return value


def fresh(value: Any) -> Callable[[], Any]:
    """A constant that is safe to hand out repeatedly (objects are copied each time)."""
    if isinstance(value, (dict, list)):
        return lambda: clone(value)
    return lambda: value


def join_repetitions(values: list[Any], ctx: Context, label: str) -> Any:
    """``repeats: join``: text repetitions become one text, one per line (FT/TX, chapter 2A.79);
    other values keep the first repetition."""
    if all(isinstance(v, str) for v in values):
        return "\n".join(values)
    if all(isinstance(v, tuple) and isinstance(v[1], str) for v in values):
        return (values[0][0], "\n".join(v[1] for v in values))
    if len(values) > 1:
        ctx.note(f"{label}: only the first of {len(values)} repetitions was mapped")
    return values[0]


def value_writer(out: dict[str, Any], value: Any) -> None:
    """``to: $value``: the first rule with a value gives the datatype its value."""
    if "$value" not in out:
        out["$value"] = value
