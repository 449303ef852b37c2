"""A decimal keeps its digits (issue 14, item 4): OBX-5 ``0.90`` is ``0.90`` in the converted
Bundle, in what the validator checks, in the stored JSON, in what the API serves, on the sink
queue and in what a remote FHIR server receives (datatypes.html#decimal: precision is significant)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import fhirjson
from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.deliver.fanout import SinkMessage
from gateway.deliver.remote import RemoteSink
from gateway.queue.broker import FhirJsonEncoder
from gateway.sinkspec import SinkSpec
from gateway.validate import validate_bundle
from tests.support.asgi_client import AsgiClient
from tests.support.convert import MSH_ADT, PID, converter, message, only

ORU = MSH_ADT.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
OBR = "OBR|1|P1|F1|2345-7^Glucose^LN|||20240101090000+0100"
OBX = "OBX|1|NM|2345-7^Glucose^LN||0.90|g/L^g/L^UCUM|0.70-1.10||||F|||20240101090000+0100"

# --- the JSON itself ---------------------------------------------------------------------------------

#: Up to 15 significant digits with a short fraction, or a fraction of 8 digits or more (fhirjson's limits).
decimal_texts = (st.decimals(-(10**10), 10**10, places=4) | st.decimals(-10, 10, places=12)).map(
    lambda d: format(d, "f")
)


@given(decimal_texts)
def test_a_decimal_comes_back_with_its_digits(text: str) -> None:
    written = fhirjson.dumps({"value": Decimal(text), "list": [Decimal(text)]})
    assert written == b'{"value":%s,"list":[%s]}' % (text.encode(), text.encode())
    assert fhirjson.dumps(fhirjson.loads(written)) == written


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    # Floats orjson writes without an exponent (FHIR content from the converter has none).
    | st.floats(-1e15, 1e15).filter(lambda f: f == 0 or abs(f) >= 1e-4)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_any_json_reads_back_with_every_number_as_written(value: Any) -> None:
    """Numbers as a reader that keeps every digit sees them (a float in exponent form may come back
    as a plain number, ``1.5e+16`` as ``15000000000000000``: the same decimal); all else as orjson."""
    written = orjson.dumps(value)
    again = fhirjson.dumps(fhirjson.loads(written))
    assert json.loads(again, parse_float=Decimal) == json.loads(written, parse_float=Decimal)
    assert fhirjson.dumps(fhirjson.loads(again)) == again


def test_only_numbers_a_float_would_change_take_the_slow_path() -> None:
    assert type(fhirjson.loads(b'{"v":0.9}')["v"]) is float
    assert type(fhirjson.loads(b'{"v":"urn:uuid:9e3f-1.50"}')["v"]) is str
    for text in (b"0.90", b"120.0", b"0.12345678901234567"):
        assert str(fhirjson.loads(b'{"v":%s}' % text)["v"]) == text.decode()


# --- conversion, validation, store, API, queue, remote server ---------------------------------------


def _bundle() -> dict[str, Any]:
    return converter().convert(message(ORU, PID, OBR, OBX))


def test_the_converted_observation_keeps_the_digits_and_validates() -> None:
    bundle = _bundle()
    observation = only(bundle, "Observation")
    assert observation["valueQuantity"]["value"] == Decimal("0.90")
    assert b'"value":0.90' in fhirjson.dumps(observation["valueQuantity"])
    low_high = observation["referenceRange"][0]
    assert (str(low_high["low"]["value"]), str(low_high["high"]["value"])) == ("0.70", "1.10")
    validate_bundle(bundle)  # the R4B model and our checks see the Decimal itself


def test_stored_and_served_json_keep_the_digits(tmp_path: Path) -> None:
    app = create_app(load_settings(data_dir=tmp_path, api_tokens="reader-token:reader"))
    bundle = _bundle()
    observation = only(bundle, "Observation")
    applied = app.state.store.apply_bundle(bundle)
    assert {entry.outcome for entry in applied} == {"created"}

    client = AsgiClient(app, token="reader-token")
    read = client.get(f"/fhir/Observation/{observation['id']}")
    assert read.status_code == 200 and b'"value":0.90' in read.content
    found = client.get("/fhir/Observation", params={"code": "2345-7"})
    assert found.status_code == 200 and b'"value":0.90' in found.content and b'"value":1.10' in found.content

    # The same message again changes nothing: stored 0.90 and converted 0.90 are the same content.
    assert {entry.outcome for entry in app.state.store.apply_bundle(_bundle())} == {"unchanged"}


def test_the_sink_queue_and_the_remote_server_get_the_digits() -> None:
    bundle = _bundle()
    queued = SinkMessage("m1", "hapi", 1, "App|Fac", "CTRL1", 1, "2024-01-01T08:00:00", bundle).to_json()
    encoder = FhirJsonEncoder()
    carried = SinkMessage.from_json(encoder.decode(encoder.encode(queued)))
    assert fhirjson.dumps(carried.bundle) == fhirjson.dumps(bundle)

    seen: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response"})

    RemoteSink(SinkSpec("hapi", "http://fhir.test/base"), transport=httpx.MockTransport(server)).send(carried.bundle)
    assert b'"value":0.90' in seen[0].content


@pytest.mark.parametrize("text", ["0.90", "120.0", "-0.050", "0.0000001"])
def test_every_number_with_a_fraction_keeps_its_digits(text: str) -> None:
    bundle = converter().convert(message(ORU, PID, OBR, OBX.replace("|0.90|", f"|{text}|")))
    assert b'"value":%s,' % text.encode() in fhirjson.dumps(only(bundle, "Observation")["valueQuantity"])
