"""What a search parameter is: a name, a kind, the paths its values come from, and registry checks.

The parameters each resource type has are data in ``search_registry``. Paths are relative to the
resource; ``x[x]`` matches every choice type of ``x``; ``x.where(k=v)`` keeps the items of ``x``
whose ``k`` equals ``v`` (the FHIRPath ``where`` the R4 registry uses for telecom). A reference
parameter whose R4 expression ends in ``.where(resolve() is T)`` is written with ``targets=(T,)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["token", "string", "date", "reference", "quantity", "composite"]


@dataclass(frozen=True, slots=True)
class SearchParam:
    name: str
    kind: Kind
    paths: tuple[str, ...]
    #: Reference parameters: the resource types a value may point at; empty means any.
    targets: tuple[str, ...] = ()
    #: Reuse the index rows of this parameter (same paths) instead of storing a copy.
    stored_as: str | None = None
    #: Composite parameters: the parameters of the same resource whose values ``a$b`` pair up.
    components: tuple[str, ...] = ()

    @property
    def index_name(self) -> str:
        return self.stored_as or self.name


def token(name: str, *paths: str) -> SearchParam:
    return SearchParam(name, "token", paths)


def string(name: str, *paths: str) -> SearchParam:
    return SearchParam(name, "string", paths)


def date(name: str, *paths: str) -> SearchParam:
    return SearchParam(name, "date", paths)


def quantity(name: str, *paths: str) -> SearchParam:
    return SearchParam(name, "quantity", paths)


def composite(name: str, *components: str) -> SearchParam:
    """Values of top-level elements matched together (``code-value-quantity``: code$value); stores no rows."""
    return SearchParam(name, "composite", (), components=components)


def reference(name: str, *paths: str, targets: tuple[str, ...] = (), stored_as: str | None = None) -> SearchParam:
    return SearchParam(name, "reference", paths, targets, stored_as)


def restricted(base: SearchParam, name: str, *targets: str) -> SearchParam:
    """``base`` limited to some target types, sharing its index rows (e.g. ``patient`` of ``subject``)."""
    if base.kind != "reference":
        raise AssertionError(f"{name}: only reference parameters can be restricted")
    return SearchParam(name, "reference", base.paths, targets, base.name)


def registry(definitions: dict[str, tuple[SearchParam, ...]]) -> dict[str, dict[str, SearchParam]]:
    """Index ``definitions`` by type and name; a parameter that shares rows must share paths too."""
    checked: dict[str, dict[str, SearchParam]] = {}
    for resource_type, params in definitions.items():
        by_name = {param.name: param for param in params}
        if len(by_name) != len(params):
            raise AssertionError(f"{resource_type}: a search parameter is defined twice")
        for param in params:
            if param.kind == "composite":
                parts = [by_name.get(part) for part in param.components]
                if len(parts) != 2 or any(part is None or part.kind == "composite" for part in parts):
                    raise AssertionError(f"{resource_type}.{param.name}: components must be two simple parameters")
                continue
            shared = by_name.get(param.stored_as) if param.stored_as else param
            if shared is None or shared.stored_as or (shared.kind, shared.paths) != (param.kind, param.paths):
                raise AssertionError(
                    f"{resource_type}.{param.name}: stored_as must name a parameter with the same paths"
                )
            if param.stored_as and shared.targets and not set(param.targets) <= set(shared.targets):
                raise AssertionError(f"{resource_type}.{param.name}: targets must be among {shared.name}'s")
        checked[resource_type] = by_name
    return checked


# Groups of parameters several types share, as the R4 registry defines them.


def address_params() -> tuple[SearchParam, ...]:
    """The address parameters of Patient, Practitioner, RelatedPerson, Organization, Location."""
    parts = [("city", "city"), ("country", "country"), ("postalcode", "postalCode"), ("state", "state")]
    return (
        string("address", "address"),
        *(string(f"address-{name}", f"address.{element}") for name, element in parts),
        token("address-use", "address.use"),
    )


def telecom_params() -> tuple[SearchParam, ...]:
    return (
        token("telecom", "telecom"),
        token("phone", "telecom.where(system=phone)"),
        token("email", "telecom.where(system=email)"),
    )


def human_name_params() -> tuple[SearchParam, ...]:
    # HumanName search covers family, given, prefix, suffix and text (Patient.name, Practitioner.name).
    return string("name", "name"), string("family", "name.family"), string("given", "name.given")


def subject_params(*targets: str) -> tuple[SearchParam, ...]:
    """``subject`` and ``patient`` = subject.where(resolve() is Patient), sharing index rows."""
    subject = reference("subject", "subject", targets=targets)
    return subject, restricted(subject, "patient", "Patient")


def encounter_param() -> SearchParam:
    return reference("encounter", "encounter", targets=("Encounter",))
