"""Patient data stays private to the gateway's user: files 0600 and directories 0700, whatever the umask."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

#: Group and others get nothing: files are created 0600 and directories 0700.
PRIVATE_UMASK = 0o077
_GROUP_OR_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def restrict_umask() -> None:
    """Make every file and directory this process creates private to its user: the SQLite
    database and its -wal/-shm, the embedded Redis's AOF (a child inherits the umask), spools,
    exports, metrics files. Called once, first thing, by the ``hl7gw`` command."""
    os.umask(PRIVATE_UMASK)


def prepare_data_dir(path: Path) -> None:
    """Create the data dir 0700; an existing one that lets group or others in is left as it is
    (the operator may have chosen so, e.g. for a backup group) with one warning saying so."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return
    if mode & _GROUP_OR_OTHERS:
        log.warning(
            "data dir %s is mode %04o: group or others may read the patient data in it; "
            "'chmod -R go-rwx' it (new files are created 0600 and directories 0700)",
            path.resolve(),
            mode,
        )


def create_secret_file(path: Path, content: str) -> None:
    """Write ``content`` to a new file ``path`` (mode 0600) unless one is there: a private temporary
    file linked into place, so it appears complete or not at all, and when two processes race, the
    first link wins and both then read the winner's content."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(content + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)
