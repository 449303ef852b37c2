"""Build small FHIR transaction Bundles, shaped like the converter's output, for store and API tests."""

from __future__ import annotations

from typing import Any


def put(resource: dict[str, Any]) -> dict[str, Any]:
    """A PUT entry for ``resource`` (which must carry resourceType and id)."""
    url = f"{resource['resourceType']}/{resource['id']}"
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource, "request": {"method": "PUT", "url": url}}


def delete(resource_type: str, resource_id: str) -> dict[str, Any]:
    return {"request": {"method": "DELETE", "url": f"{resource_type}/{resource_id}"}}


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def patient(resource_id: str, mrn: str, family: str = "Doe", given: str = "Jane", **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": resource_id,
        "identifier": [{"system": "urn:oid:1.2.3.4", "value": mrn}],
        "name": [{"family": family, "given": [given]}],
        **fields,
    }


def observation(resource_id: str, patient_id: str, code: str = "8867-4", **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": resource_id,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        **fields,
    }


def access_audit_event(resource_id: str, patient_id: str) -> dict[str, Any]:
    """An AuditEvent of a read of Patient ``patient_id``, like the access audit trail writes (admins only)."""
    return {
        "resourceType": "AuditEvent",
        "id": resource_id,
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110112"},
        "recorded": "2024-01-01T00:00:00Z",
        "agent": [{"requestor": True}],
        "source": {"observer": {"display": "hl7gw"}},
        "entity": [{"what": {"reference": f"Patient/{patient_id}"}}],
    }
