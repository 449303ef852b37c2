"""The converter: one HL7 v2 message in, one FHIR R4 transaction Bundle out, as a pure function.

    converter = Converter.load()            # reads and compiles mappings/ once (with the site's overlay)
    bundle = converter.convert(message)     # gateway.hl7.message.Message -> Bundle dict

The message map is chosen by MSH-9 code and trigger; the segments are grouped by the structure
MSH-9.3 names (when it names one we have), else by the trigger's structure. A sender may have maps
and a time zone of its own (gateway.convert.loading.overlay); everything is compiled at load, so converting
never reads YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any

import gateway
from gateway.config import ConversionSettings
from gateway.convert.compilation.maps import Mappings
from gateway.convert.loading.loader import load_mappings
from gateway.convert.loading.messages import MessagePlan, load_messages
from gateway.convert.loading.overlay import Overlay, sender_dirs, time_zone
from gateway.convert.runtime.run import Conversion, Run
from gateway.errors import ConfigError, GatewayError, MappingError, describe
from gateway.hl7.dtm import offset_zone
from gateway.hl7.message import Message

__all__ = ["Conversion", "Converter", "default_mappings_dir"]


def default_mappings_dir() -> Path:
    """The shipped mappings: gateway/mappings/ in an installed wheel (setup.py puts them there),
    else the repository's mappings/ beside the package (a source checkout, an editable install)."""
    package = Path(gateway.__file__).resolve().parent
    installed = package / "mappings"
    return installed if installed.is_dir() else package.parent / "mappings"


@dataclass(frozen=True)
class Profile:
    """Compiled maps for one set of mapping roots (the shipped maps, a site's, a sender's)."""

    mappings: Mappings
    plans: dict[str, MessagePlan]


def compile_profile(roots: list[Path]) -> Profile:
    mappings = load_mappings(roots)
    plans = load_messages(mappings)
    if not plans:
        raise ConfigError(f"no message maps in {' + '.join(str(r / 'messages') for r in roots)}")
    from gateway.convert.loading.checks import check_mappings

    check_mappings(mappings)
    return Profile(mappings, plans)


