"""``_summary`` and ``_elements`` (search.html#summary, search.html#elements): the same subset of a
resource on read, vread and search, tagged SUBSETTED (v3-ObservationValue) so nobody mistakes it
for the whole resource.

* ``_summary=true``: the elements the R4 definitions mark as summary, at every level of the
  resource's own (backbone) elements; datatypes are kept whole. The marks come from the
  fhir.resources R4B models' field metadata (``summary_element_property``), not from a list here.
* ``_summary=text``: ``text``, ``id``, ``meta`` and the top-level mandatory elements.
* ``_summary=data``: everything but ``text``. ``false``: the whole resource. ``count`` is the
  store's (a search's total without entries; on a read it is the whole resource).
* ``_elements=a,b``: those top-level elements (``value`` for ``value[x]``; ``Type.a`` names an
  element of that type, e.g. of included resources) plus ``resourceType``, ``id``, ``meta`` and
  the mandatory elements (so that what is served stays a valid resource). ``-a,-b`` (Aidbox's
  syntax), or ``-a,b`` (what fhirpy's ``elements(a, b, exclude=True)`` sends: a '-' before the
  first name applies to every name of the value) leaves those out and keeps the rest.
  Unprefixed names apply to the resources of the type read or searched; included resources of
  another type are subsetted only by the names prefixed with their type.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.backboneelement import BackboneElement
from pydantic import BaseModel

from gateway.api.outcome import FHIRError

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource content not complete",
}
#: The query parameters read here; the store sees ``_summary`` only when it is ``count``.
PARAMETERS = ("_summary", "_elements")
SUMMARY_MODES = ("true", "text", "data", "count", "false")
_ALWAYS = frozenset({"resourceType", "id", "meta"})
_TEXT_MODE_KEEPS = frozenset({"resourceType", "id", "meta", "text"})


@dataclass(frozen=True, slots=True)
class Subset:
    """What a request asked to leave out; ``Subset()`` keeps every resource whole."""

    summary: str | None = None
    #: Element names by type; "" holds the unprefixed names (the type read or searched).
    elements: tuple[tuple[str, frozenset[str]], ...] = ()
    resource_type: str = ""

    @property
    def whole(self) -> bool:
        return self.summary is None and not self.elements

    def apply(self, resource: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``resource`` with the subset asked for, tagged SUBSETTED; ``resource`` itself when whole."""
        resource_type = resource.get("resourceType")
        if self.summary is not None and isinstance(resource_type, str):
            kept = _summarized(resource, resource_type, self.summary)
        else:
            names = self._names_for(resource_type)
            if names is None:
                return resource
            choices = _choice_elements(resource_type) if isinstance(resource_type, str) else {}
            kept_anyway = _ALWAYS | (_required_elements(resource_type) if isinstance(resource_type, str) else set())
            excluding = all(name.startswith("-") for name in names)
            named = {name.lstrip("-") for name in names}
            named |= {alias for name in named for alias in choices.get(name, ())}
            if excluding:
                kept = {k: v for k, v in resource.items() if k.lstrip("_") in kept_anyway or k.lstrip("_") not in named}
            else:
                wanted = kept_anyway | named  # search.html#elements: mandatory elements stay
                kept = {key: value for key, value in resource.items() if key.lstrip("_") in wanted}
        return _tagged(kept)

    def _names_for(self, resource_type: object) -> frozenset[str] | None:
        prefixed = dict(self.elements)
        if resource_type == self.resource_type and "" in prefixed:
            return prefixed[""] | prefixed.get(self.resource_type, frozenset())
        if isinstance(resource_type, str) and resource_type in prefixed:
            return prefixed[resource_type]
        return None


