"""The CapabilityStatement: exactly the types, interactions, search parameters and includes the API serves."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import metadata as package_metadata
from typing import Any

from gateway.api.auth import ADMIN_ONLY_TYPES
from gateway.api.search_definitions import definition
from gateway.store.feed_query import SYSTEM_PARAMETERS
from gateway.store.search_params import SearchParam
from gateway.store.search_registry import (
    COMMON_PARAMETERS,
    META_PARAMETERS,
    SEARCH_PARAMETERS,
    can_refer_to,
    reference_parameters,
    supported_types,
)

FHIR_VERSION = "4.0.1"
INTERACTIONS = ("read", "vread", "history-instance", "history-type", "search-type")
#: Interactions on the whole system (CapabilityStatement.rest.interaction).
SYSTEM_INTERACTIONS = ("history-system", "search-system")
FORMATS = ("application/fhir+json", "application/json", "json")
#: FHIR Bulk Data Access (IG v2): the CapabilityStatement this server instantiates and its operations.
BULK_DATA = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
_BULK_OPERATIONS = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
_EXPORT_DOCS = (
    "FHIR Bulk Data $export (async: Accept application/fhir+json, Prefer respond-async; _outputFormat "
    "application/fhir+ndjson, _since, _type); files need the token that asked."
)
#: The core specification's OperationDefinitions (Patient-everything).
_CORE_OPERATIONS = "http://hl7.org/fhir/OperationDefinition/"
_EVERYTHING = (
    "GET or POST Patient/[id]/$everything: the Patient, its compartment (Patients linking to it too) and what "
    "those reference outside any compartment (Practitioner, Organization, Location...), a searchset in pages "
    "by type and id; _since, _type, _count, _summary, _elements. AuditEvent: the admin role only."
)

_COMMON_DOCS = {
    "_id": "Logical id of the resource (Resource.id); a comma-separated list matches any",
    "_lastUpdated": "When the stored version was written (Resource.meta.lastUpdated); prefixes eq ne gt lt ge le sa eb",
}
#: What each kind of parameter accepts beyond plain values (search.html#modifiers, #prefix, #chaining).
_KIND_DOCS = {
    "token": "modifiers :missing :not :text :of-type (on identifiers)",
    "string": "modifiers :missing :exact :contains",
    "date": "prefixes eq ne gt lt ge le sa eb; modifier :missing",
    "reference": "modifiers :missing :[type] :identifier; chains name[:type].parameter",
    "quantity": "[prefix]number[|system|code] or number||code-or-unit; prefixes eq ne gt lt ge le sa eb ap; :missing",
    "composite": "[first]$[second]: both values on the same resource",
}
_SEARCH_DOCS = (
    "Search: chains (subject:Patient.name=, patient.identifier=, up to 3 steps; the type modifier is required "
    "when the reference may point at several types that have the parameter), reverse chains "
    "(_has:Observation:patient:code=, nestable), _include and _revinclude with * and :iterate, and "
    "GET [base]?_type=A,B with _id, _lastUpdated, _tag, _security. Quantities compare numbers, not "
    "UCUM-converted units."
)
# Parameters of every search (search.html#return), listed once for all types.
_RESULT_PARAMETERS = [
    ("_count", "number", "Page size (default 50, at most 1000; 0 gives the total only)"),
    (
        "_sort",
        "string",
        "Sort keys, '-' for descending: _id, _lastUpdated, or a date, string or token (by code) parameter",
    ),
    ("_include", "special", "[type]:[parameter](:[target]), [type]:* or *; :iterate follows included resources too"),
    ("_revinclude", "special", "[type]:[parameter](:[target]), [type]:* or *; :iterate follows included resources too"),
    ("_total", "token", "none | estimate | accurate (estimate counts exactly); default accurate"),
    ("_totalMethod", "token", "Read as _total (what fhirpy's count() sends)"),
    ("_summary", "token", "true | text | data | count (the total, no entries) | false; on read and search"),
    ("_elements", "string", "Top-level elements to keep ([Type.]name,...) or, after a '-', to leave out"),
    ("_cursor", "string", "Opaque page position from the next/previous links; keyset paging, stable under writes"),
]
_HISTORY_DOCS = {
    "_count": "Versions per page (default 50, at most 1000)",
    "_since": "Only versions written at or after this instant",
    "_cursor": "Opaque page position from the next link",
    "_sort": (
        "_lastUpdated: the history feed, oldest first in commit order, every page with a next link "
        "(resume from the last one: every change once, in order); -_lastUpdated (default): newest first"
    ),
    "_type": "System history only: comma-separated resource types",
}


def software_version() -> str:
    try:
        return package_metadata.version("hl7gw")
    except package_metadata.PackageNotFoundError:
        return "0.1.0"


def capability_statement(base_url: str, smart: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the server's CapabilityStatement (capabilitystatement.html) for the API at ``base_url``;
    ``smart``: the SMART part of ``rest.security`` (service, oauth-uris) when an authorization server is set."""
    history = "; ".join(f"{name}: {_HISTORY_DOCS[name]}" for name in SYSTEM_PARAMETERS)
    return {
        "resourceType": "CapabilityStatement",
        "id": "hl7gw",
        "status": "active",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "publisher": "hl7gw",
        "kind": "instance",
        "software": {"name": "hl7gw", "version": software_version()},
        "implementation": {
            "description": "hl7gw built-in FHIR store (read-only API; Subscriptions are written)",
            "url": base_url,
        },
        "instantiates": [BULK_DATA],
        "fhirVersion": FHIR_VERSION,
        "format": list(FORMATS),
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    f"Read-only, but for Subscription. History parameters: {history}. Unknown search "
                    "parameters are refused (400) unless the request says 'Prefer: handling=lenient'. Search "
                    "by GET or by POST [type]/_search with a form body; HEAD on every GET. _summary and "
                    f"_elements subset reads and searches alike (meta.tag SUBSETTED). {_SEARCH_DOCS}"
                ),
                "security": {
                    **(smart or {}),
                    "description": (
                        "Send 'Authorization: Bearer <token>'; /metadata needs no token. "
                        f"{', '.join(sorted(ADMIN_ONLY_TYPES))}: the admin role only."
                        + (" Bearer JWTs of the authorization server, SMART v2 read scopes." if smart else "")
                    ),
                },
                "resource": [_resource(resource_type) for resource_type in supported_types()]
                + [_subscription(), _group()],
                # GET [base]/_history (and its feed: docs/consumers.md), GET [base]?_type= (docs/fhir-api.md).
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "searchParam": [
                    {"name": name, "type": kind, "documentation": docs}
                    for name, kind, docs in [*_RESULT_PARAMETERS, *_system_parameters()]
                ],
                "operation": [_operation("export", _EXPORT_DOCS)],
            }
        ],
    }


