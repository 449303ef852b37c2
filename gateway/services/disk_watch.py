"""The supervisor's eye on the data dir's disk: one ERROR when it fills, one WARNING when it has room
again, naming the path and the free bytes (never anything about messages).

While the disk is full nothing is lost: the embedded Redis cannot append to its AOF (it exits, and
the supervisor starts it again only once there is room), so the listener answers AR/CR 207; SQLite
says "database or disk is full", an outage the workers wait out holding their messages.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from gateway.diskspace import DiskSpace, data_dir_space
from gateway.errors import describe

log = logging.getLogger(__name__)

#: How often the disk is looked at when nobody asks sooner.
CHECK_EVERY_S = 2.0


class DiskWatch:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.full = False
        self._checked_at = -CHECK_EVERY_S
        self._unreadable = False

    def poll(self, *, now: bool = False) -> bool:
        """True while the disk is full; looks again every ``CHECK_EVERY_S`` (at once with ``now``)."""
        if now or time.monotonic() - self._checked_at >= CHECK_EVERY_S:
            self._checked_at = time.monotonic()
            try:
                space = data_dir_space(self.data_dir)
            except OSError as exc:
                if not self._unreadable:
                    log.error("data dir %s: its free space cannot be read: %s", self.data_dir, describe(exc))
                self._unreadable = True
                return self.full
            self._unreadable = False
            self._note(space)
        return self.full

    def _note(self, space: DiskSpace) -> None:
        if space.full and not self.full:
            log.error(
                "%s: what is kept there (the embedded Redis's append-only file, a SQLite database) cannot "
                "be written; the MLLP listener answers AR/CR 207 while the queue cannot store (nothing is "
                "acknowledged that is not stored) and workers wait; everything resumes by itself once "
                "space is freed",
                space.describe(),
            )
        elif self.full and not space.full:
            log.warning("data dir disk has room again: %s; resuming", space.describe())
        self.full = space.full
