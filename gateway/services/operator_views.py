"""What operators read from the command line: one message's journey (archive row, the resource
versions it made or was superseded on, its delivery to each remote sink), a resource's trail of
messages, the latest superseded writes, and the remote sinks' backlog."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TextIO

from sqlalchemy.engine import Engine

from gateway.journal import provenance
from gateway.journal.deliveries import PENDING, DeliveryStates
from gateway.journal.message_life import find_messages, life_of
from gateway.journal.messages import MessageArchive


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def show_message(engine: Engine, key: str, out: TextIO, raw: bool = False) -> int:
    """Print each message matching ``key``; 1 when there is none."""
    found = find_messages(engine, key)
    if not found:
        print(f"no message with id or MSH-10 {key!r}", file=out)
        return 1
    for message in found:
        life = life_of(engine, message)
        print(f"message {message.id}", file=out)
        print(f"  sender {message.sender}  MSH-10 {message.control_id}  type {message.message_type or '?'}", file=out)
        print(f"  received {_when(message.received_at)} UTC  sequence {message.seq}", file=out)
        print(f"  status {message.status}  attempts {message.attempts}", file=out)
        records = life.resources
        if records:
            print("  resources:", file=out)
        for r in records:
            by = f" (kept version by message {r.superseded_by})" if r.superseded_by else ""
            print(f"    {r.type}/{r.id} v{r.version_id} {r.outcome}{by}", file=out)
        if not records and message.detail:
            print(f"  detail: {message.detail}", file=out)
        for note in filter(None, message.notes.split("\n")):
            print(f"  note: {note}", file=out)
        for state in life.deliveries:
            error = f": {state.last_error[:200]}" if state.last_error else ""
            print(f"  sink {state.sink}: {state.status}, {state.attempts} attempt(s){error}", file=out)
        for letter in life.letters:
            print(f"  dead letter {letter.id} ({letter.status}) at {letter.stage}: {letter.reason[:200]}", file=out)
        if raw:
            print("  --- raw message ---", file=out)
            print(message.raw.decode("utf-8", errors="replace").replace("\r", "\n"), file=out)
    return 0


def show_trail(engine: Engine, reference: str, out: TextIO) -> int:
    """Print the messages that made, changed or tried to change ``Type/id``, oldest first."""
    resource_type, _, resource_id = reference.partition("/")
    if not resource_type or not resource_id:
        print(f"expected Type/id, not {reference!r}", file=out)
        return 2
    records = provenance.for_resource(engine, resource_type, resource_id)
    if not records:
        print(f"no message has written {reference}", file=out)
        return 1
    archive = MessageArchive(engine)
    for r in records:
        message = archive.get(r.message_id)
        origin = f"{message.sender} MSH-10 {message.control_id}" if message else "(not archived)"
        by = f", kept version by message {r.superseded_by}" if r.superseded_by else ""
        when = r.recorded_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"v{r.version_id} {r.outcome:10} {when}  message {r.message_id} ({origin}){by}", file=out)
    return 0


def list_superseded(engine: Engine, limit: int, out: TextIO) -> int:
    """Print the latest writes skipped because the store held newer data."""
    records = provenance.superseded(engine, limit)
    if not records:
        print("no superseded writes", file=out)
        return 0
    print(f"{'when (UTC)':19}  {'resource':60}  {'message':36}  kept version by message", file=out)
    for r in records:
        when = r.recorded_at.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{when:19}  {f'{r.type}/{r.id} v{r.version_id}':60}  {r.message_id:36}  {r.superseded_by or ''}",
            file=out,
        )
    return 0


def sink_status(engine: Engine, out: TextIO, oldest: int = 5) -> int:
    """Print, per remote sink, its messages by state and the oldest still pending."""
    states = DeliveryStates(engine)
    summary = states.summary()
    if not summary:
        print("no remote sink deliveries recorded", file=out)
        return 0
    for sink in sorted({s for s, _ in summary}):
        counts = ", ".join(f"{status} {n}" for (s, status), n in sorted(summary.items()) if s == sink)
        print(f"sink {sink}: {counts}", file=out)
        for state in states.pending(sink, oldest) if summary.get((sink, PENDING)) else []:
            error = f", last error: {state.last_error[:120]}" if state.last_error else ""
            print(
                f"  pending since {_when(state.received_at)} UTC: message {state.message_id}, "
                f"{state.attempts} attempt(s){error}",
                file=out,
            )
    return 0
