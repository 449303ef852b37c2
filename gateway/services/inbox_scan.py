"""Which files of the watched inbox are written completely, by polling (os.scandir): portable, no
inotify. A file is ready when it was renamed in from a temporary name (its inode was seen under a
dotfile, ``.part``, ``.tmp`` or ``~`` name at the scan before: it appeared whole), or when its size
and modification time are the same as at the scan before and have not changed for ``settle_s``
(by its mtime or by what the scans saw: a file moved in with an old mtime is taken at once).

Temporary names, subdirectories (``done/``, ``failed/``) and anything not a regular file are
never taken. Ready files come oldest first (mtime, then name), so that files of one sender are
imported in the order they were written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Names writers give a file while they write it (besides dotfiles): never imported.
TEMPORARY_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".filepart", ".crdownload", ".swp", "~")
#: Report files written beside moved files (never in the inbox itself, but never taken either).
REPORT_SUFFIX = ".report.json"


def is_temporary(name: str) -> bool:
    lowered = name.lower()
    return name.startswith(".") or lowered.endswith(TEMPORARY_SUFFIXES) or lowered.endswith(REPORT_SUFFIX)


@dataclass(frozen=True, slots=True)
class Sighting:
    size: int
    mtime_ns: int
    inode: tuple[int, int]
    #: When the scans first saw the file with this size and mtime.
    since: float
    renamed_in: bool


class InboxScanner:
    def __init__(self, directory: Path, settle_s: float, clock: Callable[[], float] = time.time):
        self.directory, self.settle_s, self.clock = directory, settle_s, clock
        self._seen: dict[str, Sighting] = {}
        self._temporary_inodes: set[tuple[int, int]] = set()

    def scan(self) -> list[Path]:
        """The files written completely, oldest first."""
        now = self.clock()
        temporary: set[tuple[int, int]] = set()
        files: dict[str, os.stat_result] = {}
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if is_temporary(entry.name):
                    temporary.add((stat.st_dev, stat.st_ino))
                else:
                    files[entry.name] = stat
        ready: list[tuple[int, str]] = []
        seen: dict[str, Sighting] = {}
        for name, stat in files.items():
            inode = (stat.st_dev, stat.st_ino)
            before = self._seen.get(name)
            unchanged = before is not None and (before.size, before.mtime_ns, before.inode) == (
                stat.st_size,
                stat.st_mtime_ns,
                inode,
            )
            renamed_in = inode in self._temporary_inodes or (unchanged and before is not None and before.renamed_in)
            since = before.since if unchanged and before is not None else now
            sighting = Sighting(stat.st_size, stat.st_mtime_ns, inode, since, renamed_in)
            seen[name] = sighting
            settled = unchanged and (now - since >= self.settle_s or now - stat.st_mtime_ns / 1e9 >= self.settle_s)
            if renamed_in or settled:
                ready.append((stat.st_mtime_ns, name))
        self._seen = seen
        self._temporary_inodes = temporary
        return [self.directory / name for _, name in sorted(ready)]

    def forget(self, name: str) -> None:
        """``name`` was taken (moved away, or to be looked at again from scratch)."""
        self._seen.pop(name, None)