class Converter:
    """Compiled mappings; thread-safe (conversion state lives in a per-call object)."""

    def __init__(
        self,
        base: Profile,
        senders: dict[str, Profile] | None = None,
        default_tz: tzinfo | None = None,
        sender_tz: dict[str, tzinfo] | None = None,
        unplaced: str = "reject",
        sender_unplaced: Mapping[str, str] | None = None,
        host_tz: tzinfo | None = None,
    ):
        self.base = base
        self.senders = senders or {}
        self.default_tz = default_tz
        self.sender_tz = sender_tz or {}
        #: A segment that fits nowhere in the structure: "reject" (MappingError) or "note".
        self.unplaced = unplaced
        self.sender_unplaced = dict(sender_unplaced or {})
        #: The zone of timestamps without an offset when nothing else says one (the gateway's host).
        self.host_tz = host_tz

    @property
    def mappings(self) -> Mappings:
        return self.base.mappings

    @property
    def plans(self) -> dict[str, MessagePlan]:
        return self.base.plans

    @classmethod
    def configured(cls, conversion: ConversionSettings) -> Converter:
        """The shipped mappings with the site's overlay and time zones (HL7GW_MAPPINGS_DIR,
        HL7GW_DEFAULT_TZ, HL7GW_SENDER_TZ)."""
        return cls.load(
            overlay_dir=conversion.mappings_dir,
            default_tz=conversion.default_tz,
            sender_tz=conversion.sender_tz,
            unplaced=conversion.unplaced_segments,
            sender_unplaced=conversion.sender_unplaced_segments,
            host_tz=conversion.host_tz,
        )

    @classmethod
    def load(
        cls,
        mappings_dir: Path | None = None,
        *,
        overlay_dir: Path | None = None,
        default_tz: str | None = None,
        sender_tz: Mapping[str, str] | None = None,
        unplaced: str = "reject",
        sender_unplaced: Mapping[str, str] | None = None,
        host_tz: str | None = None,
    ) -> Converter:
        """Compile ``mappings_dir`` (default: the shipped mappings/) with the site overlay
        ``overlay_dir`` and its per-sender directories, and the time zones of timestamps without
        an offset (for every sender, and per sender), and what a segment that fits nowhere in its
        structure does to a message (``reject`` or ``note``; for every sender, and per sender)."""
        root = Path(mappings_dir) if mappings_dir is not None else default_mappings_dir()
        if not root.is_dir():
            raise ConfigError(
                f"mappings directory {root} does not exist (the converter reads its YAML maps from there; "
                "pass mappings_dir or run from a source checkout)"
            )
        overlay = Overlay.read(Path(overlay_dir)) if overlay_dir is not None else None
        roots = [root] + ([overlay.root] if overlay is not None else [])
        base = compile_profile(roots)
        senders = {sender: compile_profile(roots + [path]) for sender, path in sender_dirs(overlay).items()}
        zones = {
            sender: time_zone(name, f"time zone of sender {sender!r}") for sender, name in (sender_tz or {}).items()
        }
        default = time_zone(default_tz, "HL7GW_DEFAULT_TZ") if default_tz else None
        host = time_zone(host_tz, "the host's time zone") if host_tz else None
        return cls(base, senders, default, zones, unplaced, sender_unplaced, host)

    def clear_caches(self) -> None:
        """Forget memoized map results (for benchmarks and tests; conversion is the same without)."""
        for profile in (self.base, *self.senders.values()):
            profile.mappings.memos.clear()

    def supports(self, code: str, trigger: str, sender: str | None = None) -> bool:
        """Whether messages of this type (from this sender, when given) can be converted."""
        profile = self.senders.get(sender, self.base) if sender is not None else self.base
        return f"{code}_{trigger}" in profile.plans

    def convert(self, message: Message) -> dict[str, Any]:
        """The FHIR transaction Bundle for ``message``; MappingError when it cannot be converted."""
        return self._run(message).run().bundle

    def convert_noted(self, message: Message) -> Conversion:
        """The bundle and the notes (what could not be carried over), without the unused-field report."""
        return self._run(message).run()

    def convert_with_report(self, message: Message) -> Conversion:
        """The bundle, with the segments and fields the maps did not use and the notes."""
        run = self._run(message)
        conversion = run.run()
        conversion.unused_segments = run.unused()
        used = run.used_segments()
        for n, seg in enumerate(message.segments, 1):
            fields = used.get(id(seg))
            if fields is None:
                continue
            missing = [
                f"{seg.name}-{i}"
                for i in range(1, len(seg) + 1)
                if (seg.name, i) not in fields and seg.field_raw(i) not in ("", '""')
            ]
            if missing:
                conversion.unused_fields[f"{seg.name}#{n}"] = missing
        return conversion

    def zone_for(self, message: Message) -> tzinfo | None:
        """The zone of the message's timestamps without an offset: the sender's configured zone
        (HL7GW_SENDER_TZ, HL7GW_DEFAULT_TZ), else the offset of its MSH-7 (the sender's clock),
        else the host's zone; None when none is known (then such a time keeps only its date)."""
        configured = self.sender_tz.get(message.sender, self.default_tz)
        if configured is not None:
            return configured
        return offset_zone(message.msh.field(7)[1].value) or self.host_tz

    def _run(self, message: Message) -> Run:
        code, trigger, structure_name = message.message_type
        sender = message.sender
        profile = self.senders.get(sender, self.base)
        plan = profile.plans.get(f"{code}_{trigger}")
        if plan is None:
            supported = ", ".join(name.replace("_", "^") for name in sorted(profile.plans))
            raise MappingError(f"no mapping for message type {code or '?'}^{trigger or '?'} (supported: {supported})")
        # MSH-9.3 names the structure (chapter 2.14.9.9); without it, or with one we do not know,
        # the trigger's structure is used.
        structure = profile.mappings.structures.get(structure_name) or plan.structure
        tz = self.zone_for(message)
        unplaced = self.sender_unplaced.get(sender, self.unplaced)
        try:
            return _Checked(profile.mappings, message, plan, structure, tz, unplaced)
        except GatewayError:
            raise
        except Exception as exc:  # content a function did not expect: a clear error, not a crash
            raise MappingError(f"{plan.name} conversion failed: {describe(exc)}") from exc


class _Checked(Run):
    """A Run whose unexpected failures become MappingErrors naming the message map."""

    def run(self) -> Conversion:
        try:
            return super().run()
        except GatewayError:
            raise
        except Exception as exc:
            raise MappingError(f"{self.plan.name} conversion failed: {describe(exc)}") from exc
