"""``hl7gw convert FILE... [--report]``: convert messages from files, offline, and show the gaps.

Each message's FHIR Bundle is printed (pretty JSON, one document per message) to ``out``. With
``report``, ``err`` gets, per message, what the maps left unused: segments that made nothing and
fields of used segments that no map reads, and the notes (codes not in a table, data that could not
be read), so that gaps are visible instead of silent.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TextIO

import orjson

from gateway import fhirjson
from gateway.convert.runtime.engine import Conversion, Converter
from gateway.errors import ConfigError, GatewayError
from gateway.hl7.charset import decode_message
from gateway.hl7.message import parse
from gateway.validate import validate_bundle


def _messages(data: bytes) -> list[bytes]:
    from gateway.mllp.client import split_messages

    return split_messages(data)


def describe(where: str, conversion: Conversion) -> list[str]:
    """The report lines for one converted message."""
    entries = conversion.bundle["entry"]
    kinds = Counter(
        e["resource"]["resourceType"] if "resource" in e else "DELETE " + e["request"]["url"].split("/")[0]
        for e in entries
    )
    lines = [f"{where}: {len(entries)} entries ({', '.join(f'{k} {n}' for k, n in kinds.items())})"]
    lines.append("  unused segments: " + (" ".join(conversion.unused_segments) or "none"))
    if conversion.unused_fields:
        lines.append("  unused fields:")
        lines += [f"    {segment}: {' '.join(fields)}" for segment, fields in conversion.unused_fields.items()]
    else:
        lines.append("  unused fields: none")
    lines += [f"  note: {note}" for note in conversion.notes]
    return lines


def convert_files(paths: list[str], report: bool, out: TextIO, err: TextIO, converter: Converter | None = None) -> int:
    """Convert every message in ``paths``; 0 when all converted to valid bundles, else 1."""
    converter = converter or Converter.load()
    failed = converted = 0
    for name in paths:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {name}: {exc.strerror}") from None
        for n, raw in enumerate(_messages(data), start=1):
            where = f"{name}#{n}"
            try:
                message = parse(decode_message(raw))
                where += f" {'^'.join(p for p in message.message_type if p)} {message.control_id}"
                conversion = converter.convert_with_report(message)
                validate_bundle(conversion.bundle)
            except GatewayError as exc:
                failed += 1
                print(f"{where}: {type(exc).__name__}: {exc}", file=err)
                continue
            converted += 1
            out.write(fhirjson.dumps(conversion.bundle, option=orjson.OPT_INDENT_2).decode() + "\n")
            if report:
                print("\n".join(describe(where, conversion)), file=err)
    if not converted and not failed:
        print("no HL7 messages in the given files", file=err)
        return 1
    if report or failed:
        print(f"{converted} converted, {failed} failed", file=err)
    return 1 if failed else 0
