"""Every Redis key the gateway uses, in one place."""

from __future__ import annotations

from dataclasses import dataclass

#: Dramatiq queue that carries received messages to the workers.
QUEUE = "hl7"
#: Dramatiq actor that runs the pipeline on one envelope.
ACTOR = "process_message"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one namespace (tests use a namespace each on a shared Redis)."""

    namespace: str = "hl7gw"

    # Dramatiq's own layout (dramatiq/brokers/redis/dispatch.lua), written by our intake script.
    def queue(self, queue: str = QUEUE) -> str:
        return f"{self.namespace}:{queue}"

    def queue_messages(self, queue: str = QUEUE) -> str:
        return f"{self.namespace}:{queue}.msgs"

    def heartbeats(self) -> str:
        return f"{self.namespace}:__heartbeats__"

    def acks_prefix(self) -> str:
        return f"{self.namespace}:__acks__."

    # Ours.
    def sequence(self, sender: str) -> str:
        """Per-sender counter giving each accepted message its order number."""
        return f"{self.namespace}:seq:{sender}"
