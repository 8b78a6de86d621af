"""Prometheus metrics (prometheus-client), aggregated across worker processes when several run.

`profile-audit serve` sets PROMETHEUS_MULTIPROC_DIR before the workers start, so each process
writes its samples to a shared directory and `/metrics` adds them up.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

DELIVERIES = Counter(
    "profile_audit_deliveries",
    "Callback deliveries by command and outcome",
    ["command", "outcome"],
)
REPLY_SECONDS = Histogram(
    "profile_audit_reply_seconds",
    "Time from receiving a callback to sending the reply",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0),
)
BATCH_SIZE = Histogram(
    "profile_audit_commit_batch_size",
    "Deliveries committed together by one group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_SECONDS = Histogram(
    "profile_audit_commit_seconds",
    "Duration of one group commit (round trip, lock wait, insert, projections, fsync)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
LOCK_WAIT_SECONDS = Histogram(
    "profile_audit_append_lock_wait_seconds",
    "Time a batch waited for its writer's turn and for the append lock (the log head row)",
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
)
REJECTED = Counter(
    "profile_audit_rejected_deliveries",
    "Authenticated deliveries kept in rejected_deliveries as invalid",
)
EVENTS = Gauge(
    "profile_audit_events",
    "Events in the log (the head position)",
    multiprocess_mode="max",
)
PROJECTION_VERSION = Gauge(
    "profile_audit_projection_version",
    "Projection versions: the code's and the one its table was built with",
    ["projection", "source"],
    multiprocess_mode="max",
)
SSE_SUBSCRIBERS = Gauge(
    "profile_audit_stream_subscribers",
    "Open /events/stream connections",
    multiprocess_mode="livesum",
)


def observe_batch(size: int, seconds: float, lock_wait: float) -> None:
    """Record one group commit."""
    BATCH_SIZE.observe(size)
    BATCH_SECONDS.observe(seconds)
    LOCK_WAIT_SECONDS.observe(lock_wait)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus text format, summed over processes in multiprocess mode."""
    registry: Any = None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
