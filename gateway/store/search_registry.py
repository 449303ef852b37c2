"""The search parameters the store indexes, per resource type, from the FHIR R4 registry.

Names, kinds and expressions follow searchparameter-registry.html (R4, 4.0.1); uri, number and
special parameters, composites other than Observation's code-value-*, and a few rarely used ones
are left out. Every type also has ``_tag`` and ``_security`` (``META_PARAMETERS``). The
definitions are data, by R4 module: ``search_registry_admin`` and ``search_registry_clinical``.
To support a new resource type, add an entry there (an empty one is enough to store, read and
search it by ``_id``). Resources stored before a parameter was added need ``ResourceStore.reindex``.
"""

from __future__ import annotations

from gateway.store.search_params import Kind, SearchParam, registry, token
from gateway.store.search_registry_admin import ADMINISTRATIVE
from gateway.store.search_registry_clinical import CLINICAL

#: Parameters of every type read from Resource.meta (search.html#all), indexed like the others.
META_PARAMETERS = (token("_tag", "meta.tag"), token("_security", "meta.security"))

#: resource type -> parameter name -> definition.
SEARCH_PARAMETERS: dict[str, dict[str, SearchParam]] = registry(
    {name: (*params, *META_PARAMETERS) for name, params in {**ADMINISTRATIVE, **CLINICAL}.items()}
)

#: Parameters every type supports, answered from the resource table itself (search.html#all).
COMMON_PARAMETERS: dict[str, Kind] = {"_id": "token", "_lastUpdated": "date"}

#: What a search across types (``GET [base]?_type=``) may filter by: the parameters every type has.
SYSTEM_PARAMETERS: dict[str, SearchParam] = {param.name: param for param in META_PARAMETERS}


def supported_types() -> list[str]:
    return sorted(SEARCH_PARAMETERS)


def indexed_parameters(resource_type: str) -> list[SearchParam]:
    """Parameters of ``resource_type`` that own index rows (``stored_as`` ones share another's)."""
    return _INDEXED.get(resource_type, [])


def reference_parameters(resource_type: str) -> list[SearchParam]:
    return [param for param in SEARCH_PARAMETERS.get(resource_type, {}).values() if param.kind == "reference"]


def can_refer_to(param: SearchParam, target_type: str) -> bool:
    return not param.targets or target_type in param.targets


_INDEXED = {
    resource_type: [param for param in params.values() if param.stored_as is None and param.kind != "composite"]
    for resource_type, params in SEARCH_PARAMETERS.items()
}
