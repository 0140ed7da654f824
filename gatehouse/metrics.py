"""Prometheus metrics: what arrives, what the workers make of it, how late, and the cache.

Several gunicorn workers and RQ workers each count in their own process. With
PROMETHEUS_MULTIPROC_DIR set (to the same directory for web and worker processes on a host)
every process writes its counts to files there and `GET /metrics` sums them, so a scrape
that lands on any gunicorn worker answers for all of them. Without it (development, tests)
each process answers for itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from gatehouse.config import INSTANCE_DIR

# Decided before prometheus-client is imported (it reads the variable once, on import):
# web and worker processes started from this checkout then share one directory by default,
# so /metrics also counts what the workers did. Set it explicitly in production.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(INSTANCE_DIR / "prometheus"))
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

import redis  # noqa: E402
from flask import Blueprint, Flask, Response, current_app  # noqa: E402
from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from rq.registry import ScheduledJobRegistry  # noqa: E402
from sqlalchemy import select  # noqa: E402

from gatehouse.extensions import db  # noqa: E402
from gatehouse.models import Source  # noqa: E402

EVENTS_RECEIVED = Counter(
    "gatehouse_events_received", "Events stored from webhooks.", ["source", "type"]
)
EVENTS_PROCESSED = Counter(
    "gatehouse_events_processed",
    "Events a worker finished (status processed, skipped or unmatched).",
    ["source", "type", "status"],
)
EVENTS_FAILED = Counter(
    "gatehouse_events_failed", "Events that failed their last try.", ["source", "type"]
)
PROCESSING_LAG = Histogram(
    "gatehouse_processing_lag_seconds",
    "From receiving an event to finishing it.",
    ["source"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 6 * 3600),
)
WEBHOOK_GROUPS = Histogram(
    "gatehouse_webhook_group_requests",
    "Accepted webhooks a web worker stored together in one commit (gatehouse.webhooks.group).",
    buckets=(1, 2, 4, 8, 16),
)
CACHE_READS = Counter(
    "gatehouse_access_cache_reads", "Access answers read, by cache result.", ["result"]
)


def source_slug(source_id: int) -> str:
    """Looked up each time (a primary-key read): a cache could outlive a removed source."""
    found = db.session.execute(
        select(Source.slug).where(Source.id == source_id)
    ).scalar_one_or_none()
    return found or str(source_id)


def count_received(source: str, types: list[str]) -> None:
    for type_ in types:
        EVENTS_RECEIVED.labels(source, type_).inc()


def count_finished(
    source: str, event_type: str, status: str, received_at: datetime, now: datetime
) -> None:
    """Called in the worker once an event reached a final state."""
    if status == "failed":
        EVENTS_FAILED.labels(source, event_type).inc()
    else:
        EVENTS_PROCESSED.labels(source, event_type, status).inc()
    PROCESSING_LAG.labels(source).observe(max(0.0, (now - received_at).total_seconds()))


def count_cache(hit: bool) -> None:
    CACHE_READS.labels("hit" if hit else "miss").inc()


class QueueDepthCollector:
    """Read at scrape time from Redis, so it is right whichever process answers."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        from gatehouse.queue import get_queue

        depth = GaugeMetricFamily(
            "gatehouse_queue_depth", "Jobs waiting in the queue.", labels=["queue", "state"]
        )
        try:
            queue = get_queue(self.app)
            depth.add_metric([queue.name, "queued"], queue.count)
            scheduled = ScheduledJobRegistry(queue=queue).count
            depth.add_metric([queue.name, "scheduled"], scheduled)
        except redis.RedisError:
            return  # no Redis, no depth: the scrape itself must still answer
        yield depth


class _Combined:
    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def multiprocess_dir() -> str | None:
    """The directory, if this process's metrics really are written there.

    prometheus-client picks its mode once, on first import; if something imported it before
    the variable was set, this process counts in memory and must answer from memory.
    """
    from prometheus_client import values

    if values.ValueClass.__name__ != "MmapedValue":
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(app: Flask) -> bytes:
    path = multiprocess_dir()
    if path:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)
        return generate_latest(_Combined(registry, QueueDepthCollector(app)))
    return generate_latest(_Combined(REGISTRY, QueueDepthCollector(app)))


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    return Response(exposition(current_app), headers={"Content-Type": CONTENT_TYPE_LATEST})


def init_app(app: Flask) -> None:
    path = multiprocess_dir()
    if path:
        # prometheus-client writes one file per process here and refuses a missing directory.
        os.makedirs(path, exist_ok=True)
