"""Site-specific mappings: a directory (HL7GW_MAPPINGS_DIR) laid out like mappings/ whose files
replace the shipped files of the same name or add new ones, and whose ``senders/<APP>@<FACILITY>/``
directories do the same for one sender (MSH-3.1 and MSH-4.1) on top of the site's files.

    $HL7GW_MAPPINGS_DIR/
      segments/ZPI_Patient.yaml          # a Z-segment for every sender
      messages/ADT_A01.yaml              # replaces the shipped ADT_A01 map
      senders/LABSYS@MERCY/tables/...    # only for messages from LABSYS at MERCY
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.errors import ConfigError

FOLDERS = ("messages", "structures", "segments", "datatypes", "tables")


@dataclass(frozen=True)
class Overlay:
    root: Path

    @classmethod
    def read(cls, root: Path) -> Overlay:
        if not root.is_dir():
            raise ConfigError(f"HL7GW_MAPPINGS_DIR {root} is not a directory")
        unknown = [p.name for p in root.iterdir() if p.is_dir() and p.name not in FOLDERS + ("senders",)]
        if unknown:
            raise ConfigError(
                f"HL7GW_MAPPINGS_DIR {root}: unknown folder(s) {sorted(unknown)} "
                f"(expected {', '.join(FOLDERS)} and senders/)"
            )
        return cls(root)


def sender_key(directory_name: str) -> str:
    """``LABSYS@MERCY`` -> the sender as Message.sender names it, ``LABSYS|MERCY``."""
    application, _, facility = directory_name.partition("@")
    return f"{application}|{facility}"


def sender_dirs(overlay: Overlay | None) -> dict[str, Path]:
    """sender -> its directory, for every ``senders/<APP>@<FACILITY>/`` of the overlay."""
    if overlay is None or not (overlay.root / "senders").is_dir():
        return {}
    found = {}
    for path in sorted((overlay.root / "senders").iterdir()):
        if not path.is_dir():
            continue
        if "@" not in path.name:
            raise ConfigError(f"{path}: a sender directory is named APPLICATION@FACILITY (MSH-3.1@MSH-4.1)")
        found[sender_key(path.name)] = path
    return found


def time_zone(name: str, what: str) -> tzinfo:
    """The IANA time zone ``name`` (e.g. Europe/Berlin); ConfigError naming ``what`` if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{what}: unknown time zone {name!r} (expected an IANA name such as Europe/Berlin)") from None
