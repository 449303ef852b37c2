"""The two kinds of path a mapping names, parsed once at load.

Source paths point into HL7 v2 data, in the standard's own notation (chapter 2.5.3):

* ``PID-3``, ``PID-3.4``, ``PID-3.4.2``: segment, field, component, subcomponent (segment maps);
* ``CX.4``, ``CX.4.2``: component and subcomponent of the datatype being mapped (datatype maps).

Target paths point into the FHIR resource (or datatype) being built, in FHIR element names:

* ``birthDate``, ``period.start``: plain elements, created as needed;
* ``identifier[]``: append a new item to a repeating element;
* ``dosageInstruction[0]``: the first item of a repeating element, created if missing (so that
  several rules fill one item);
* ``extension[url=http://...]``: the item whose ``url`` has that value, created if missing;
* ``extension[+url=http://...]``: always a new item with that ``url``;
* ``value[x]``: a choice element (last step only); the value carries its FHIR type;
* ``$value``: in a datatype map, the datatype's result is the value itself (a primitive).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from gateway.convert.model.mapping_errors import PathError
from gateway.hl7.message import Element

_SEGMENT_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+)(?:\.(\d+))?)?$")
_DATATYPE_PATH = re.compile(r"^([A-Z][A-Z0-9]{1,3})(?:\.(\d+)(?:\.(\d+))?)?$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class SourcePath:
    """``segment`` and ``field`` are set for segment paths, ``datatype`` for datatype-relative ones;
    ``positions`` are the component/subcomponent steps below the field (or below the datatype value)."""

    text: str
    segment: str | None
    datatype: str | None
    field: int
    positions: tuple[int, ...]

    def pick(self, element: Element) -> Element:
        for n in self.positions:
            element = element[n]
        return element

    def picker(self) -> Callable[[Element], Element]:
        """``pick`` specialised for this path's depth (it runs for every rule on every value)."""
        positions = self.positions
        if not positions:
            return lambda element: element
        if len(positions) == 1:
            (a,) = positions
            return lambda element: element[a]
        a, b = positions[0], positions[1]
        return lambda element: element[a][b]


def parse_source(text: str) -> SourcePath:
    text = str(text).strip()
    m = _SEGMENT_PATH.match(text)
    if m:
        seg, fld, *rest = m.groups()
        positions = tuple(int(p) for p in rest if p is not None)
        if int(fld) < 1 or 0 in positions:
            raise PathError(f"{text!r}: positions start at 1")
        return SourcePath(text, seg, None, int(fld), positions)
    m = _DATATYPE_PATH.match(text)
    if m:
        dt, *rest = m.groups()
        positions = tuple(int(p) for p in rest if p is not None)
        if 0 in positions:
            raise PathError(f"{text!r}: positions start at 1")
        return SourcePath(text, None, dt, 0, positions)
    raise PathError(f"{text!r} is not a source path (expected e.g. PID-3.4.2 or CX.4.2)")


# --- target paths -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    #: "" plain element, "append" new list item, "first" the first item (created if missing),
    #: "keyed" find-or-create by key, "choice" value[x].
    kind: str = ""
    key: str = ""
    key_value: str = ""
    new: bool = False  # for keyed steps: always a new item


@dataclass(frozen=True, slots=True)
class TargetPath:
    text: str
    steps: tuple[Step, ...]

    @property
    def is_value(self) -> bool:
        return self.text == "$value"

    @property
    def is_choice(self) -> bool:
        return bool(self.steps) and self.steps[-1].kind == "choice"

    @property
    def appends(self) -> bool:
        return bool(self.steps) and self.steps[-1].kind == "append"


def parse_target(text: str) -> TargetPath:
    text = str(text).strip()
    if text == "$value":
        return TargetPath(text, ())
    steps: list[Step] = []
    pos, n = 0, len(text)
    while True:
        m = _NAME.match(text, pos)
        if not m:
            raise PathError(f"{text!r}: expected an element name at position {pos + 1}")
        name, pos = m.group(), m.end()
        step = Step(name)
        if pos < n and text[pos] == "[":
            end = text.find("]", pos)
            if end < 0:
                raise PathError(f"{text!r}: '[' without ']'")
            inner = text[pos + 1 : end]
            pos = end + 1
            if inner == "":
                step = Step(name, "append")
            elif inner == "0":
                step = Step(name, "first")
            elif inner == "x":
                step = Step(name, "choice")
            else:
                new = inner.startswith("+")
                key, eq, value = inner.lstrip("+").partition("=")
                if not eq or not _NAME.fullmatch(key) or not value:
                    raise PathError(f"{text!r}: selector [{inner}] must be [], [0], [x], [key=value] or [+key=value]")
                step = Step(name, "keyed", key, value, new)
        steps.append(step)
        if pos == n:
            break
        if text[pos] != ".":
            raise PathError(f"{text!r}: expected '.' at position {pos + 1}")
        pos += 1
    for step in steps[:-1]:
        if step.kind == "choice":
            raise PathError(f"{text!r}: a choice element [x] can only be the last step")
    return TargetPath(text, tuple(steps))


