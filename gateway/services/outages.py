"""Outages: a dependency that does not answer pauses a worker; it never fails a message.

A worker process has one gate per dependency it writes to: "database" and "redis". A thread whose
work failed with an outage-class error (gateway/errors.py) reports it to that dependency's gate:

* the gate probes the dependency at once with a small write. If the probe passes, the failure
  was not an outage (a blip, or something about the message): the caller counts an attempt;
* if the probe fails, the gate closes and logs one WARNING for the whole outage. A prober thread
  tries again with exponential backoff up to a ceiling, however long it takes. Threads wait on
  the gate (keeping the messages they hold: they stay in flight in Redis), no thread starts a new
  message, and when the probe passes the gate opens, logs once, and everyone carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from gateway.errors import describe, unavailable_dependency

log = logging.getLogger(__name__)

#: Raises when the dependency cannot take a write now.
Probe = Callable[[], object]


class Gate:
    """Open while the dependency answers; closed from the first failed probe until a probe passes."""

    def __init__(
        self,
        name: str,
        probe: Probe,
        *,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        on_recovery: Iterable[Callable[[], None]] = (),
    ):
        self.name = name
        self.probe = probe
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_recovery = list(on_recovery)
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._since = 0.0
        #: Outages so far (tests and operators read it).
        self.outages = 0

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def report(self, exc: BaseException) -> bool:
        """After a failure that looks like an outage: True if it is one (the gate is closed now),
        False if the dependency answers a probe (the failure was not the dependency's)."""
        with self._lock:
            if not self._open.is_set():
                return True
            if self._probe_passes():
                return False
            self._close(exc)
            return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the gate is open (or ``timeout`` passes); True when open."""
        return self._open.wait(timeout)

    def stop(self) -> None:
        """End the prober thread (the process is stopping)."""
        self._stop.set()

    def _probe_passes(self) -> bool:
        try:
            self.probe()
        except Exception:  # noqa: BLE001 - any failure of the probe means "not now"
            return False
        return True

    def _close(self, exc: BaseException) -> None:
        self._open.clear()
        self._since = time.monotonic()
        self.outages += 1
        log.warning(
            "%s unavailable (%s): pausing; messages in hand are kept and retried when it answers "
            "(checking every %g s at most)",
            self.name,
            describe(exc),
            self.max_backoff_s,
        )
        threading.Thread(target=self._probe_until_up, name=f"hl7gw-probe-{self.name}", daemon=True).start()

    def _probe_until_up(self) -> None:
        delay = self.min_backoff_s
        while not self._stop.wait(delay):
            if self._probe_passes():
                break
            delay = min(delay * 2, self.max_backoff_s)
        else:
            return
        log.warning("%s answers again after %.0f s: resuming", self.name, time.monotonic() - self._since)
        for callback in self.on_recovery:  # before anyone goes on: they find the recovery done
            try:
                callback()
            except Exception:  # noqa: BLE001
                log.exception("%s recovery callback failed", self.name)
        with self._lock:
            self._open.set()


class Outages:
    """The gates of one worker process, by dependency name."""

    def __init__(self, gates: Iterable[Gate]):
        self.gates = {gate.name: gate for gate in gates}

    def hold(self, exc: BaseException) -> bool:
        """Wait out the outage ``exc`` says there is; True when there was one (do the work again),
        False when ``exc`` is not an outage or its dependency answers (a failure to count)."""
        gate = self.gates.get(unavailable_dependency(exc) or "")
        if gate is None or not gate.report(exc):
            return False
        gate.wait()
        return True

    def wait_all(self) -> None:
        """Block while any dependency is down: no new message is started during an outage."""
        for gate in self.gates.values():
            gate.wait()

    @property
    def all_open(self) -> bool:
        return all(gate.is_open for gate in self.gates.values())

    def stop(self) -> None:
        for gate in self.gates.values():
            gate.stop()


T = TypeVar("T")


def until_available(dependency: str, action: Callable[[], T], *, max_backoff_s: float = 10.0) -> T:
    """``action`` (a process's start: its schema, its first connection), run again while it fails
    because ``dependency`` does not answer; one WARNING when it starts waiting, one when it ends."""

    def probe() -> None:
        try:
            action()
        except Exception as exc:
            if unavailable_dependency(exc) == dependency:
                raise
            # Anything else: the dependency answers, and the next call says what is wrong.

    gate = Gate(dependency, probe, max_backoff_s=max_backoff_s)
    try:
        while True:
            try:
                return action()
            except Exception as exc:
                if unavailable_dependency(exc) != dependency:
                    raise
                if gate.report(exc):
                    gate.wait()
    finally:
        gate.stop()
