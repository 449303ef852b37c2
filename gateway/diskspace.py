"""Free space on the data dir's filesystem: is there room for the embedded Redis's append-only file
and the SQLite database? For the supervisor (when to restart the embedded Redis, what to log) and
readiness (``/health/ready``, ``hl7gw status``).

Below ``MIN_FREE_BYTES`` the disk counts as full: an AOF write of a group commit or a SQLite page
may not fit, and a Redis started then would exit at its first write (``appendfsync always``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Less free than this on the data dir's filesystem is "disk full".
MIN_FREE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DiskSpace:
    path: Path
    #: Bytes this process may still write (root may use the blocks reserved for it).
    free: int
    total: int

    @property
    def full(self) -> bool:
        return self.free < MIN_FREE_BYTES

    def describe(self) -> str:
        """``data dir disk full: /srv/hl7gw has 0 bytes free (of 67108864)`` or, with room, the same
        without "disk full"; paths and sizes only."""
        state = "data dir disk full: " if self.full else ""
        return f"{state}{self.path} has {self.free} bytes free (of {self.total})"


def data_dir_space(path: Path) -> DiskSpace:
    """The free space of the filesystem ``path`` is on (of its nearest existing parent while it is not
    created yet); raises OSError when it cannot be read."""
    path = Path(path).resolve()
    existing = next((p for p in (path, *path.parents) if p.exists()), path)
    stat = os.statvfs(existing)
    blocks = stat.f_bfree if os.geteuid() == 0 else stat.f_bavail
    return DiskSpace(path, blocks * stat.f_frsize, stat.f_blocks * stat.f_frsize)
