"""What the empty-element guard of served FHIR JSON costs on big pages.

    python benchmarks/fhir_serialize.py [--entries N] [--rounds R]

Builds a searchset Bundle of N Observations shaped like the converter's (codings, a quantity, a
reference range, a note, a narrative) and times ``fhirjson.dumps`` (no guard) against
``fhirjson.dumps_served`` (the guard: a byte search, then a prune only when something was found),
compact and indented, and the prune itself on a page that has something to prune; then a whole
``GET Observation?patient=&_count=N`` through the API (in-process, SQLite, access audit off) with
the guard and with plain ``dumps`` in its place. Prints medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import orjson  # noqa: E402

from gateway import fhirjson  # noqa: E402
from gateway.api import outcome  # noqa: E402
from gateway.api.app import create_app  # noqa: E402
from gateway.config import load_settings  # noqa: E402


def observation(number: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{number:07d}",
        "meta": {"versionId": "1", "lastUpdated": "2024-05-01T08:00:00.000Z"},
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Heart rate 72 /min</div>'},
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/pat-{number // 3:07d}"},
        "effectiveDateTime": "2024-05-01T08:00:00Z",
        "valueQuantity": {"value": Decimal("72.0"), "unit": "/min", "system": "http://unitsofmeasure.org"},
        "referenceRange": [{"low": {"value": 60}, "high": {"value": 100}}],
        "note": [{"text": "resting"}],
    }


def bundle(entries: int) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": "page",
        "type": "searchset",
        "total": entries,
        "link": [{"relation": "self", "url": "http://gw/fhir/Observation?_count=1000"}],
        "entry": [
            {
                "fullUrl": f"http://gw/fhir/Observation/obs-{n:07d}",
                "resource": observation(n),
                "search": {"mode": "match"},
            }
            for n in range(entries)
        ],
    }


def median_ms(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def api_page_ms(entries: int, rounds: int) -> tuple[float, float]:
    """A page of ``entries`` Observations through the API: median ms with the guard, and without it."""
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(load_settings(data_dir=Path(tmp), api_tokens="bench:reader", access_audit=False))
        resources = [{**observation(n), "subject": {"reference": "Patient/p1"}} for n in range(entries)]
        resources.append({"resourceType": "Patient", "id": "p1"})
        entries_in = [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources
        ]
        app.state.store.apply_bundle({"resourceType": "Bundle", "type": "transaction", "entry": entries_in})
        url = f"/fhir/Observation?patient=p1&_count={entries}"

        async def page() -> None:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                response = await client.get(url, headers={"Authorization": "Bearer bench"})
                assert response.status_code == 200 and len(response.json()["entry"]) == entries

        served = outcome.fhirjson.dumps_served
        guarded, unguarded = [], []
        try:
            for _ in range(rounds):  # alternated, so a change in the machine's load hits both alike
                guarded.append(median_ms(lambda: asyncio.run(page()), 1))
                outcome.fhirjson.dumps_served = fhirjson.dumps  # type: ignore[assignment]
                unguarded.append(median_ms(lambda: asyncio.run(page()), 1))
                outcome.fhirjson.dumps_served = served  # type: ignore[assignment]
        finally:
            outcome.fhirjson.dumps_served = served  # type: ignore[assignment]
        return statistics.median(guarded), statistics.median(unguarded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    page = bundle(args.entries)
    size = len(fhirjson.dumps(page))
    print(f"searchset of {args.entries} Observations, {size / 1e6:.2f} MB; median of {args.rounds} rounds")
    for label, option in (("compact", 0), ("indented", orjson.OPT_INDENT_2)):
        plain_times, guarded_times = [], []
        for _ in range(args.rounds):  # alternated, so a change in the machine's load hits both alike
            plain_times.append(median_ms(lambda option=option: fhirjson.dumps(page, option), 1))
            guarded_times.append(median_ms(lambda option=option: fhirjson.dumps_served(page, option), 1))
        plain, guarded = statistics.median(plain_times), statistics.median(guarded_times)
        print(f"  {label:9} dumps {plain:7.2f} ms   dumps_served {guarded:7.2f} ms   (+{guarded - plain:.2f} ms)")
    dirty = bundle(args.entries)
    dirty["entry"][-1]["resource"]["note"] = []  # one empty array: the whole page is pruned and written again
    pruned = median_ms(lambda: fhirjson.dumps_served(dirty), args.rounds)
    print(f"  a page with one empty array: dumps_served {pruned:7.2f} ms (the prune and a second write)")
    guarded, unguarded = api_page_ms(args.entries, max(5, args.rounds // 5))
    print(f"  GET Observation?patient=&_count={args.entries}: {guarded:.1f} ms guarded, {unguarded:.1f} ms plain dumps")


if __name__ == "__main__":
    main()
