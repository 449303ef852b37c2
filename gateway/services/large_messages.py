"""A worker's budget of large messages in flight: the bytes of messages of 1 MB or more that its
threads work on at once (HL7GW_WORKER_LARGE_MESSAGES_MB).

A message costs about ten times its size while it is worked on (decode, parse, the resource with
its attachment, its canonical JSON: docs/operations.md, "Memory: sizing a worker"); with 64 threads,
64 scanned reports at once would take any container down. A large message waits for room in the
budget; one larger than the whole budget runs alone. Smaller messages never wait, so a burst of
large ones slows only them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Messages at least this large count against the budget.
LARGE_BYTES = 1 << 20


class LargeMessages:
    def __init__(self, budget_bytes: int, large_bytes: int = LARGE_BYTES):
        self.budget = budget_bytes
        self.large = large_bytes
        self.in_flight = 0
        self._room = threading.Condition()

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        """Work on a message of ``size`` bytes: at once when it is small, else once the large ones in
        flight leave room for it (or none is in flight)."""
        if size < self.large:
            yield
            return
        with self._room:
            self._room.wait_for(lambda: self.in_flight == 0 or self.in_flight + size <= self.budget)
            self.in_flight += size
        try:
            yield
        finally:
            with self._room:
                self.in_flight -= size
                self._room.notify_all()
