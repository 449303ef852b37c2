"""SMART on FHIR scopes (smart-app-launch scopes-and-launch-context.html) as the gateway honours them:
reads (``r``: read, vread, history) and searches (``s``) of the types a token names, for every
resource (``user/``, ``system/``) or within the compartment of the token's patient (``patient/``).

v2 scopes (``patient/Observation.rs``, ``system/*.rs``) and v1 ones (``patient/*.read``; ``.*`` reads
too) are understood; the create, update and delete permissions are ignored (the API does not write
FHIR data), and so are scopes with a query (``?category=...``): a token gets less than it asked for,
never more.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

#: One SMART scope: context, type or ``*``, then v2 permissions in the order c r u d s, or v1 read/write/*.
_SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Z][A-Za-z]{1,63})\.(read|write|\*|c?r?u?d?s?)")
ANY_TYPE = "*"


class Permission(StrEnum):
    read = "r"  # read, vread, history of an instance or a type
    search = "s"


@dataclass(frozen=True, slots=True)
class SmartAccess:
    """What a token's SMART scopes allow, per type (or ``*``): without restriction, or in a patient's compartment."""

    #: (type or ``*``, permission) granted in ``user/`` or ``system/`` scopes.
    anywhere: frozenset[tuple[str, Permission]]
    #: (type or ``*``, permission) granted in ``patient/`` scopes.
    in_compartment: frozenset[tuple[str, Permission]]
    #: The token's ``patient`` claim (SMART launch context); None when it has none.
    patient: str | None

    @property
    def grants_anything(self) -> bool:
        return bool(self.anywhere or self.in_compartment)

    @property
    def unlimited(self) -> bool:
        """Every type may be read and searched without restriction (a ``system/*.rs`` token)."""
        return {(ANY_TYPE, Permission.read), (ANY_TYPE, Permission.search)} <= self.anywhere

    def reach(self, resource_type: str, permission: Permission) -> Reach:
        """How far ``permission`` on ``resource_type`` goes: everywhere, one patient's compartment, or not at all."""
        if (resource_type, permission) in self.anywhere or (ANY_TYPE, permission) in self.anywhere:
            return Reach.everywhere
        if (resource_type, permission) in self.in_compartment or (ANY_TYPE, permission) in self.in_compartment:
            return Reach.compartment
        return Reach.nowhere

    def readable(self, resource_type: str) -> bool:
        return self.reach(resource_type, Permission.read) is not Reach.nowhere

    def named_types(self) -> frozenset[str]:
        """The types the scopes name (``*`` among them when one names every type)."""
        return frozenset(name for name, _ in self.anywhere | self.in_compartment)


class Reach(StrEnum):
    everywhere = "everywhere"
    compartment = "compartment"
    nowhere = "nowhere"


def smart_access(scopes: Iterable[str], patient: str | None) -> SmartAccess:
    """The SmartAccess of a token's scopes and its ``patient`` claim; scopes that are not SMART's are skipped."""
    anywhere: set[tuple[str, Permission]] = set()
    in_compartment: set[tuple[str, Permission]] = set()
    for scope in scopes:
        match = _SCOPE.fullmatch(scope)
        if match is None:
            continue
        context, resource_type, permissions = match.groups()
        granted = _permissions(permissions)
        target = in_compartment if context == "patient" else anywhere
        target.update((resource_type, permission) for permission in granted)
    return SmartAccess(frozenset(anywhere), frozenset(in_compartment), patient)


def _permissions(text: str) -> tuple[Permission, ...]:
    if text in ("read", "*"):  # v1: read is read and search
        return (Permission.read, Permission.search)
    if text == "write":
        return ()
    return tuple(permission for permission in Permission if permission.value in text)
