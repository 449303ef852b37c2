"""Bundle validation: the R4B models, our own checks, and the validation cache."""

from __future__ import annotations

import copy
import time

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import validate
from gateway.errors import StageCrash, ValidationError, describe
from gateway.lru import LRU
from gateway.shapecheck import Walk
from gateway.validate import validate_bundle
from tests.support.convert import converter, sample_message


@pytest.fixture
def bundle() -> dict:
    return copy.deepcopy(converter().convert(sample_message("v2-to-fhir-ig/ORU_R01.hl7")))


def _resource(bundle: dict, resource_type: str) -> dict:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type)


def test_converted_bundle_is_valid(bundle: dict) -> None:
    validate_bundle(bundle)


def test_model_error_names_resource_and_element(bundle: dict) -> None:
    patient = _resource(bundle, "Patient")
    patient["birthDate"] = "1970-06-01T09:12"
    # The element is named; the value is not (the problem may reach a log).
    with pytest.raises(ValidationError, match=rf"Patient/{patient['id']}: birthDate: invalid value$"):
        validate_bundle(bundle)


def test_missing_required_element(bundle: dict) -> None:
    report = _resource(bundle, "DiagnosticReport")
    del report["code"]
    with pytest.raises(ValidationError, match=rf"DiagnosticReport/{report['id']}: code: .*required"):
        validate_bundle(bundle)


def test_unknown_element(bundle: dict) -> None:
    _resource(bundle, "Observation")["colour"] = "blue"
    with pytest.raises(ValidationError, match="colour: Extra inputs are not permitted"):
        validate_bundle(bundle)


@pytest.mark.parametrize("empty", ["", "   ", {}, [], None])
def test_empty_elements_are_refused(bundle: dict, empty: object) -> None:
    observation = _resource(bundle, "Observation")
    observation["code"]["coding"][0]["display"] = empty
    with pytest.raises(
        ValidationError, match=rf"Observation/{observation['id']}: element code.coding\[0\].display is empty"
    ):
        validate_bundle(bundle)


def test_required_binding_codes(bundle: dict) -> None:
    _resource(bundle, "Observation")["status"] = "done"
    with pytest.raises(ValidationError, match="status: the code is not one of") as caught:
        validate_bundle(bundle)
    assert "done" not in str(caught.value)


@pytest.mark.parametrize(
    ("change", "invariant"),
    [
        ({"end": None}, "app-2"),
        ({"start": None}, "app-2"),
        ({"start": None, "end": None}, "app-3"),
        ({"status": "noshow", "start": None, "end": None}, "app-3"),
        ({"cancelationReason": {"text": "doctor ill"}}, "app-4"),
        ({"participant": [{"status": "accepted"}]}, "app-1"),
    ],
)
def test_appointment_invariants(change: dict, invariant: str) -> None:
    """FHIR R4 app-1 to app-4, which the R4B models do not check."""
    siu = copy.deepcopy(converter().convert(sample_message("SIU_S12/SIU-S12-01.hl7")))
    validate_bundle(siu)
    appointment = _resource(siu, "Appointment")
    assert appointment["status"] == "booked"
    for key, value in change.items():
        if value is None:
            appointment.pop(key)
        else:
            appointment[key] = value
    with pytest.raises(ValidationError, match=rf"Appointment/{appointment['id']}: {invariant}: "):
        validate_bundle(siu)


def test_appointments_without_times_that_may_lack_them() -> None:
    siu = copy.deepcopy(converter().convert(sample_message("SIU_S12/SIU-S12-01.hl7")))
    appointment = _resource(siu, "Appointment")
    del appointment["start"], appointment["end"]
    for status in ("proposed", "cancelled", "waitlist"):
        appointment["status"] = status
        validate_bundle(siu)
    appointment.update(status="cancelled", cancelationReason={"text": "doctor ill"})
    validate_bundle(siu)


def test_telecom_system_code(bundle: dict) -> None:
    _resource(bundle, "Patient")["telecom"][0]["system"] = "mobile"
    with pytest.raises(ValidationError, match="telecom.system: the code is not one of") as caught:
        validate_bundle(bundle)
    assert "mobile" not in str(caught.value)


@pytest.mark.parametrize(
    ("reference", "reason"),
    [
        ("urn:uuid:00000000-0000-0000-0000-000000000000", "names no entry of this bundle"),
        ("Patient", "is not Type/id"),
        ("Patients/123", "names .Patients., which is not a FHIR resource type"),
        ("HumanName/123", "names .HumanName., which is not a FHIR resource type"),
    ],
)
def test_bad_references(bundle: dict, reference: str, reason: str) -> None:
    _resource(bundle, "Observation")["subject"] = {"reference": reference}
    with pytest.raises(ValidationError, match=rf"the reference at subject.reference {reason}") as caught:
        validate_bundle(bundle)
    assert reference not in str(caught.value)  # the element is named, the value is not


