"""Prometheus metrics (docs/observability.md, "Metrics"): the catalogue of what is counted, label
values with a bound, the recorder the gateway's code calls (a no-op when HL7GW_METRICS is off),
the scrape-time collector of what Redis, the journal and the disk hold, and the exposition that
joins every process's values under ``hl7gw run``.

Nothing here imports ``prometheus_client`` until a recorder or an exposition is made, so a process
whose supervisor set ``PROMETHEUS_MULTIPROC_DIR`` gets multiprocess values from its first import.
"""

from __future__ import annotations

from gateway.metrics.recorder import NullRecorder, Recorder, configure, recorder

__all__ = ["NullRecorder", "Recorder", "configure", "recorder"]