def search_includes(resource_type: str) -> list[str]:
    """``_include`` values a search of ``resource_type`` accepts (``*``: all of them)."""
    named = [f"{resource_type}:{param.name}" for param in reference_parameters(resource_type)]
    return ["*", *named] if named else []


def _system_parameters() -> list[tuple[str, str, str]]:
    """The parameters of ``GET [base]?_type=``."""
    meta = [(param.name, param.kind, f"Resource.{param.paths[0]} (every type)") for param in META_PARAMETERS]
    common = [(name, kind, _COMMON_DOCS[name]) for name, kind in COMMON_PARAMETERS.items()]
    return [("_type", "token", "Search across these types (comma-separated), GET [base]?_type=A,B"), *common, *meta]


def search_revincludes(resource_type: str) -> list[str]:
    """``_revinclude`` values: reference parameters of any type that can point at ``resource_type``."""
    return [
        f"{source}:{param.name}"
        for source in supported_types()
        for param in reference_parameters(source)
        if can_refer_to(param, resource_type)
    ]


def _resource(resource_type: str) -> dict[str, Any]:
    admin_only = resource_type in ADMIN_ONLY_TYPES
    common = [
        {"name": name, "definition": definition(resource_type, name), "type": kind, "documentation": _COMMON_DOCS[name]}
        for name, kind in COMMON_PARAMETERS.items()
    ]
    specific = [
        {
            "name": param.name,
            "definition": definition(resource_type, param.name),
            "type": param.kind,
            "documentation": _documentation(resource_type, param),
        }
        for param in SEARCH_PARAMETERS[resource_type].values()
    ]
    resource: dict[str, Any] = {
        "type": resource_type,
        **({"documentation": "Needs the admin role: the audit trail of operator actions."} if admin_only else {}),
        "interaction": [{"code": code} for code in INTERACTIONS],
        "versioning": "versioned",
        "readHistory": True,
        "conditionalRead": "full-support",  # If-None-Match and If-Modified-Since (http.html#cread)
    }
    includes, revincludes = search_includes(resource_type), search_revincludes(resource_type)
    if includes:
        resource["searchInclude"] = includes
    if revincludes:
        resource["searchRevInclude"] = revincludes
    resource["searchParam"] = common + specific
    if resource_type == "Patient":
        resource["operation"] = [
            _operation("patient-export", "The compartments of every Patient. " + _EXPORT_DOCS),
            {"name": "everything", "definition": _CORE_OPERATIONS + "Patient-everything", "documentation": _EVERYTHING},
        ]
    return resource


def _subscription() -> dict[str, Any]:
    """Subscription (rest-hook, criteria-based; notifications in the shape of the Subscriptions R5
    Backport IG for R4): operators and admins write and read them."""
    return {
        "type": "Subscription",
        "documentation": (
            "Operator or admin role. criteria: a search on one supported type (its search parameters); "
            "channel.type rest-hook; channel.payload application/fhir+json (full resource) or absent (id only); "
            "status requested -> active -> error | off, kept by the server. Notifications: history Bundles "
            "whose first entry is a backport-subscription-status-r4 Parameters with event numbers."
        ),
        "supportedProfile": [
            "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4"
        ],
        "interaction": [{"code": code} for code in ("read", "search-type", "create", "update", "delete")],
        "versioning": "versioned-update",
        "readHistory": False,
        "updateCreate": True,
        "searchParam": [
            {
                "name": "_id",
                "definition": "http://hl7.org/fhir/SearchParameter/Resource-id",
                "type": "token",
                "documentation": "Logical id of the Subscription",
            },
            {
                "name": "status",
                "definition": "http://hl7.org/fhir/SearchParameter/Subscription-status",
                "type": "token",
                "documentation": "requested | active | error | off",
            },
        ],
    }


def _group() -> dict[str, Any]:
    """Group: no interaction of its own, only $export of a stored Group's member Patients."""
    docs = "The compartments of a stored Group's member Patients. " + _EXPORT_DOCS
    return {"type": "Group", "operation": [_operation("group-export", docs)]}


def _operation(name: str, documentation: str) -> dict[str, str]:
    return {"name": name.split("-")[0], "definition": _BULK_OPERATIONS + name, "documentation": documentation}


def _documentation(resource_type: str, param: SearchParam) -> str:
    if param.kind == "composite":
        return f"{' $ '.join(param.components)} ({_KIND_DOCS['composite']})"
    paths = " | ".join(f"{resource_type}.{path}" for path in param.paths)
    targets = f" ({', '.join(param.targets)} only)" if param.targets else ""
    return f"{paths}{targets}; {_KIND_DOCS[param.kind]}"
