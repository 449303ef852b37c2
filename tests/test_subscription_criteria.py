"""Subscription criteria: checked like a search, and matched on a version exactly as the store's
search would find it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from gateway.store.resources import ResourceStore
from gateway.store.search_values import SearchError
from gateway.store.subscription_criteria import Candidate, CriteriaMatcher, parse_criteria
from tests.support.fhir_bundles import observation, put, transaction


@pytest.mark.parametrize(
    "text",
    [
        "Observation?code=http://loinc.org|2345-7",
        "Encounter?status=finished",
        "Patient",
        "Observation?code=a,b&status=final",
    ],
)
def test_good_criteria_are_taken(text: str) -> None:
    criteria = parse_criteria(text)
    assert criteria.resource_type == text.partition("?")[0]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "1-2048"),
        ("Nonsense?x=1", "resource type"),
        ("Observation?bogus=1", "unknown search parameter 'bogus'"),
        ("Observation?_count=5", "shapes a result"),
        ("Observation?_include=Observation:subject", "shapes a result"),
        ("Observation?code=", "has no value"),
        ("Observation?code:above=x", "modifier"),
        ("Observation?date=yesterday", "date"),
        ("AuditEvent", "cannot be subscribed"),
        ("Patient/123", "resource type"),
    ],
)
def test_bad_criteria_say_why(text: str, words: str) -> None:
    with pytest.raises(SearchError) as caught:
        parse_criteria(text)
    assert words in str(caught.value)


def test_a_version_is_matched_as_written_not_as_stored_later() -> None:
    matcher = CriteriaMatcher()
    glucose = parse_criteria("Observation?code=http://loinc.org|2345-7")
    now = datetime(2026, 1, 1)
    first = Candidate("Observation", "o1", now, observation("o1", "p1", code="2345-7"))
    later = Candidate("Observation", "o1", now, observation("o1", "p1", code="1111-1"))

    assert matcher.match([first], [glucose]) == {glucose.text: {("Observation", "o1")}}
    assert matcher.match([later], [glucose]) == {glucose.text: set()}
    # nothing stays behind between calls
    assert matcher.match([], [glucose]) == {glucose.text: set()}


CODES = st.sampled_from(["2345-7", "1111-1", "8867-4"])
STATUSES = st.sampled_from(["final", "preliminary", "amended"])
CRITERIA = [
    "Observation?code=http://loinc.org|2345-7",
    "Observation?code=2345-7,8867-4&status=final",
    "Observation?status:not=final",
    "Observation?subject=Patient/p1",
    "Observation?patient=p2&code=http://loinc.org|",
    "Observation?date=ge2026-01-01",
    "Observation",
]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(st.tuples(CODES, STATUSES, st.sampled_from(["p1", "p2"]), st.booleans()), min_size=1, max_size=8))
def test_the_matcher_finds_what_the_stores_search_finds(engine: Engine, data: list[tuple[str, str, str, bool]]) -> None:
    store = ResourceStore(engine)
    resources = []
    for n, (code, status, patient, dated) in enumerate(data):
        extra = {"effectiveDateTime": "2026-03-01T10:00:00Z"} if dated else {}
        resources.append(observation(f"h{n}", patient, code=code, status=status, **extra))
    store.apply_bundle(transaction(*(put(r) for r in resources)))
    matcher = CriteriaMatcher()
    now = datetime.now(UTC).replace(tzinfo=None)
    candidates = [Candidate("Observation", r["id"], now, r) for r in resources]
    ids = {r["id"] for r in resources}
    for text in CRITERIA:
        try:
            criteria = parse_criteria(text)
        except SearchError:  # a modifier this store does not have
            continue
        matched = {rid for _, rid in matcher.match(candidates, [criteria])[text]}
        type_, _, query = text.partition("?")
        params: dict[str, list[str]] = {}
        for part in filter(None, query.split("&")):
            name, _, value = part.partition("=")
            params.setdefault(name, []).append(value)
        found = {r["id"] for r in store.search(type_, {**params, "_count": ["1000"]})} & ids
        assert matched == found, text