def requested_subset(resource_type: str, query: dict[str, list[str]]) -> Subset:
    """The subset ``_summary`` / ``_elements`` in ``query`` ask for; raises a 400 FHIRError for bad values."""
    summaries = query.get("_summary", [])
    if len(summaries) > 1:
        raise FHIRError(400, f"_summary must be given once, got {summaries!r}")
    summary = summaries[0] if summaries else None
    if summary is not None and summary not in SUMMARY_MODES:
        raise FHIRError(400, f"_summary must be one of {', '.join(SUMMARY_MODES)}, got {summary[:32]!r}")
    by_type: dict[str, set[str]] = {}
    for raw in query.get("_elements", []):
        # fhirpy's ``.elements(a, b, exclude=True)`` writes ``-a,b``: a '-' first leaves out every name of the value.
        leaving_out = raw.strip().startswith("-")
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                continue
            excluded = leaving_out or item.startswith("-")
            prefix, _, name = item.removeprefix("-").rpartition(".")
            if not name.isalnum() or (prefix and (not prefix.isalnum() or _model(prefix) is None)):
                raise FHIRError(400, f"_elements names top-level elements ([-][type.]name), got {item[:64]!r}")
            by_type.setdefault("" if prefix in ("", resource_type) else prefix, set()).add("-" * excluded + name)
    for names in by_type.values():
        if len({name.startswith("-") for name in names}) > 1:
            raise FHIRError(400, "_elements either names the elements to keep or, after a '-', those to leave out")
    if by_type and summary not in (None, "false", "count"):
        raise FHIRError(400, "_summary and _elements cannot be combined (search.html#elements)")
    mode = summary if summary in ("true", "text", "data") else None
    elements = tuple(sorted((name, frozenset(names)) for name, names in by_type.items()))
    return Subset(mode, elements, resource_type)


def _tagged(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(tag.get("system") == SUBSETTED["system"] and tag.get("code") == "SUBSETTED" for tag in tags):
        tags.append(SUBSETTED)
    meta["tag"] = tags
    return {**resource, "meta": meta}


def _summarized(resource: dict[str, Any], resource_type: str, mode: str) -> dict[str, Any]:
    if mode == "data":
        return {key: value for key, value in resource.items() if key not in ("text", "_text")}
    if mode == "text":
        keep = _TEXT_MODE_KEEPS | _required_elements(resource_type)
        return {key: value for key, value in resource.items() if key.lstrip("_") in keep}
    model = _model(resource_type)
    return _summary_of(resource, model) if model is not None else resource


def _summary_of(element: dict[str, Any], model: type[BaseModel], top: bool = True) -> dict[str, Any]:
    """The summary elements of ``element`` (a resource or backbone element of ``model``), recursively."""
    marks = _summary_marks(model)
    kept: dict[str, Any] = {}
    for key, value in element.items():
        if top and key in _ALWAYS:
            kept[key] = value
            continue
        name = key[1:] if key.startswith("_") else key
        if name not in marks:
            continue
        inner = marks[name]
        if inner is None or key.startswith("_"):
            kept[key] = value
        elif isinstance(value, list):
            kept[key] = [_summary_of(item, inner, False) if isinstance(item, dict) else item for item in value]
        else:
            kept[key] = _summary_of(value, inner, False) if isinstance(value, dict) else value
    return kept


@functools.cache
def _model(resource_type: str) -> type[BaseModel] | None:
    try:
        model: type[BaseModel] = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return None
    return model


@functools.cache
def _summary_marks(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """JSON name -> the backbone model to summarize within (None: keep the value whole), for the
    summary elements of ``model`` and its mandatory ones (so that a summary stays a valid resource)."""
    marks: dict[str, type[BaseModel] | None] = {}
    for field in model.model_fields.values():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        required = field.is_required() or extra.get("element_required") or extra.get("one_of_many_required")
        if (extra.get("summary_element_property") or required) and field.alias:
            marks[field.alias] = _backbone_type(field.annotation)
    return marks


@functools.cache
def _required_elements(resource_type: str) -> frozenset[str]:
    model = _model(resource_type)
    if model is None:
        return frozenset()
    names = set()
    for field in model.model_fields.values():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        required = field.is_required() or extra.get("element_required") or extra.get("one_of_many_required")
        if field.alias and required:
            names.add(field.alias)
    return frozenset(names)


@functools.cache
def _choice_elements(resource_type: str) -> dict[str, frozenset[str]]:
    """``value`` -> {"valueQuantity", "valueString", ...}: the JSON names of each choice element."""
    model = _model(resource_type)
    choices: dict[str, set[str]] = {}
    for field in model.model_fields.values() if model else ():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        choice = extra.get("one_of_many")
        if isinstance(choice, str) and field.alias:
            choices.setdefault(choice, set()).add(field.alias)
    return {name: frozenset(aliases) for name, aliases in choices.items()}


def _backbone_type(annotation: Any) -> type[BaseModel] | None:
    """The backbone element model inside a field's annotation (``Optional[List[XType]]``), if any."""
    stack = [annotation]
    while stack:
        current = stack.pop()
        getter = getattr(current, "get_model_klass", None)
        if callable(getter):
            klass = getter()
            return klass if isinstance(klass, type) and issubclass(klass, BackboneElement) else None
        stack.extend(typing.get_args(current))
    return None