def merge(into: dict[str, Any], value: dict[str, Any]) -> None:
    """Deep-merge ``value`` into ``into``: dicts merge, lists extend, a scalar already there stays
    (the first rule to give an element a value wins)."""
    for key, item in value.items():
        current = into.get(key)
        if current is None:
            into[key] = item
        elif isinstance(current, dict) and isinstance(item, dict):
            merge(current, item)
        elif isinstance(current, list) and isinstance(item, list):
            current.extend(item)


def _descend(obj: dict[str, Any], step: Step) -> dict[str, Any]:
    """Follow one non-final step, creating the container it names."""
    if step.kind == "append":
        new: dict[str, Any] = {}
        obj.setdefault(step.name, []).append(new)
        return new
    if step.kind == "first":
        items = obj.setdefault(step.name, [])
        if not items:
            items.append({})
        return items[0]  # type: ignore[no-any-return]
    if step.kind == "keyed":
        items = obj.setdefault(step.name, [])
        if not step.new:
            for item in items:
                if item.get(step.key) == step.key_value:
                    return cast(dict[str, Any], item)
        created = {step.key: step.key_value}
        items.append(created)
        return created
    child = obj.get(step.name)
    if not isinstance(child, dict):
        child = obj[step.name] = {}
    return child


Writer = Callable[[dict[str, Any], Any], None]


def compile_writer(path: TargetPath, exclusive: tuple[frozenset[str] | None, ...] | None = None) -> Writer:
    """A function that writes a (non-empty) value at ``path`` inside a dict. ``exclusive`` gives, per
    step, the other variants of a FHIR choice element (occurrencePeriod: occurrenceDateTime, ...):
    when one of them is already there, nothing is written, so a choice keeps the type it got first."""
    *parents, last = path.steps
    guards = [(n, names) for n, names in enumerate(exclusive or ()) if names]

    def write(obj: dict[str, Any], value: Any) -> None:
        if guards:
            node: Any = obj
            for n, step in enumerate(path.steps):
                if not isinstance(node, dict):
                    break
                names = next((g for i, g in guards if i == n), None)
                if names and any(name in node for name in names):
                    return
                node = node.get(step.name)
                if isinstance(node, list):
                    if step.kind == "first":
                        node = node[0] if node else None
                    elif step.kind == "keyed" and not step.new:
                        node = next((i for i in node if i.get(step.key) == step.key_value), None)
                    else:
                        node = None  # a new item: nothing there yet
        _write(obj, value)

    def _write(obj: dict[str, Any], value: Any) -> None:
        for step in parents:
            obj = _descend(obj, step)
        if last.kind == "append":
            obj.setdefault(last.name, []).append(value)
        elif last.kind in ("keyed", "first"):
            target = _descend(obj, last)
            if isinstance(value, dict):
                merge(target, value)
            else:
                raise TypeError(f"{path.text}: a keyed item needs an object value")
        elif last.kind == "choice":
            type_name, inner = value
            prefix = last.name
            if not any(k.startswith(prefix) and k[len(prefix) : len(prefix) + 1].isupper() for k in obj):
                obj[prefix + type_name] = inner
        else:
            current = obj.get(last.name)
            if current is None:
                obj[last.name] = value
            elif isinstance(current, dict) and isinstance(value, dict):
                merge(current, value)

    name = last.name
    if not parents and last.kind == "append":

        def _write_append(obj: dict[str, Any], value: Any) -> None:
            items = obj.get(name)
            if items is None:
                obj[name] = [value]
            else:
                items.append(value)

        _write = _write_append  # noqa: F811 - the common case, without the general walk
    elif not parents and last.kind == "":

        def _write_plain(obj: dict[str, Any], value: Any) -> None:
            current = obj.get(name)
            if current is None:
                obj[name] = value
            elif isinstance(current, dict) and isinstance(value, dict):
                merge(current, value)

        _write = _write_plain  # noqa: F811

    return write if guards else _write


def compile_reader(path: TargetPath) -> Callable[[dict[str, Any]], Any]:
    """A function returning what is at ``path`` (plain and keyed steps only), or None."""

    def read(obj: Any) -> Any:
        for step in path.steps:
            if not isinstance(obj, dict):
                return None
            if step.kind == "keyed":
                obj = next((i for i in obj.get(step.name, ()) if i.get(step.key) == step.key_value), None)
            elif step.kind == "append":
                items = obj.get(step.name)
                obj = items[-1] if items else None
            elif step.kind == "first":
                items = obj.get(step.name)
                obj = items[0] if items else None
            else:
                obj = obj.get(step.name)
        return obj

    return read
