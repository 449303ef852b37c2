"""FHIR JSON that keeps a decimal's digits: ``0.90`` stays ``0.90`` (datatypes.html#decimal: the
precision of a decimal is significant, and a float would print ``0.9``).

In memory, a decimal whose text matters is a ``decimal.Decimal`` (the converter makes one for every
number written with a fraction); ``dumps`` writes it as the number it was sent as. ``loads`` reads
with orjson, and only for text that may hold a number a float would change (a trailing zero in
the fraction, a long fraction) with the standard library, making its numbers Decimals again.
Everything that writes or reads resources uses these two; the API serves with ``dumps_served``,
which never writes an empty array or object, nor a property set to null (json.html: invalid FHIR).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson

#: Text that may hold a number a float would not give back as written: a fraction ending in zero
#: (``0.90``) or of 8 digits or more. A literal first character keeps the scan cheap (a few us per
#: resource, against orjson's parse of ~10 us); a string that merely looks so only costs a slower
#: parse. Not caught: more than 15 significant digits with a fraction under 8 digits
#: (``1015440104203.8155``, no lab value has as many), and exponents (the converter writes none).
_FLOAT_WOULD_CHANGE = re.compile(rb"\.(?:\d*0[,}\]\s]|\d{8})")


#: Literal searches, compiled: re finds a two-byte literal about twice as fast as ``bytes in`` does
#: (benchmarks/fhir_serialize.py). Both are written so by orjson, compact or indented.
_EMPTY_ARRAY = re.compile(rb"\[\]")
_EMPTY_OBJECT = re.compile(rb"\{\}")


def _default(value: Any) -> Any:
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(format(value, "f"))  # 0.0000001, not str()'s 1E-7
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any, option: int = 0) -> bytes:
    """``value`` as JSON (orjson), Decimals written with their digits."""
    return orjson.dumps(value, default=_default, option=option)


def dumps_kept(value: Any, option: int = 0) -> bytes:
    """``dumps`` for output a cache keeps: copied to its own size. orjson's output of a small value
    holds a 4 KB buffer (a 300-byte value costs 4 KB resident), which a cache of many pays for each
    (benchmarks/bad_input_memory.py)."""
    data = dumps(value, option)
    return bytes(memoryview(data)) if len(data) < 4096 else data


def dumps_served(value: Any, option: int = 0) -> bytes:
    """``dumps`` for what the API serves: empty arrays and objects, and null properties, left out.

    Checked on the bytes (a search in C), so an answer without any pays almost nothing; one with
    ``[]``, ``{}`` or ``:null`` anywhere (in a string too) is pruned and written again.
    """
    data = dumps(value, option)
    null_property = b": null" if option & orjson.OPT_INDENT_2 else b":null"
    if _EMPTY_ARRAY.search(data) is None and _EMPTY_OBJECT.search(data) is None and null_property not in data:
        return data
    return dumps(without_empty(value), option)


def without_empty(value: Any) -> Any:
    """``value`` without empty arrays and objects and without null properties, at any depth; an
    object or array left empty by that goes too. Nulls inside arrays stay (json.html#primitive: they
    align a primitive array with its ``_name`` extensions) unless the array holds nothing else."""
    if isinstance(value, dict):
        kept = {}
        for name, item in value.items():
            if isinstance(item, (dict, list)):
                item = without_empty(item)
                if not item:
                    continue
            elif item is None:
                continue
            kept[name] = item
        return kept
    if isinstance(value, list):
        items = []
        for item in value:
            if isinstance(item, (dict, list)):
                item = without_empty(item)
                if not item:
                    continue
            items.append(item)
        return items if any(item is not None for item in items) else []
    return value


def loads(data: bytes | str) -> Any:
    """JSON to Python; a number a float would change is read as a Decimal."""
    raw = data.encode() if isinstance(data, str) else data
    if _FLOAT_WOULD_CHANGE.search(raw) is None:
        return orjson.loads(raw)
    return json.loads(raw, parse_float=Decimal)


def as_float(value: Any) -> Any:
    """orjson ``default`` for content hashes computed before decimals kept their digits: a Decimal
    hashes as the float it used to be, so ids derived from content do not change."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
