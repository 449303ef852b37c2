"""Validation by shape: once the fhir.resources R4B model has accepted a resource, any resource of
the same shape (the same element names, nesting, list lengths and JSON value types) passes the
same model exactly when each of its primitive values passes its element's primitive type.

The model's structural rules (unknown elements, cardinality, choice types, required elements,
nulls) depend on the shape alone, so they are checked once per shape by the model itself. What
remains per resource is one walk that records the shape and the primitive values, and each value
checked by the very pydantic schema the model uses for that element (``primitive_checker``).
"""

from __future__ import annotations

import functools
import threading
import types
import typing
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class

#: A shape: nested tuples; a dict is ((key, shape), ...), a list is [shape, ...] as a tuple tagged "l",
#: a primitive is its JSON type's marker; ``resourceType`` keeps its value (it picks the model).
Shape = Any
Checker = Callable[[Any], bool]

_MARKERS: dict[type, str] = {str: "s", bool: "b", int: "i", float: "f", Decimal: "d"}
MAX_SHAPES = 20_000
MAX_REMEMBERED_VALUES = 4_096
#: Longest text a checker remembers as passed (longer ones are checked each time: they hardly repeat).
MAX_REMEMBERED_TEXT = 256


class Walk:
    """One pass over a resource: its shape, its primitive values in order, its Reference.reference
    values, and whether any element is empty (FHIR forbids empty objects, arrays, strings and nulls)."""

    __slots__ = ("values", "references", "empty")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.references: list[Any] = []
        self.empty = False

    def shape(self, value: Any) -> Shape:
        marker = _MARKERS.get(type(value))
        if marker is not None:
            if marker == "s" and not value.strip():
                self.empty = True
            self.values.append(value)
            return marker
        if isinstance(value, dict):  # dict subclasses too (constants from YAML carry their line)
            if not value:
                self.empty = True
            items = []
            for key, item in value.items():
                if key == "resourceType":
                    items.append((key, item if type(item) is str else repr(item)))
                    continue
                if key == "reference":
                    self.references.append(item)
                items.append((key, self.shape(item)))
            return tuple(items)
        if isinstance(value, list):
            if not value:
                self.empty = True
            return ("l", *[self.shape(item) for item in value])
        self.empty = True  # null, or a value JSON cannot hold
        return repr(type(value))


def _unwrap(annotation: Any) -> Any:
    """The element type of a field annotation: Optional and List removed, Annotated kept."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Union or origin is types.UnionType:
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        elif origin in (list, list):
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation


def _model_of(annotation: Any, value: Any) -> type | None:
    """The fhir.resources model an element's value is validated with; None for a primitive."""
    get_klass = getattr(annotation, "get_model_klass", None)
    if get_klass is None:
        return None
    if isinstance(value, dict) and isinstance(value.get("resourceType"), str):
        klass = get_klass()
        if klass.__name__ in ("Resource", "Element"):  # contained resources: the value names its model
            return typing.cast(type, get_fhir_model_class(value["resourceType"]))
    return typing.cast(type, get_klass())


@functools.cache
def _aliases(model: type) -> dict[str, Any]:
    """JSON name -> field annotation of a fhir.resources model."""
    fields = typing.cast(dict[str, Any], model.model_fields)  # type: ignore[attr-defined]
    return {(info.alias or name): info.annotation for name, info in fields.items()}


@functools.cache
def primitive_checker(annotation: Any) -> Checker:
    """A test of one primitive value with the pydantic schema of ``annotation``; remembers what passed."""
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(annotation)
    passed: set[Any] = set()

    def check(value: Any) -> bool:
        if value in passed:
            return True
        try:
            adapter.validate_python(value)
        except (pydantic.ValidationError, TypeError, ValueError):
            return False
        if isinstance(value, str) and len(value) > MAX_REMEMBERED_TEXT:
            return True
        if len(passed) >= MAX_REMEMBERED_VALUES:
            passed.clear()
        passed.add(value)
        return True

    return check


def checkers_for(resource: dict[str, Any]) -> tuple[Checker, ...]:
    """For a resource the model accepted: the checker of each primitive value, in ``Walk`` order."""
    found: list[Checker] = []

    def visit(model: type, value: dict[str, Any]) -> None:
        fields = _aliases(model)
        for key, item in value.items():
            if key == "resourceType":
                continue
            annotation = _unwrap(fields[key])
            for element in item if isinstance(item, list) else (item,):
                submodel = _model_of(annotation, element)
                if submodel is not None:
                    visit(submodel, element)
                else:
                    found.append(primitive_checker(annotation))

    visit(get_fhir_model_class(resource["resourceType"]), resource)
    return tuple(found)


class ShapeRegistry:
    """Shapes the R4B model accepted, each with the checkers of its primitive values."""

    def __init__(self, size: int = MAX_SHAPES):
        self.size = size
        self._shapes: dict[Shape, tuple[Checker, ...]] = {}
        self._lock = threading.Lock()

    def checkers(self, shape: Shape) -> tuple[Checker, ...] | None:
        return self._shapes.get(shape)

    def accept(self, shape: Shape, resource: dict[str, Any]) -> None:
        """Remember ``shape``, whose ``resource`` the model has just accepted."""
        checkers = checkers_for(resource)
        with self._lock:
            if len(self._shapes) >= self.size:
                self._shapes.clear()  # rare: shapes come from a fixed set of mappings
            self._shapes[shape] = checkers

    def clear(self) -> None:
        with self._lock:
            self._shapes.clear()

    def __len__(self) -> int:
        return len(self._shapes)