def test_references_to_known_types_outside_the_bundle_are_accepted(bundle: dict) -> None:
    report = _resource(bundle, "DiagnosticReport")
    report["performer"] = [
        {"reference": "Organization/lab-1"},
        {"reference": "https://example.org/fhir/Practitioner/7"},
    ]
    validate_bundle(bundle)
    entry = next(e for e in bundle["entry"] if e["resource"] is report)
    report["basedOn"] = [{"reference": entry["fullUrl"]}]
    validate_bundle(bundle)


def test_duplicate_entries_and_request_mismatch(bundle: dict) -> None:
    duplicated = copy.deepcopy(bundle)
    duplicated["entry"].append(copy.deepcopy(duplicated["entry"][0]))
    with pytest.raises(ValidationError, match="appears twice in the bundle"):
        validate_bundle(duplicated)
    bundle["entry"][0]["request"]["method"] = "POST"
    with pytest.raises(ValidationError, match="request must be PUT"):
        validate_bundle(bundle)


@pytest.mark.parametrize(
    "broken",
    [{}, {"resourceType": "Bundle", "type": "batch", "entry": []}, {"resourceType": "Bundle", "type": "transaction"}],
)
def test_not_a_transaction_bundle(broken: dict) -> None:
    with pytest.raises(ValidationError):
        validate_bundle(broken)


def test_unknown_resource_type(bundle: dict) -> None:
    bundle["entry"][0]["resource"]["resourceType"] = "Patients"
    bundle["entry"][0]["request"]["url"] = "Patients/" + bundle["entry"][0]["resource"]["id"]
    with pytest.raises(ValidationError, match="'Patients' is not a FHIR resource type"):
        validate_bundle(bundle)


def test_cache_returns_the_same_outcome_faster(bundle: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    validate.clear_cache()
    calls: list[str] = []
    real = validate._content_problem

    def counting(resource: dict) -> str | None:
        calls.append(resource["resourceType"])
        return real(resource)

    monkeypatch.setattr(validate, "_content_problem", counting)
    start = time.perf_counter()
    validate_bundle(bundle)
    cold = time.perf_counter() - start
    # The model runs once per shape: the bundle's two Observations (and two PractitionerRoles) share one.
    shapes = {repr(Walk().shape(e["resource"])) for e in bundle["entry"]}
    assert len(calls) == len(shapes) < len(bundle["entry"])
    start = time.perf_counter()
    validate_bundle(copy.deepcopy(bundle))  # equal content, new objects: served from the cache
    warm = time.perf_counter() - start
    assert len(calls) == len(shapes)
    assert warm < cold
    # A failing outcome is cached too, and the error still names the resource.
    _resource(bundle, "Patient")["birthDate"] = "1970-13-01"
    for _ in range(2):
        with pytest.raises(ValidationError, match="birthDate"):
            validate_bundle(bundle)
    assert len(calls) == len(shapes) + 1  # the known shape's bad value went to the model, once


def test_cache_is_bounded() -> None:
    lru = LRU(3)
    for n in range(5):
        lru.put(bytes([n]), None)
    assert lru.get(bytes([0])) == (False, None)
    assert lru.get(bytes([4])) == (True, None)
    lru.get(bytes([2]))
    lru.put(b"new", "problem")
    assert lru.get(bytes([3])) == (False, None)  # least recently used went first
    assert lru.get(bytes([2])) == (True, None)


#: Primitive elements of a Patient whose check a value can fail, each given the PHI text.
_PHI_ELEMENTS = [
    ("birthDate",),
    ("deceasedDateTime",),
    ("multipleBirthInteger",),
    ("active",),
    ("meta", "lastUpdated"),
    ("meta", "versionId"),
    ("address", 0, "period", "start"),
    ("telecom", 0, "rank"),
    ("maritalStatus", "coding", 0, "code"),
    ("extension", 0, "valueDecimal"),
    ("photo", 0, "size"),
    ("managingOrganization",),
]


def _put(resource: dict, path: tuple, value: object) -> None:
    node: object = resource
    for key, following in zip(path, path[1:]):
        default: object = [] if isinstance(following, int) else {}
        if isinstance(key, int):
            assert isinstance(node, list)
            while len(node) <= key:
                node.append(default)
            node = node[key]
        else:
            assert isinstance(node, dict)
            node = node.setdefault(key, default)
    assert isinstance(node, (dict, list))
    if isinstance(node, list):
        node.append(value)
    else:
        node[path[-1]] = value


@settings(max_examples=60, deadline=None)
@given(
    words=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).map(lambda t: f"PHI{t}9  Z"),
    element=st.sampled_from(_PHI_ELEMENTS),
)
def test_what_the_model_refuses_is_named_by_its_place_not_its_value(words: str, element: tuple) -> None:
    base = copy.deepcopy(converter().convert(sample_message("v2-to-fhir-ig/ORU_R01.hl7")))
    patient = _resource(base, "Patient")
    _put(patient, element, words)
    try:
        validate_bundle(base)
    except ValidationError as exc:
        assert words not in exc.safe_text() and words not in describe(exc)
        assert words not in str(exc)  # pydantic's texts name rules; the validators' words are left out
    else:
        raise AssertionError(f"{element} = {words!r} passed")


