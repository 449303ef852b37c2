"""A small tmpfs of a test's own, to fill up: ``mount -t tmpfs`` (root only; the test is skipped,
saying why, where it cannot mount), unmounted in every case."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size_mb: int) -> Iterator[Path]:
    """``directory`` (created) with a ``size_mb`` MiB tmpfs on it, mode 0700, until the block ends."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs to fill (mount -t tmpfs)")
    directory.mkdir(parents=True, exist_ok=True)
    options = f"size={size_mb}m,mode=0700"
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode(errors='replace').strip()}")
    try:
        yield directory
    finally:
        unmount(directory)


def unmount(directory: Path) -> None:
    """Unmount, waiting a little for processes that still hold files there; lazily at last."""
    for _ in range(50):
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(directory)], check=True)


def fill(directory: Path) -> Path:
    """Write zeros into a file in ``directory`` until the filesystem has no room left; the file."""
    filler = directory / "filler"
    chunk = bytes(1 << 20)
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as out:  # the last partial block
        while out.write(b"\0" * 4096):
            pass
    return filler
