"""What an operator reads about dead letters: the list, and one letter in full (its raw message,
the message laid out by segment and field, the reason, and a dry run of the conversion with the
mappings as they are now: after a mapping fix, does it convert?). ``hl7gw dlq`` prints these;
``/admin/dead-letters`` (gateway/api/admin.py) answers the same data, its dry run given by
``CurrentMappings.dry_run``."""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from gateway import fhirjson
from gateway.config.sections import ConversionSettings
from gateway.convert.runtime.engine import Converter, default_mappings_dir
from gateway.convert.runtime.run import Conversion
from gateway.errors import GatewayError, MappingError, describe, stage_of
from gateway.hl7.charset import decode_message
from gateway.hl7.layout import layout_lines, raw_view
from gateway.hl7.message import Message, parse
from gateway.journal.dead_letters import DeadLetter
from gateway.stages import Stage
from gateway.validate import validate_bundle

#: raw message -> what converting it now would give (``dry_run``'s answer).
DryRun = Callable[[bytes], dict[str, Any]]


class CurrentMappings:
    """The converter of the mappings as they are on disk now: compiled again when a mapping file
    (shipped or in HL7GW_MAPPINGS_DIR) changed since the last dry run, else reused."""

    def __init__(self, conversion: ConversionSettings | None = None):
        self.conversion = conversion
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self._converter: Converter | None = None

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        roots = [default_mappings_dir()]
        if self.conversion is not None and self.conversion.mappings_dir is not None:
            roots.append(Path(self.conversion.mappings_dir))
        files = []
        for root in roots:
            for path in sorted(root.rglob("*")) if root.is_dir() else []:
                if path.is_file():
                    stat = path.stat()
                    files.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(files)

    def converter(self) -> Converter:
        """The converter; ConfigError when the mappings on disk do not load."""
        with self._lock:
            stamp = self._fingerprint()
            if self._converter is None or stamp != self._stamp:
                loaded = Converter.configured(self.conversion) if self.conversion else Converter.load()
                self._converter, self._stamp = loaded, stamp
            return self._converter

    def warm(self) -> None:
        """Compile the mappings now (in a background thread at the API's start), so the first dead
        letter an operator opens does not wait for it; a failure is reported by the first dry run."""
        with contextlib.suppress(GatewayError):
            self.converter()

    def dry_run(self, raw: bytes) -> dict[str, Any]:
        """Would ``raw`` convert (and validate) now? Its resource counts, or where it fails."""
        try:
            converter = self.converter()
        except GatewayError as exc:
            return {"converts": False, "stage": Stage.CONFIG, "error": f"the mappings do not load: {exc.safe_text()}"}
        return dry_run(converter, raw)

    def workbench(self, raw: bytes) -> dict[str, Any]:
        """``hl7gw convert --report`` on one pasted message, storing nothing: the Bundle (pretty JSON),
        the segments and fields the maps left unused and the notes, or where it fails."""
        try:
            converter = self.converter()
        except GatewayError as exc:
            return {"converts": False, "stage": Stage.CONFIG, "error": f"the mappings do not load: {exc.safe_text()}"}
        return workbench(converter, raw)


def workbench(converter: Converter, raw: bytes) -> dict[str, Any]:
    """Decode, parse, convert (with the report of what was unused) and validate ``raw``."""
    conversion, failure = _attempt(converter.convert_with_report, raw)
    if conversion is None:
        failure.pop("error_type")
        return failure
    return {
        "converts": True,
        "bundle": fhirjson.dumps(conversion.bundle, option=orjson.OPT_INDENT_2).decode(),
        "entries": len(conversion.bundle["entry"]),
        "unused_segments": list(conversion.unused_segments),
        "unused_fields": {segment: list(fields) for segment, fields in conversion.unused_fields.items()},
        "notes": list(conversion.notes),
    }


def dry_run(converter: Converter, raw: bytes) -> dict[str, Any]:
    """Decode, parse, convert and validate ``raw`` as a worker would, storing nothing."""
    conversion, failure = _attempt(converter.convert_noted, raw)
    if conversion is None:
        return failure
    types = Counter(
        entry.get("resource", {}).get("resourceType") or entry["request"]["url"].split("/")[0]
        for entry in conversion.bundle["entry"]
    )
    return {"converts": True, "resources": dict(sorted(types.items())), "notes": conversion.notes}


