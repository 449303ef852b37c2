"""Where metrics are read from: this process's own values, or, under ``hl7gw run``, the files every
process writes in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode).

``prometheus_client`` chooses how it keeps values when it is first imported, from that variable:
the supervisor makes the directory (empty) and puts it in its children's environment, so each
child imports the library already in multiprocess mode. A process started alone has no such
variable and keeps its values in memory; ``hl7gw mllp`` and ``hl7gw worker`` alone then serve them
on HL7GW_METRICS_PORT.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from gateway.metrics.value_files import MULTIPROC_DIR as MULTIPROC_DIR
from gateway.metrics.value_files import multiproc_dir as multiproc_dir

log = logging.getLogger(__name__)


def fresh_multiproc_dir(data_dir: Path) -> Path:
    """``<data dir>/metrics``, emptied: the supervisor's at start (files of an earlier run would
    count its processes' values again)."""
    path = data_dir / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def child_died(pid: int, path: Path) -> None:
    """Forget a dead child's live gauges (its counters keep counting in the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


class _Delegate:
    """Collects another registry's metrics (this process's default registry) into a new one."""

    def __init__(self, registry: object):
        self.registry = registry

    def collect(self) -> Iterator[object]:
        yield from self.registry.collect()  # type: ignore[attr-defined]


def registry(extra: Iterable[object] = ()) -> object:
    """A registry of every process's metrics (multiprocess mode) or this process's, plus ``extra``
    collectors (the scrape-time one of gateway/metrics/collector.py)."""
    from prometheus_client import REGISTRY, CollectorRegistry

    from gateway.metrics import catalogue  # noqa: F401 - its metrics must exist before a scrape

    found = CollectorRegistry(auto_describe=False)
    path = multiproc_dir()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(found, path=str(path))  # type: ignore[no-untyped-call]
    else:
        found.register(_Delegate(REGISTRY))  # type: ignore[arg-type]
    for collector in extra:
        found.register(collector)  # type: ignore[arg-type]
    return found


def render(found: object) -> tuple[bytes, str]:
    """The text format of everything in ``found`` (a registry made by ``registry``), and its
    content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return bytes(generate_latest(found)), CONTENT_TYPE_LATEST  # type: ignore[arg-type]


def serve(port: int, host: str) -> None:
    """Serve this process's metrics (or every process's, in multiprocess mode) on ``port`` in a
    background thread: ``hl7gw mllp`` and ``hl7gw worker`` run alone."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=registry())  # type: ignore[arg-type]
    log.info("metrics on http://%s:%d/metrics", host, port)
