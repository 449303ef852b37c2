"""The CapabilityStatement: exactly the types, interactions and search parameters the API serves."""

from __future__ import annotations

from datetime import datetime, timezone
from importlib import metadata as package_metadata
from typing import Any

from gateway.store.search_params import COMMON_PARAMETERS, SEARCH_PARAMETERS, SearchParam, supported_types

FHIR_VERSION = "4.0.1"
INTERACTIONS = ("read", "vread", "search-type")

_COMMON_DOCS = {
    "_id": "Logical id of the resource (Resource.id)",
    "_lastUpdated": "When the stored version was written (Resource.meta.lastUpdated)",
}
_RESULT_PARAMETERS = [
    {"name": "_count", "type": "number", "documentation": "Page size (default 50, at most 1000; 0 counts only)"},
    {"name": "_offset", "type": "number", "documentation": "Matches to skip, for paging (next/previous links)"},
]


def software_version() -> str:
    try:
        return package_metadata.version("hl7gw")
    except package_metadata.PackageNotFoundError:
        return "0.1.0"


def capability_statement(base_url: str) -> dict[str, Any]:
    """Build the server's CapabilityStatement (capabilitystatement.html) for the API at ``base_url``."""
    return {
        "resourceType": "CapabilityStatement",
        "id": "hl7gw",
        "status": "active",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "publisher": "hl7gw",
        "kind": "instance",
        "software": {"name": "hl7gw", "version": software_version()},
        "implementation": {"description": "hl7gw built-in FHIR store (read-only API)", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {"description": "Send 'Authorization: Bearer <token>'; /metadata needs no token."},
                "resource": [_resource(resource_type) for resource_type in supported_types()],
                "searchParam": _RESULT_PARAMETERS,
            }
        ],
    }


def _resource(resource_type: str) -> dict[str, Any]:
    common = [
        {"name": name, "type": kind, "documentation": _COMMON_DOCS[name]} for name, kind in COMMON_PARAMETERS.items()
    ]
    specific = [
        {"name": param.name, "type": param.kind, "documentation": _documentation(resource_type, param)}
        for param in SEARCH_PARAMETERS[resource_type].values()
    ]
    return {
        "type": resource_type,
        "interaction": [{"code": code} for code in INTERACTIONS],
        "versioning": "versioned",
        "readHistory": True,
        "searchParam": common + specific,
    }


def _documentation(resource_type: str, param: SearchParam) -> str:
    paths = " | ".join(f"{resource_type}.{path}" for path in param.paths)
    return f"{paths} ({', '.join(param.targets)} only)" if param.targets else paths
