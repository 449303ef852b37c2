"""The canonical URL of each search parameter's R4 definition, for the CapabilityStatement's
``rest.resource.searchParam.definition``.

R4 names a parameter ``<Type>-<code>`` (``Patient-identifier``) unless one SearchParameter serves
several types: those shared ones are listed here with the types they cover among the gateway's,
as search-parameters.json of R4 4.0.1 has them (checked against it for every parameter the store
supports). ``_id`` and ``_lastUpdated`` are ``Resource-*``. A parameter that is the gateway's own
has a ``urn:hl7gw:`` name.
"""

from __future__ import annotations

R4_BASE = "http://hl7.org/fhir/SearchParameter/"
#: Parameters R4 does not define, named by the gateway (docs/operations.md).
OWN_BASE = "urn:hl7gw:SearchParameter:"
OWN_PARAMETERS = frozenset({("AuditEvent", "entity-identifier")})

_CLINICAL: tuple[str, ...] = (
    "AllergyIntolerance",
    "Condition",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "EpisodeOfCare",
    "Immunization",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "Observation",
    "Procedure",
    "ServiceRequest",
)
_MEDICATIONS = ("MedicationAdministration", "MedicationDispense", "MedicationRequest")
_PERSONS = ("Patient", "Practitioner", "RelatedPerson")

#: Shared R4 definition id -> (code, the types among ours it is the definition for).
_SHARED: dict[str, tuple[str, tuple[str, ...]]] = {
    "clinical-patient": ("patient", _CLINICAL),
    "clinical-identifier": ("identifier", _CLINICAL),
    "clinical-code": (
        "code",
        ("AllergyIntolerance", "Condition", "DiagnosticReport", *_MEDICATIONS, "Observation", "Procedure")
        + ("ServiceRequest",),
    ),
    "clinical-date": (
        "date",
        ("AllergyIntolerance", "DiagnosticReport", "Encounter", "EpisodeOfCare", "Immunization", "Observation")
        + ("Procedure",),
    ),
    "clinical-type": ("type", ("AllergyIntolerance", "DocumentReference", "Encounter", "EpisodeOfCare")),
    "clinical-encounter": (
        "encounter",
        ("DiagnosticReport", "DocumentReference", "Observation", "Procedure", "ServiceRequest"),
    ),
    "medications-medication": ("medication", _MEDICATIONS),
    "medications-status": ("status", _MEDICATIONS),
    "medications-prescription": ("prescription", ("MedicationDispense",)),
    "medications-date": ("date", ("MedicationRequest",)),
    "medications-encounter": ("encounter", ("MedicationRequest",)),
    "individual-address": ("address", _PERSONS),
    "individual-address-city": ("address-city", _PERSONS),
    "individual-address-country": ("address-country", _PERSONS),
    "individual-address-postalcode": ("address-postalcode", _PERSONS),
    "individual-address-state": ("address-state", _PERSONS),
    "individual-address-use": ("address-use", _PERSONS),
    "individual-birthdate": ("birthdate", ("Patient", "RelatedPerson")),
    "individual-email": ("email", (*_PERSONS, "PractitionerRole")),
    "individual-phone": ("phone", (*_PERSONS, "PractitionerRole")),
    "individual-telecom": ("telecom", (*_PERSONS, "PractitionerRole")),
    "individual-family": ("family", ("Patient", "Practitioner")),
    "individual-given": ("given", ("Patient", "Practitioner")),
    "individual-gender": ("gender", _PERSONS),
    "individual-phonetic": ("phonetic", _PERSONS),
}
_BY_TYPE_AND_CODE = {
    (resource_type, code): definition_id for definition_id, (code, types) in _SHARED.items() for resource_type in types
}


def definition(resource_type: str, code: str) -> str:
    """The canonical URL of the definition of search parameter ``code`` of ``resource_type``."""
    if code in ("_id", "_lastUpdated"):
        return f"{R4_BASE}Resource-{code[1:]}"
    if (resource_type, code) in OWN_PARAMETERS:
        return f"{OWN_BASE}{resource_type}-{code}"
    shared = _BY_TYPE_AND_CODE.get((resource_type, code))
    return R4_BASE + (shared or f"{resource_type}-{code}")
