"""The files prometheus_client keeps values in under ``hl7gw run`` (its multiprocess mode): where
they are, and their blocks allocated before a metric is made (gateway/metrics/catalogue.py calls
``reserve_value_files`` first), so that a full disk cannot kill a process that records."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gateway.errors import describe

log = logging.getLogger(__name__)

#: prometheus_client's variable naming the directory of the processes' value files.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def multiproc_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_DIR)
    return Path(value) if value else None


#: The value files prometheus_client writes for the catalogue's metrics in multiprocess mode, by
#: kind (a gauge's is named after its multiprocess mode), and its first size of one.
VALUE_FILE_KINDS = ("counter", "histogram", "gauge_livesum", "gauge_livemax")
VALUE_FILE_BYTES = 1 << 20


def reserve_value_files() -> None:
    """Allocate this process's value files on disk before prometheus_client maps them (under
    ``hl7gw run``; nothing otherwise). It makes them sparse and writes through mmap: a page first
    touched while the data dir's disk is full would kill the process with SIGBUS. Allocated, the
    pages are written in place. Raises OSError when there is no room for them now."""
    directory = multiproc_dir()
    if directory is None:
        return
    for kind in VALUE_FILE_KINDS:
        path = directory / f"{kind}_{os.getpid()}.db"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size == 0:
                os.posix_fallocate(fd, 0, VALUE_FILE_BYTES)
        except OSError as exc:
            os.unlink(path)
            log.error("metrics value file %s cannot be allocated: %s", path, describe(exc))
            raise
        finally:
            os.close(fd)
