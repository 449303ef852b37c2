"""The search parameters the store indexes, per resource type, as data: name -> kind and FHIR paths.

To support a new resource type, add an entry to ``SEARCH_PARAMETERS`` (an empty one is enough to
store, read and search it by ``_id``). Names, kinds and paths follow the FHIR R4 search parameter
registry (searchparameter-registry.html); paths are relative to the resource, ``x[x]`` matches every
choice type of ``x``. Resources stored before a parameter was added need ``ResourceStore.reindex``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["token", "string", "date", "reference"]


@dataclass(frozen=True, slots=True)
class SearchParam:
    name: str
    kind: Kind
    paths: tuple[str, ...]
    #: Reference parameters: the resource types a value may point at; empty means any.
    targets: tuple[str, ...] = ()
    #: Reuse the index rows of this parameter (same paths) instead of storing a copy.
    stored_as: str | None = None

    @property
    def index_name(self) -> str:
        return self.stored_as or self.name


def token(name: str, *paths: str) -> SearchParam:
    return SearchParam(name, "token", paths)


def string(name: str, *paths: str) -> SearchParam:
    return SearchParam(name, "string", paths)


def date(name: str, *paths: str) -> SearchParam:
    return SearchParam(name, "date", paths)


def reference(name: str, *paths: str, targets: tuple[str, ...] = (), stored_as: str | None = None) -> SearchParam:
    return SearchParam(name, "reference", paths, targets, stored_as)


def _patient_of(base: str, *paths: str) -> SearchParam:
    """The usual ``patient`` parameter: ``base`` restricted to Patient targets, sharing its rows."""
    return reference("patient", *paths, targets=("Patient",), stored_as=base)


_DEFINITIONS: dict[str, tuple[SearchParam, ...]] = {
    "Patient": (
        token("identifier", "identifier"),
        string("family", "name.family"),
        string("given", "name.given"),
        # HumanName: family, given, prefix, suffix and text (Patient.name search parameter).
        string("name", "name"),
        date("birthdate", "birthDate"),
        token("gender", "gender"),
    ),
    "Encounter": (
        token("identifier", "identifier"),
        reference("subject", "subject"),
        _patient_of("subject", "subject"),
        date("date", "period"),
        token("status", "status"),
        token("class", "class"),
    ),
    "Observation": (
        token("identifier", "identifier"),
        reference("subject", "subject"),
        _patient_of("subject", "subject"),
        reference("encounter", "encounter"),
        token("code", "code"),
        token("status", "status"),
        date("date", "effective[x]"),
    ),
    "DiagnosticReport": (
        token("identifier", "identifier"),
        reference("subject", "subject"),
        _patient_of("subject", "subject"),
        reference("encounter", "encounter"),
        reference("result", "result"),
        token("code", "code"),
        token("status", "status"),
        date("date", "effective[x]"),
    ),
    "Provenance": (
        reference("target", "target"),
        _patient_of("target", "target"),
        date("recorded", "recorded"),
    ),
}


def _registry(definitions: dict[str, tuple[SearchParam, ...]]) -> dict[str, dict[str, SearchParam]]:
    registry: dict[str, dict[str, SearchParam]] = {}
    for resource_type, params in definitions.items():
        by_name = {param.name: param for param in params}
        for param in params:
            shared = by_name.get(param.stored_as) if param.stored_as else param
            if shared is None or shared.stored_as or (shared.kind, shared.paths) != (param.kind, param.paths):
                raise AssertionError(
                    f"{resource_type}.{param.name}: stored_as must name a parameter with the same paths"
                )
        registry[resource_type] = by_name
    return registry


#: resource type -> parameter name -> definition.
SEARCH_PARAMETERS: dict[str, dict[str, SearchParam]] = _registry(_DEFINITIONS)

#: Parameters every type supports, answered from the resource table itself (search.html#all).
COMMON_PARAMETERS: dict[str, Kind] = {"_id": "token", "_lastUpdated": "date"}

#: Result parameters (search.html#return): page size and position.
RESULT_PARAMETERS = ("_count", "_offset")


def supported_types() -> list[str]:
    return sorted(SEARCH_PARAMETERS)


def indexed_parameters(resource_type: str) -> list[SearchParam]:
    """Parameters of ``resource_type`` that own index rows (``stored_as`` ones share another's)."""
    return [param for param in SEARCH_PARAMETERS.get(resource_type, {}).values() if param.stored_as is None]