def _attempt(convert: Callable[[Message], Conversion], raw: bytes) -> tuple[Conversion | None, dict[str, Any]]:
    """``raw`` decoded, parsed, converted by ``convert`` and validated; or None and the failure, in words
    without values (the stage it failed at, the error's type and text, a mapping's location)."""
    stage = Stage.PARSE
    try:
        message = parse(decode_message(raw))
        stage = Stage.CONVERT
        conversion = convert(message)
        stage = Stage.VALIDATE
        validate_bundle(conversion.bundle)
    except Exception as exc:  # noqa: BLE001 - every failure is the answer, in words without values
        failure: dict[str, Any] = {
            "converts": False,
            "stage": stage_of(exc, stage),
            "error_type": type(exc).__name__,
            "error": describe(exc),
        }
        if isinstance(exc, MappingError):
            failure["location"] = exc.location()
        return None, failure
    return conversion, {}


def detail(letter: DeadLetter, dry: DryRun | None, edited: bytes | None = None) -> dict[str, Any]:
    """One letter in full: its summary, raw message and layout, the dry run (None: not asked, or the
    raw message was purged), and the edited copy it was replayed with, if it was."""
    shown = {"edited_raw": edited.decode("utf-8", errors="replace") if edited is not None else None}
    if not letter.raw:  # purged (hl7gw dlq purge): nothing to lay out or convert
        return {
            **letter.summary(),
            "raw": None,
            "raw_base64": None,
            "layout": None,
            "layout_error": None,
            "dry_run": None,
            **shown,
        }
    dry_run = dry(letter.raw) if dry is not None else None
    return {**letter.summary(), **raw_view(letter.raw), "dry_run": dry_run, **shown}


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_list(letters: list[DeadLetter], out: TextIO, as_json: bool) -> None:
    """The letters as a table for people, or one JSON document for scripts."""
    if as_json:
        json.dump({"dead_letters": [d.summary() for d in letters]}, out, indent=2)
        print(file=out)
        return
    if not letters:
        print("no dead letters", file=out)
        return
    head = f"{'id':36}  {'when (UTC)':19}  {'status':9}  {'stage':14}  {'sender':24}  {'control id':20}  reason"
    print(head, file=out)
    for d in letters:
        reason = d.reason.replace("\n", " ")
        print(
            f"{d.id:36}  {when(d.created_at):19}  {d.status:9}  {d.stage[:14]:14}  {d.sender[:24]:24}  "
            f"{d.control_id[:20]:20}  {reason[:160]}",
            file=out,
        )


def print_detail(data: dict[str, Any], out: TextIO, as_json: bool) -> None:
    """One letter (``detail``'s data) for people, or as JSON."""
    if as_json:
        json.dump(data, out, indent=2)
        print(file=out)
        return
    for label, key in (("id", "id"), ("status", "status"), ("stage", "stage"), ("error", "error_type")):
        print(f"{label}: {data[key]}", file=out)
    print(f"sender: {data['sender']}\ncontrol id: {data['control_id']}\nmessage: {data['envelope_id']}", file=out)
    print(f"written: {when(data['created_at'])} UTC after {data['attempts']} attempt(s)", file=out)
    if data.get("replay_of"):
        print(f"replay of: {data['replay_of']} (the letter of an earlier attempt)", file=out)
    if data.get("replayed_as"):
        by = f" by {data['handled_by']} at {when(data['handled_at'])} UTC" if data.get("handled_at") else ""
        print(f"replayed as: message {data['replayed_as']}{by} {data.get('handled_note') or ''}".rstrip(), file=out)
    if data["status"] == "discarded":
        print(f"discarded by {data.get('handled_by') or '?'}: {data.get('handled_note') or ''}", file=out)
    print(f"reason: {data['reason']}", file=out)
    if data.get("raw_purged"):
        print("\n--- raw message ---\n(removed by hl7gw dlq purge)", file=out)
        return
    dry = data.get("dry_run")
    if dry is not None:
        print("\n--- dry run with the mappings as they are now ---", file=out)
        if dry["converts"]:
            counts = ", ".join(f"{n} {t}" for t, n in dry["resources"].items())
            print(f"would convert now: {counts}", file=out)
            for note in dry.get("notes", []):
                print(f"  note: {note}", file=out)
        else:
            print(f"would still fail at {dry['stage']}: {dry['error']}", file=out)
    print("\n--- message by segment and field ---", file=out)
    if data["layout"] is not None:
        print("\n".join(layout_lines(data["layout"])), file=out)
    else:
        print(f"(not readable as HL7: {data['layout_error']})", file=out)
    print("\n--- raw message ---", file=out)
    print(data["raw"].replace("\r", "\n").rstrip("\n"), file=out)
    if data.get("edited_raw"):
        print("\n--- the edited message it was replayed with ---", file=out)
        print(data["edited_raw"].replace("\r", "\n").rstrip("\n"), file=out)
