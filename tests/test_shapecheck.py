"""Validation by shape must say exactly what the fhir.resources R4B model says."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import validate
from gateway.errors import ValidationError
from gateway.shapecheck import ShapeRegistry, Walk, checkers_for
from gateway.validate import validate_bundle
from tests.support.convert import converter, sample_message

SAMPLES = ("v2-to-fhir-ig/ADT_A01.hl7", "v2-to-fhir-ig/ORU_R01.hl7", "v2-to-fhir-ig/VXU_V04.hl7")


@functools.cache
def _resources() -> tuple[dict[str, Any], ...]:
    found = []
    for name in SAMPLES:
        bundle = converter().convert(sample_message(name))
        found += [e["resource"] for e in bundle["entry"] if "resource" in e]
    return tuple(found)


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every primitive value, in Walk order (resourceType is not a value)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() if k != "resourceType" for p in _leaf_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for n, v in enumerate(value) for p in _leaf_paths(v, (*path, n))]
    return [path]


def _set(resource: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = resource
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


def _model_accepts(resource: dict[str, Any]) -> bool:
    return validate._model_problem(resource) is None


def _checks_accept(resource: dict[str, Any]) -> bool:
    walk = Walk()
    walk.shape(resource)
    return all(check(value) for check, value in zip(checkers_for(resource), walk.values))


def test_every_value_has_a_checker() -> None:
    for resource in _resources():
        walk = Walk()
        walk.shape(resource)
        assert len(checkers_for(resource)) == len(walk.values) == len(_leaf_paths(resource))


# Values of the JSON type a leaf already has (a new type is a new shape, which the model checks itself).
_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "2024-02-30",
            "2024-02-29",
            "2023-02-29",
            "1970",
            "1970-06",
            "2020-01-01T10:00:00Z",
            "2020-01-01T10:00:00",
            "2020-01-01T25:00:00+01:00",
            "urn:uuid:x",
            "has space",
            "a\tb",
            "x" * 70,
            "final",
            "http://loinc.org",
            "-1",
            "1.50",
            "abc-DEF.123",
            " lead",
            "trail ",
            "",
        ]
    ),
)
_NUMBER = st.one_of(st.integers(min_value=-(2**40), max_value=2**40), st.sampled_from([0, -1, 2**31, 2**31 - 1]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_checks_agree_with_the_model_on_any_value(data: st.DataObject) -> None:
    resource = copy.deepcopy(data.draw(st.sampled_from(_resources())))
    path = data.draw(st.sampled_from(_leaf_paths(resource)))
    old: Any = resource
    for step in path:
        old = old[step]
    if isinstance(old, bool):
        new: Any = data.draw(st.booleans())
    elif isinstance(old, int):
        new = data.draw(_NUMBER)
    elif isinstance(old, float):
        new = data.draw(st.floats(allow_nan=False, allow_infinity=False))
    else:
        new = data.draw(_TEXT)
    _set(resource, path, new)
    assert _checks_accept(resource) == _model_accepts(resource), (path, new)


def test_a_known_shape_with_a_bad_value_is_rejected_with_the_model_message() -> None:
    validate.clear_cache()
    bundle = copy.deepcopy(converter().convert(sample_message("v2-to-fhir-ig/ADT_A01.hl7")))
    validate_bundle(bundle)  # every shape accepted
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["birthDate"] = "1970-02-30"
    with pytest.raises(ValidationError, match=r"Patient/.*birthDate"):
        validate_bundle(bundle)


def test_a_known_shape_is_not_given_to_the_model_again(monkeypatch: pytest.MonkeyPatch) -> None:
    validate.clear_cache()
    bundle = copy.deepcopy(converter().convert(sample_message("v2-to-fhir-ig/ADT_A01.hl7")))
    validate_bundle(bundle)
    calls: list[str] = []
    monkeypatch.setattr(validate, "_model_problem", lambda r: calls.append(r["resourceType"]))
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["birthDate"] = "1971-07-02"  # new content, same shape
    validate_bundle(bundle)
    assert calls == []
    patient["active"] = True  # a new shape
    validate_bundle(bundle)
    assert calls == ["Patient"]


def test_empty_elements_are_found_on_a_known_shape() -> None:
    validate.clear_cache()
    bundle = copy.deepcopy(converter().convert(sample_message("v2-to-fhir-ig/ADT_A01.hl7")))
    validate_bundle(bundle)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["name"][0]["family"] = "  "
    with pytest.raises(ValidationError, match=r"name\[0\]\.family is empty"):
        validate_bundle(bundle)


def test_registry_forgets_when_full() -> None:
    registry = ShapeRegistry(size=2)
    resources = _resources()[:3]
    for resource in resources:
        registry.accept(repr(resource), resource)
    assert len(registry) <= 2
    assert registry.checkers(repr(resources[2])) is not None


def test_long_texts_are_checked_but_not_remembered() -> None:
    """A checker remembers short values that passed, never a long text (a report, an attachment)."""
    from gateway.shapecheck import MAX_REMEMBERED_TEXT, primitive_checker

    check = primitive_checker(str)
    long_text = "y" * (MAX_REMEMBERED_TEXT + 1)
    assert check(long_text) and check("short")
    remembered = check.__closure__[1].cell_contents  # type: ignore[attr-defined]
    assert "short" in remembered and long_text not in remembered
