"""Every Redis key the gateway uses, in one place."""

from __future__ import annotations

from dataclasses import dataclass

#: Dramatiq queue that carries received messages to the workers.
QUEUE = "hl7"
#: Dramatiq actor that runs the pipeline on one envelope.
ACTOR = "process_message"
#: The queue and actor of replayed and reprocessed messages (operator jobs): the same pipeline, on
#: a queue of its own with few threads, so a bulk replay never delays live traffic.
REPLAY_QUEUE = "hl7-replay"
REPLAY_ACTOR = "process_replayed"
#: The queue and actor of imported batch files (docs/batch.md, Order and fairness): the same
#: pipeline, on a queue of its own, paced at HL7GW_IMPORT_RATE and yielding to a live backlog.
IMPORT_QUEUE = "hl7-import"
IMPORT_ACTOR = "process_imported"
#: The actor of each pipeline queue: what the intake writes into the messages it commits there.
PIPELINE_ACTORS = {QUEUE: ACTOR, REPLAY_QUEUE: REPLAY_ACTOR, IMPORT_QUEUE: IMPORT_ACTOR}


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one namespace (tests use a namespace each on a shared Redis)."""

    namespace: str = "hl7gw"

    # Dramatiq's own layout (dramatiq/brokers/redis/dispatch.lua), written by our intake script.
    def queue(self, queue: str = QUEUE) -> str:
        return f"{self.namespace}:{queue}"

    def queue_messages(self, queue: str = QUEUE) -> str:
        return f"{self.namespace}:{queue}.msgs"

    def dead_messages(self, queue: str = QUEUE) -> str:
        """Dramatiq's own dead-letter set (``.XQ``); the gateway never lets a message end there."""
        return f"{self.namespace}:{queue}.XQ"

    def heartbeats(self) -> str:
        return f"{self.namespace}:__heartbeats__"

    def acks_prefix(self) -> str:
        return f"{self.namespace}:__acks__."

    # Ours.
    def worker_record(self, worker_id: str) -> str:
        """What a worker (by its heartbeat id) tells readiness probes: its mappings compiled, how
        many message types; refreshed with its heartbeat and expiring with it (gateway/readiness.py)."""
        return f"{self.namespace}:worker:{worker_id}"

    def sequence(self, sender: str) -> str:
        """Per-sender counter giving each accepted message its order number."""
        return f"{self.namespace}:seq:{sender}"

    def dedup(self, sender: str, control_id: str) -> str:
        """Marks a message accepted from ``sender`` ("app|facility") with MSH-10 ``control_id``,
        for the duplicate window; the value is "<content digest>:<sequence number>". The length
        prefix keeps "a|b" + "c" apart from "a" + "b|c"."""
        return f"{self.namespace}:dedup:{len(sender)}:{sender}:{control_id}"

    def duplicates(self) -> str:
        """Counter of resent messages answered again but not enqueued again."""
        return f"{self.namespace}:stats:duplicates"

    def control_id_reused(self) -> str:
        """Counter of messages whose sender and MSH-10 came before with other content."""
        return f"{self.namespace}:stats:control_id_reused"

    def sender_last_seen(self) -> str:
        """Hash of sender ("app|facility") -> time (ms) of the last message accepted from it."""
        return f"{self.namespace}:stats:sender-last-seen"

    def import_progress(self, file_sha256: str) -> str:
        """Hash of one batch file's import (by the SHA-256 of its bytes): status, the committed
        prefix (offset, batch, index, count) and its counts (gateway/services/import_progress.py)."""
        return f"{self.namespace}:import:{file_sha256}"

    def sender_last_imported(self) -> str:
        """Like ``sender_last_seen``, for messages committed to the import queue: an import of old
        messages must not hide that a sender's live feed has gone silent."""
        return f"{self.namespace}:stats:sender-last-imported"

    def import_pace(self) -> str:
        """The import queue's pacing slot (gateway/queue/pacing.py): when, in microseconds of
        Redis's clock, the next imported message may start; shared by every worker process."""
        return f"{self.namespace}:pace:{IMPORT_QUEUE}"

    def parked_letters(self) -> str:
        """Hash of dead letters waiting for the database to answer: letter id -> letter JSON."""
        return f"{self.namespace}:parked-letters"

    def probe(self) -> str:
        """Written by a worker to see whether Redis takes writes (gateway/services/outages.py)."""
        return f"{self.namespace}:probe"

    def sink_breaker(self, sink: str) -> str:
        """Hash of a remote sink's circuit breaker: ``failures`` in a row, ``open_until`` (ms)."""
        return f"{self.namespace}:breaker:{sink}"

    def sink_probe(self, sink: str) -> str:
        """Held (with an expiry) by the one worker trying a half-open sink."""
        return f"{self.namespace}:breaker:{sink}:probe"
