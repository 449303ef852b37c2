"""ResourceStore.find: _sort, keyset paging that stays stable under writes, _include/_revinclude, totals, lenient."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from gateway.db.engine import make_engine
from gateway.db.migrate import migrate
from gateway.store.resources import ResourceStore
from gateway.store.search import SearchError, SearchResult, UnsupportedParameter, build_search
from gateway.store.search_includes import MAX_INCLUDED
from tests.support.fhir_bundles import delete, observation, patient, put, transaction

FAMILIES = ["Young", "adams", "Ng", "Brown", "Zhou", "Ábel", "Ng", "Carter", "Olsen"]


def people() -> list[dict[str, Any]]:
    """Nine patients; p7 has no birth date, and two share the family name Ng."""
    found = []
    for number, family in enumerate(FAMILIES):
        extra = {"birthDate": f"19{60 + (number * 7) % 30}-0{1 + number % 9}-01"} if number != 7 else {}
        found.append(patient(f"p{number}", f"MRN{number}", family=family, **extra))
    return found


@pytest.fixture
def store(engine: Engine) -> ResourceStore:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(*(put(resource) for resource in people())))
    return store


def walk_pages(store: ResourceStore, resource_type: str, params: dict[str, list[str]]) -> list[list[str]]:
    """Follow next cursors from the first page to the last; returns the ids of each page."""
    pages, cursor = [], None
    while True:
        result = store.find(resource_type, {**params, **({"_cursor": [cursor]} if cursor else {})})
        pages.append([resource["id"] for resource in result.resources])
        cursor = result.next_cursor
        if cursor is None:
            return pages


def expected_order(sort: str) -> list[str]:
    resources = people()
    descending, name = sort.startswith("-"), sort.lstrip("-")

    def key(resource: dict[str, Any]) -> Any:
        if name == "_id":
            return resource["id"]
        if name == "birthdate":
            missing = "9999" if not descending else ""
            return (resource.get("birthDate", missing), resource["id"])
        family = resource["name"][0]["family"].lower().replace("á", "a")
        return (family, resource["id"])

    return [r["id"] for r in sorted(resources, key=key, reverse=descending)]


@pytest.mark.parametrize("sort", ["_id", "-_id", "birthdate", "-birthdate", "family", "-family"])
@pytest.mark.parametrize("count", [1, 2, 4, 9, 20])
def test_pages_follow_the_sort_and_cover_every_match_once(store: ResourceStore, sort: str, count: int) -> None:
    pages = walk_pages(store, "Patient", {"_sort": [sort], "_count": [str(count)]})

    assert [rid for page in pages for rid in page] == expected_order(sort)
    assert all(len(page) == count for page in pages[:-1])


def test_missing_values_sort_last_both_ways(store: ResourceStore) -> None:
    assert store.search("Patient", {"_sort": ["birthdate"]})[-1]["id"] == "p7"
    assert store.search("Patient", {"_sort": ["-birthdate"]})[-1]["id"] == "p7"


def test_tokens_sort_by_code_through_every_page(store: ResourceStore) -> None:
    # fhirpy's README sorts by a token: .sort("active", "-birthdate"). p7 has neither: last both ways.
    active = {f"p{n}": n % 3 != 0 for n in range(9) if n != 7}
    store.apply_bundle(transaction(*(put({**r, "active": active[r["id"]]}) for r in people() if r["id"] in active)))
    births = {r["id"]: r["birthDate"] for r in people() if r["id"] in active}
    youngest_first = sorted(active, key=births.__getitem__, reverse=True)

    pages = walk_pages(store, "Patient", {"_sort": ["active,-birthdate"], "_count": ["2"]})
    # "false" < "true"; within each, the newest birth date first (a stable sort keeps that order).
    assert [rid for page in pages for rid in page] == [*sorted(youngest_first, key=active.__getitem__), "p7"]
    pages = walk_pages(store, "Patient", {"_sort": ["-active,-birthdate"], "_count": ["3"]})
    assert [rid for page in pages for rid in page] == [
        *sorted(youngest_first, key=active.__getitem__, reverse=True),
        "p7",
    ]


def test_previous_cursors_walk_back_over_the_same_pages(store: ResourceStore) -> None:
    params = {"_sort": ["-family"], "_count": ["2"]}
    forward: list[SearchResult] = [store.find("Patient", params)]
    while forward[-1].next_cursor:
        forward.append(store.find("Patient", {**params, "_cursor": [forward[-1].next_cursor]}))
    assert forward[0].previous_cursor is None

    back = forward[-1]
    for expected in reversed(forward[:-1]):
        assert back.previous_cursor is not None
        back = store.find("Patient", {**params, "_cursor": [back.previous_cursor]})
        assert [r["id"] for r in back.resources] == [r["id"] for r in expected.resources]
        assert back.next_cursor is not None
    assert back.previous_cursor is None


def test_paging_is_stable_while_resources_are_written(store: ResourceStore) -> None:
    params = {"_sort": ["_lastUpdated"], "_count": ["3"]}
    first = store.find("Patient", params)
    seen = [r["id"] for r in first.resources]
    # Between page fetches: new patients (ids before and after the cursor), an update, a deletion.
    store.apply_bundle(transaction(put(patient("a-new", "N1")), put(patient("z-new", "N2"))))
    store.apply_bundle(transaction(put(patient("p0", "MRN0", family="Changed")), delete("Patient", "p8")))
    cursor = first.next_cursor
    while cursor:
        page = store.find("Patient", {**params, "_cursor": [cursor]})
        seen += [r["id"] for r in page.resources]
        cursor = page.next_cursor

    assert len(seen) == len(set(seen)) + 1 and seen.count("p0") == 2  # the update moved p0 to the end
    assert {"p1", "p2", "p3", "p4", "p5", "p6", "p7"} <= set(seen)  # nothing that stayed was skipped
    assert "p8" not in seen[3:]


def test_an_id_ordered_walk_never_repeats_or_skips_under_inserts(store: ResourceStore) -> None:
    first = store.find("Patient", {"_count": ["4"]})
    store.apply_bundle(transaction(put(patient("p00", "X")), put(patient("p99", "Y"))))
    rest = walk_pages(store, "Patient", {"_count": ["4"], "_cursor": [first.next_cursor or ""]})

    ids = [r["id"] for r in first.resources] + [rid for page in rest for rid in page]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert set(ids) == {f"p{n}" for n in range(9)} | {"p99"}  # p00 sorts before the cursor


def test_a_cursor_only_fits_its_own_search(store: ResourceStore) -> None:
    cursor = store.find("Patient", {"_count": ["1"], "family": ["n"]}).next_cursor
    assert cursor is not None
    assert len(store.find("Patient", {"_count": ["5"], "family": ["n"], "_cursor": [cursor]}).resources) == 1
    with pytest.raises(SearchError, match="belongs to a different search"):
        store.find("Patient", {"_count": ["2"], "family": ["y"], "_cursor": [cursor]})
    with pytest.raises(SearchError, match="belongs to a different search"):
        store.find("Patient", {"_count": ["2"], "family": ["n"], "_sort": ["-_id"], "_cursor": [cursor]})


def test_totals(store: ResourceStore) -> None:
    assert store.find("Patient", {}).total == 9
    assert store.find("Patient", {"_count": ["2"]}).total == 9  # counted, not the page length
    assert store.find("Patient", {"_total": ["none"]}).total is None
    assert store.find("Patient", {"_totalMethod": ["count"], "_count": ["0"]}).total == 9
    summary = store.find("Patient", {"_summary": ["count"], "family": ["ng"]})
    assert summary.total == 2 and summary.resources == []
    cursor = store.find("Patient", {"_count": ["4"]}).next_cursor
    assert store.find("Patient", {"_count": ["4"], "_cursor": [cursor or ""]}).total == 9


def test_lenient_searches_drop_unknown_parameters(store: ResourceStore) -> None:
    with pytest.raises(UnsupportedParameter):
        build_search("Patient", {"shoe-size": ["42"]})
    result = store.find("Patient", {"shoe-size": ["42"], "family:phonetic": ["x"], "family": ["ng"]}, lenient=True)
    assert {r["id"] for r in result.resources} == {"p2", "p6"}
    assert result.ignored == ("shoe-size", "family:phonetic")
    with pytest.raises(SearchError, match="not a valid date"):  # bad values stay errors
        store.find("Patient", {"birthdate": ["1970-13-01"]}, lenient=True)


ENCOUNTER = {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": {"reference": "Patient/p1"}}
REPORT = {
    "resourceType": "DiagnosticReport",
    "id": "r1",
    "status": "final",
    "code": {"text": "panel"},
    "subject": {"reference": "Patient/p1"},
    "result": [{"reference": "Observation/o1"}, {"reference": "Observation/o2"}, {"reference": "Observation/gone"}],
}
PROVENANCE = {
    "resourceType": "Provenance",
    "id": "prov1",
    "recorded": "2020-01-01T00:00:00Z",
    "target": [{"reference": "Patient/p1"}, {"reference": "Observation/o1"}],
    "agent": [{"who": {"display": "gateway"}}],
}


@pytest.fixture
def clinical(store: ResourceStore) -> ResourceStore:
    o1 = observation("o1", "p1", encounter={"reference": "Encounter/e1"}, effectiveDateTime="2020-01-01")
    o2 = observation("o2", "p1", effectiveDateTime="2021-01-01")
    o3 = observation("o3", "p2", encounter={"reference": "Encounter/e1"})
    store.apply_bundle(transaction(*(put(r) for r in (o1, o2, o3, ENCOUNTER, REPORT, PROVENANCE))))
    return store


def included(store: ResourceStore, resource_type: str, **params: list[str]) -> tuple[list[str], list[str]]:
    result = store.find(resource_type, params)
    keys = [f"{r['resourceType']}/{r['id']}" for r in result.included]
    return [r["id"] for r in result.resources], keys


@pytest.mark.parametrize(
    ("resource_type", "params", "matches", "extra"),
    [
        ("Observation", {"_include": ["Observation:patient"]}, ["o1", "o2", "o3"], ["Patient/p1", "Patient/p2"]),
        ("Observation", {"_id": ["o2"], "_include": ["Observation:patient"]}, ["o2"], ["Patient/p1"]),
        ("Observation", {"_include": ["Observation:encounter"]}, ["o1", "o2", "o3"], ["Encounter/e1"]),
        ("Observation", {"_include": ["Observation:subject:Patient"], "_id": ["o3"]}, ["o3"], ["Patient/p2"]),
        (
            "Observation",
            {"_include": ["Observation:patient", "Observation:encounter"], "_id": ["o1"]},
            ["o1"],
            ["Encounter/e1", "Patient/p1"],
        ),
        ("DiagnosticReport", {"_include": ["DiagnosticReport:result"]}, ["r1"], ["Observation/o1", "Observation/o2"]),
        ("Encounter", {"_include": ["Encounter:subject"]}, ["e1"], ["Patient/p1"]),
        ("Patient", {"_id": ["p1"], "_revinclude": ["Provenance:target"]}, ["p1"], ["Provenance/prov1"]),
        ("Patient", {"_id": ["p1"], "_revinclude": ["Provenance:patient"]}, ["p1"], ["Provenance/prov1"]),
        (
            "Patient",
            {"_id": ["p1,p2"], "_revinclude": ["Observation:subject", "Encounter:patient"]},
            ["p1", "p2"],
            ["Encounter/e1", "Observation/o1", "Observation/o2", "Observation/o3"],
        ),
        ("Encounter", {"_revinclude": ["Observation:encounter"]}, ["e1"], ["Observation/o1", "Observation/o3"]),
        ("Observation", {"_id": ["o2"], "_revinclude": ["Provenance:target"]}, ["o2"], []),
        (  # every type's every reference parameter (fhirpy's .revinclude("*"))
            "Patient",
            {"_id": ["p1"], "_revinclude": ["*"]},
            ["p1"],
            ["DiagnosticReport/r1", "Encounter/e1", "Observation/o1", "Observation/o2", "Provenance/prov1"],
        ),
        ("Observation", {"_id": ["o1"], "_revinclude": ["*"]}, ["o1"], ["DiagnosticReport/r1", "Provenance/prov1"]),
    ],
)
def test_include_and_revinclude(
    clinical: ResourceStore, resource_type: str, params: dict[str, list[str]], matches: list[str], extra: list[str]
) -> None:
    assert included(clinical, resource_type, **params) == (matches, extra)


def test_included_resources_are_current_and_not_repeated(clinical: ResourceStore) -> None:
    clinical.apply_bundle(transaction(delete("Encounter", "e1")))
    assert included(clinical, "Observation", _include=["Observation:encounter"]) == (["o1", "o2", "o3"], [])
    # A match that another match refers to is not repeated as an include.
    everything = included(clinical, "Patient", _id=["p1,p2"], _revinclude=["Provenance:target"])
    assert everything == (["p1", "p2"], ["Provenance/prov1"])


@pytest.mark.parametrize(
    ("resource_type", "value", "message"),
    [
        ("Observation", "Observation:code", "has no reference search parameter 'code'"),
        ("Observation", "Observation", r"is not \[type\]:\[parameter\]"),
        ("Observation", "Encounter:subject", "can only include through Observation parameters"),
        ("Observation", "Observation:patient:Group", "never refers to Group"),
        ("Observation", "*:*", "'\\*' is not supported"),
        ("Observation", "Observation:*:Foo", "'Foo' is not supported"),
    ],
)
def test_bad_includes(clinical: ResourceStore, resource_type: str, value: str, message: str) -> None:
    with pytest.raises(SearchError, match=message):
        clinical.find(resource_type, {"_include": [value]})


def test_bad_revinclude(clinical: ResourceStore) -> None:
    with pytest.raises(SearchError, match="never refers to Patient"):
        clinical.find("Patient", {"_revinclude": ["DiagnosticReport:result"]})


def test_too_many_includes_are_cut_with_a_warning(engine: Engine) -> None:
    store = ResourceStore(engine)
    count = MAX_INCLUDED + 5
    provenances = [{**PROVENANCE, "id": f"prov{n}", "target": [{"reference": "Patient/p1"}]} for n in range(count)]
    store.apply_bundle(transaction(put(patient("p1", "MRN1")), *(put(p) for p in provenances)))

    result = store.find("Patient", {"_revinclude": ["Provenance:target"]})

    assert len(result.included) == MAX_INCLUDED
    assert result.warnings and "left out" in result.warnings[0]


_IDS = st.sampled_from([f"x{n:02d}" for n in range(40)])
_OPERATIONS = st.lists(st.tuples(st.sampled_from(["insert", "delete", "update"]), _IDS), max_size=4)


@settings(max_examples=40, deadline=None)
@given(
    initial=st.sets(_IDS, min_size=1, max_size=25),
    count=st.integers(min_value=1, max_value=7),
    sort=st.sampled_from(["_id", "-_id", "birthdate", "-birthdate", "_lastUpdated", "-_lastUpdated"]),
    writes=st.lists(_OPERATIONS, max_size=8),
)
def test_pages_never_repeat_or_skip_what_stays_put(
    initial: set[str], count: int, sort: str, writes: list[list[tuple[str, str]]]
) -> None:
    """Whatever is written between page fetches, a resource that is neither deleted nor updated
    meanwhile is seen exactly once; only an update under a _lastUpdated sort may show one twice."""
    with tempfile.TemporaryDirectory() as directory:
        engine = make_engine(f"sqlite:///{directory}/paging.sqlite3")
        try:
            migrate(engine)
            store = ResourceStore(engine)
            born = {rid: f"19{int(rid[1:]) % 7 + 50}-01-01" for rid in (f"x{n:02d}" for n in range(40))}
            store.apply_bundle(transaction(*(put(patient(rid, rid, birthDate=born[rid])) for rid in sorted(initial))))
            touched: set[str] = set()
            seen: list[str] = []
            cursor: str | None = None
            for step in range(len(writes) + 50):
                params = {"_sort": [sort], "_count": [str(count)], **({"_cursor": [cursor]} if cursor else {})}
                page = store.find("Patient", params)
                seen += [r["id"] for r in page.resources]
                for operation, rid in writes[step] if step < len(writes) else []:
                    touched.add(rid)
                    if operation == "delete":
                        store.apply_bundle(transaction(delete("Patient", rid)))
                    else:  # insert or update: a new version, same birth date
                        store.apply_bundle(
                            transaction(put(patient(rid, rid, family=f"F{step}{operation}", birthDate=born[rid])))
                        )
                cursor = page.next_cursor
                if cursor is None:
                    break
        finally:
            engine.dispose()
    steady = initial - touched
    assert all(seen.count(rid) == 1 for rid in steady), (seen, steady)
    if "_lastUpdated" not in sort:
        assert len(seen) == len(set(seen)), seen
