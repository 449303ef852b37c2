"""Remote FHIR sinks as configured by HL7GW_FHIR_SINKS (docs/delivery.md).

Two spellings, both a list of sinks:

* JSON: ``[{"name": "hapi", "url": "https://hapi.example/fhir", "mode": "transaction",
  "auth": "Bearer s3cr3t", "timeout": 10, "concurrency": 4}]`` (``name`` and ``url`` required);
* compact: sinks separated by ``,``, each ``name=url`` followed by ``;key=value`` options, e.g.
  ``hapi=https://hapi.example/fhir;auth=Bearer s3cr3t, lab=http://lab:8080/fhir;mode=put``.

``mode`` is ``transaction`` (POST the Bundle to the base URL, all or nothing on the server) or
``put`` (each entry as its own PUT or DELETE, in order); ``auth`` is the Authorization header sent
with every request; ``timeout`` seconds per request; ``concurrency`` requests in flight per worker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.stages import sink_stage

Mode = Literal["transaction", "put"]
# Sink names become queue names (sink.<name>) and dead-letter stages (deliver:<name>).
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,23}$")
_OPTIONS = {"mode", "auth", "timeout", "concurrency"}


@dataclass(frozen=True, slots=True)
class SinkSpec:
    name: str
    url: str
    mode: Mode = "transaction"
    auth: str | None = None
    timeout: float = 10.0
    concurrency: int = 4

    @property
    def queue(self) -> str:
        return f"sink.{self.name}"

    @property
    def stage(self) -> str:
        return sink_stage(self.name)

    def __repr__(self) -> str:  # never print the credentials
        auth = "<set>" if self.auth else None
        return f"SinkSpec(name={self.name!r}, url={self.url!r}, mode={self.mode!r}, auth={auth})"


def parse_sinks(value: str) -> tuple[SinkSpec, ...]:
    """Parse HL7GW_FHIR_SINKS; raises ValueError naming the bad sink or option."""
    text = value.strip()
    if not text:
        return ()
    if text[0] in "[{":
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        items = data if isinstance(data, list) else [data]
        specs = [_from_mapping(item, f"sink #{n + 1}") for n, item in enumerate(items)]
    else:
        specs = [_from_compact(part.strip()) for part in text.split(",") if part.strip()]
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"sink name {duplicates[0]!r} is used twice")
    return tuple(specs)


def _from_compact(part: str) -> SinkSpec:
    head, *options = part.split(";")
    name, sep, url = head.partition("=")
    if not sep:
        raise ValueError(f"sink {part!r} is not name=url[;option=value...]")
    fields: dict[str, Any] = {"name": name.strip(), "url": url.strip()}
    for option in options:
        key, sep, val = option.partition("=")
        if not sep:
            raise ValueError(f"sink {name.strip()!r}: option {option.strip()!r} is not key=value")
        fields[key.strip()] = val.strip()
    return _from_mapping(fields, f"sink {name.strip()!r}")


def _from_mapping(item: Any, where: str) -> SinkSpec:
    if not isinstance(item, dict):
        raise ValueError(f"{where} is not an object")
    name, url = item.get("name"), item.get("url")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: name {name!r} must be 1-24 of a-z, 0-9, _ and -, starting with a letter or digit")
    where = f"sink {name!r}"
    unknown = sorted(set(item) - _OPTIONS - {"name", "url"})
    if unknown:
        raise ValueError(f"{where}: unknown option {unknown[0]!r} (known: {', '.join(sorted(_OPTIONS))})")
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
        raise ValueError(f"{where}: url {url!r} must be an http:// or https:// base URL")
    mode = item.get("mode", "transaction")
    if mode not in ("transaction", "put"):
        raise ValueError(f"{where}: mode {mode!r} must be transaction or put")
    auth = item.get("auth")
    if auth is not None and (not isinstance(auth, str) or not auth.strip() or "\n" in auth):
        raise ValueError(f"{where}: auth must be one line of header value text")
    try:
        timeout = float(item.get("timeout", 10.0))
        concurrency = int(item.get("concurrency", 4))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: timeout must be a number and concurrency an integer") from None
    if not 0 < timeout <= 300:
        raise ValueError(f"{where}: timeout must be more than 0 and at most 300 seconds")
    if not 1 <= concurrency <= 64:
        raise ValueError(f"{where}: concurrency must be 1 to 64")
    return SinkSpec(name, url.rstrip("/"), mode, auth.strip() if auth else None, timeout, concurrency)
