"""Index extraction (gateway.store.index) and FHIR date ranges (gateway.store.fhir_dates)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.fhir_dates import MAX_DATETIME, MIN_DATETIME, InvalidDate, date_range, format_instant, period_range
from gateway.store.index import MAX_INDEXED, index_rows, normalize_text, parse_reference, rows_for_content, walk
from gateway.store.search_params import SearchParam, reference, registry
from gateway.store.search_registry import SEARCH_PARAMETERS


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("1970", datetime(1970, 1, 1), datetime(1971, 1, 1)),
        ("1970-12", datetime(1970, 12, 1), datetime(1971, 1, 1)),
        ("1970-02-28", datetime(1970, 2, 28), datetime(1970, 3, 1)),
        ("2020-01-01T10:00", datetime(2020, 1, 1, 10), datetime(2020, 1, 1, 10, 1)),
        ("2020-01-01T10:00:05Z", datetime(2020, 1, 1, 10, 0, 5), datetime(2020, 1, 1, 10, 0, 6)),
        ("2020-01-01T10:00:05.25Z", datetime(2020, 1, 1, 10, 0, 5, 250000), datetime(2020, 1, 1, 10, 0, 5, 260000)),
        ("2020-01-01T00:30:00+01:00", datetime(2019, 12, 31, 23, 30), datetime(2019, 12, 31, 23, 30, 1)),
        ("2020-01-01T23:30:00-05:30", datetime(2020, 1, 2, 5), datetime(2020, 1, 2, 5, 0, 1)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59), datetime(2017, 1, 1)),  # leap second
        ("9999", datetime(9999, 1, 1), MAX_DATETIME),
    ],
)
def test_date_range_follows_precision(text: str, low: datetime, high: datetime) -> None:
    assert date_range(text) == (low, high)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "70",
        "1970-1",
        "1970-13",
        "1970-02-30",
        "1970-01-01T25:00",
        "1970-01-01 10:00",
        "0000",
        "2020-01-01T10:00+15:00",
    ],
)
def test_invalid_dates(text: str) -> None:
    with pytest.raises(InvalidDate):
        date_range(text)


def test_period_ranges_are_open_when_a_bound_is_missing() -> None:
    assert period_range("2020-01-01", None) == (datetime(2020, 1, 1), MAX_DATETIME)
    assert period_range(None, "2020-01-01") == (MIN_DATETIME, datetime(2020, 1, 2))
    with pytest.raises(InvalidDate):
        period_range("2020-01-02", "2020-01-01")


@settings(max_examples=200)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9998, 12, 30)))
def test_each_precision_contains_the_instant_and_the_finer_ones(moment: datetime) -> None:
    instant = format_instant(moment)  # YYYY-MM-DDThh:mm:ss.fffZ
    texts = [instant[:4], instant[:7], instant[:10], instant[:16], instant[:19] + "Z", instant]
    ranges = [date_range(text) for text in texts]
    for low, high in ranges:
        assert low <= moment.replace(microsecond=moment.microsecond // 1000 * 1000) < high
    for (outer_low, outer_high), (inner_low, inner_high) in zip(ranges, ranges[1:]):
        assert outer_low <= inner_low < inner_high <= outer_high
    assert ranges[-1][1] - ranges[-1][0] == timedelta(milliseconds=1)


def test_walk_descends_lists_and_choice_types() -> None:
    resource = {
        "name": [{"given": ["A", "B"]}, {"given": ["C"]}, {"family": "D"}],
        "effectivePeriod": {"start": "2020"},
        "effectiveDateTime": "2021",
        "effectiveness": "not a choice",
    }
    assert walk(resource, "name.given") == ["A", "B", "C"]
    assert walk(resource, "effective[x]") == [{"start": "2020"}, "2021"]
    assert walk(resource, "missing.path") == []


def test_patient_index_rows() -> None:
    resource = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:a", "value": "1"}, {"value": "2"}, {"system": "urn:a", "value": "1"}],
        "name": [{"family": "Ørsted", "given": ["Hans Christian"], "use": "official"}],
        "gender": "male",
        "birthDate": "1777-08-14",
    }

    rows = index_rows("Patient", "p1", resource)

    assert {(param, system, code) for _, _, param, system, code in rows.tokens} == {
        ("identifier", "urn:a", "1"),
        ("identifier", "", "2"),
        ("gender", "", "male"),
    }
    assert len(rows.tokens) == 3  # duplicates dropped
    assert {(param, value, exact) for _, _, param, value, exact in rows.strings} == {
        ("family", "ørsted", "Ørsted"),
        ("given", "hans christian", "Hans Christian"),
        ("name", "ørsted", "Ørsted"),
        ("name", "hans christian", "Hans Christian"),  # "official" (HumanName.use) is a code, not text
    }
    assert [row[2:] for row in rows.dates] == [("birthdate", datetime(1777, 8, 14), datetime(1777, 8, 15))]
    assert rows.references == []


def test_observation_index_rows_share_subject_rows_with_patient() -> None:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "1"}, {"system": "urn:local", "code": "x"}],
            "text": "t",
        },
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "urn:uuid:1234"},  # not resolvable here: not indexed
        "effectiveDateTime": "not a date",  # a bad value is skipped, not fatal
    }

    rows = index_rows("Observation", "o1", resource)

    assert {(system, code) for _, _, param, system, code in rows.tokens if param == "code"} == {
        ("http://loinc.org", "1"),
        ("urn:local", "x"),
    }
    assert rows.references == [("Observation", "o1", "subject", "Patient", "p1")]
    assert rows.dates == []


def test_rows_for_content_are_remembered_by_content_hash() -> None:
    first = {"resourceType": "Patient", "id": "p-rem", "gender": "female"}
    second = {"resourceType": "Patient", "id": "p-rem", "gender": "male"}
    rows = rows_for_content("Patient", "p-rem", "hash-1", first)
    assert rows == index_rows("Patient", "p-rem", first)
    assert rows_for_content("Patient", "p-rem", "hash-1", first) is rows  # made once
    changed = rows_for_content("Patient", "p-rem", "hash-2", second)  # new content, new rows
    assert changed.tokens == [("Patient", "p-rem", "gender", "", "male")]
    assert changed == index_rows("Patient", "p-rem", second)


def test_long_values_are_cut_to_the_index_width() -> None:
    rows = index_rows("Patient", "p1", {"identifier": [{"value": "x" * 1000}], "name": [{"family": "y" * 1000}]})
    assert len(rows.tokens[0][4]) == MAX_INDEXED  # code
    assert all(len(value) == MAX_INDEXED for _, _, _, value, _ in rows.strings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Patient/1", ("Patient", "1")),
        ("https://x.org/fhir/Patient/a-b.c", ("Patient", "a-b.c")),
        ("Patient/1/_history/3", ("Patient", "1")),
        ("#contained", None),
        ("urn:uuid:0f2c", None),
        ("patient/1", None),
    ],
)
def test_parse_reference(text: str, expected: tuple[str, str] | None) -> None:
    assert parse_reference(text) == expected


def test_normalize_text() -> None:
    assert normalize_text("  Ĳsselmeer   Straße ") == "ijsselmeer strasse"
    assert normalize_text("Ångström") == "angstrom"


def test_registry_rejects_a_shared_parameter_with_other_paths() -> None:
    with pytest.raises(AssertionError, match="stored_as"):
        registry({"X": (reference("subject", "subject"), reference("patient", "other", stored_as="subject"))})


def test_every_registered_parameter_is_well_formed() -> None:
    for resource_type, params in SEARCH_PARAMETERS.items():
        assert resource_type[0].isupper()
        for name, param in params.items():
            assert isinstance(param, SearchParam) and param.name == name
            assert param.kind in ("token", "string", "date", "reference", "quantity", "composite")
            if param.kind == "composite":  # two other parameters of the type, none composite
                assert not param.paths and len(param.components) == 2
                assert all(params[part].kind != "composite" for part in param.components)
            else:
                assert param.paths and not param.components
