"""What a principal with SMART scopes (``Principal.access``) may read and search, as the FHIR routes ask it.

A principal without SMART scopes (a static token, a JWT with a role scope) passes every check here.
With them: a type the scopes do not name is 403; a ``patient/`` scope limits reads and searches to
the compartment of the token's ``patient`` (403 when it has none, 403 for types outside the Patient
compartment); a read of a resource outside it is 404, as for a resource that does not exist, so a
token cannot learn which ids exist (docs/security.md). What spans types (search and history of all
types, the history feed, $export) needs unlimited reach (``system/*.rs`` or ``user/*.rs``).
"""

from __future__ import annotations

from typing import Any

from gateway.api.auth import Principal
from gateway.api.outcome import FHIRError
from gateway.api.smart_scopes import Permission, Reach
from gateway.store.compartments import compartment_types, in_compartment
from gateway.store.resources import StoredResource
from gateway.store.search_registry import SEARCH_PARAMETERS

_INSUFFICIENT = {"WWW-Authenticate": 'Bearer error="insufficient_scope"'}
_VERBS = {Permission.read: "reading", Permission.search: "searching"}


def reach(principal: Principal, resource_type: str, permission: Permission) -> str | None:
    """The Patient whose compartment bounds ``permission`` on ``resource_type``; None: no bound; 403: not allowed."""
    access = principal.access
    if access is None:
        return None
    found = access.reach(resource_type, permission)
    if found is Reach.everywhere:
        return None
    if found is Reach.nowhere:
        raise _refused(f"the token's scopes do not allow {_VERBS[permission]} {resource_type}")
    if access.patient is None:
        raise _refused("the token's patient/ scopes need its patient claim (the SMART launch context)")
    if resource_type not in compartment_types():
        raise _refused(f"{resource_type} is not in the Patient compartment the token's patient/ scopes allow")
    return access.patient


def require_unlimited(principal: Principal, what: str) -> None:
    """403 unless the principal may read and search every type without bound (no SMART scopes, or ``*/*.rs``)."""
    if principal.access is not None and not principal.access.unlimited:
        raise _refused(f"{what} needs system/*.rs or user/*.rs (or a role's token)")


def require_everywhere(principal: Principal, resource_type: str, permission: Permission, what: str) -> None:
    """403 unless ``permission`` on ``resource_type`` reaches every resource (for what a compartment cannot bound)."""
    if reach(principal, resource_type, permission) is not None:
        raise _refused(f"{what} is not available to patient/ scopes")


def shows(stored: StoredResource | None, patient: str | None) -> bool:
    """Whether a version (None: unknown) may be shown to a principal bounded by ``patient``'s compartment."""
    if patient is None:
        return True
    if stored is None or stored.resource is None:
        return False
    return in_compartment(stored.type, stored.id, stored.resource, patient)


def visible(principal: Principal, resource: dict[str, Any]) -> bool:
    """Whether a resource a search included (``_include``, ``_revinclude``) may be shown to ``principal``."""
    access = principal.access
    if access is None:
        return True
    resource_type, resource_id = str(resource.get("resourceType", "")), str(resource.get("id", ""))
    found = access.reach(resource_type, Permission.read)
    if found is Reach.everywhere:
        return True
    if found is Reach.nowhere or access.patient is None:
        return False
    return in_compartment(resource_type, resource_id, resource, access.patient)


def unreadable_types(principal: Principal) -> frozenset[str]:
    """Types the principal's scopes do not allow reading: a chain, ``_has`` or include through them is refused."""
    access = principal.access
    if access is None:
        return frozenset()
    return frozenset(name for name in SEARCH_PARAMETERS if not access.readable(name))


def refused_type() -> FHIRError:
    return _refused("the search goes through a type the token's scopes do not allow reading")


def _refused(diagnostics: str) -> FHIRError:
    return FHIRError(403, diagnostics, "forbidden", dict(_INSUFFICIENT))