def test_data_in_an_element_name_or_a_reference_stays_out_of_the_log_text(bundle: dict) -> None:
    _resource(bundle, "Patient")["Quixbartley Zenobiah"] = "x"
    with pytest.raises(ValidationError, match=r"\?: Extra inputs are not permitted") as caught:
        validate_bundle(bundle)
    assert "Quixbartley" not in str(caught.value)
    bundle = copy.deepcopy(converter().convert(sample_message("v2-to-fhir-ig/ORU_R01.hl7")))
    _resource(bundle, "Observation")["subject"] = {"reference": "Quixbartley/123"}
    with pytest.raises(ValidationError) as refused:
        validate_bundle(bundle)
    # The dead letter's reason says what it names, for the operator; the log's text does not.
    assert "names 'Quixbartley'" in str(refused.value)
    assert "Quixbartley" not in refused.value.safe_text() and "Quixbartley" not in describe(refused.value)
    assert refused.value.safe_text().endswith("the reference at subject.reference names no FHIR resource type")


class _Quoting(pydantic.BaseModel):
    """A model whose validators quote what they refuse, as a library's may."""

    given: str
    count: int

    @pydantic.field_validator("given")
    @classmethod
    def _no_digits(cls, value: str) -> str:
        if any(c.isdigit() for c in value):
            raise ValueError(f"{value!r} has digits")
        assert value.strip(), f"{value!r} is blank"
        return value


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="QuixbartleyZ ", max_size=20).map(lambda t: f"PHI{t}7"), st.booleans())
def test_a_validators_words_are_left_out_and_the_rules_kept(words: str, extra: bool) -> None:
    data: dict[str, object] = {"given": words, "count": words}
    if extra:
        data = {"given": f" 0{words}", "count": 1}
    with pytest.raises(pydantic.ValidationError) as caught:
        _Quoting.model_validate(data)
    assert words in str(caught.value)  # pydantic's own text quotes the input
    text = validate.pydantic_problems(caught.value)
    assert words not in text and "given: invalid value" in text
    assert extra or "count: Input should be a valid integer" in text


def test_a_pydantic_error_that_escapes_is_described_by_type_and_place() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        _Quoting.model_validate({"given": "Quixbartley 1931", "count": "Zenobiah"})
    for text in (describe(caught.value), describe(StageCrash("convert", caught.value))):
        assert text.startswith("ValidationError at ") and "Quixbartley" not in text and "Zenobiah" not in text


def test_cache_is_bounded_in_bytes() -> None:
    lru: LRU[bytes, None] = LRU(100, max_bytes=10)
    for n in range(5):
        lru.put(bytes([n]) * 4, None, 4)
    assert lru.bytes <= 10 and len(lru.data) == 2  # the two newest of 4 bytes each
    lru.put(b"too heavy", None, 11)  # heavier than the whole budget: not kept
    assert lru.get(b"too heavy") == (False, None) and lru.bytes == 8
    lru.put(bytes([4]) * 4, None, 4)  # the same key again is not counted twice
    assert lru.bytes == 8
    lru.clear()
    assert lru.bytes == 0


def test_a_large_resource_is_validated_but_not_cached(bundle: dict) -> None:
    """A resource longer than MAX_CACHED_RESOURCE (an attachment) is not kept in the cache; small ones are."""
    validate.clear_cache()
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["name"][0]["text"] = "x" * (validate.MAX_CACHED_RESOURCE + 1)
    validate_bundle(bundle)
    kept = list(validate._cache.data)
    assert kept and all(len(key) <= validate.MAX_CACHED_RESOURCE for key in kept)
    assert validate._cache.max_bytes == validate.CACHE_BYTES
