"""gunicorn settings for `web` (Procfile): the worker class, and Prometheus multiprocess mode.

Each gunicorn worker is its own process with its own counters. With
PROMETHEUS_MULTIPROC_DIR set, prometheus-client writes every process's counts to files in
that directory and GET /metrics (served by any worker) adds them up. The RQ worker
processes must see the same directory (put it in `.env`) so the processing counts and lag
they observe are scraped too. Empty the directory when the whole stack is (re)started.
"""

from __future__ import annotations

import os
from typing import Any

from gatehouse.config import INSTANCE_DIR
from gatehouse.serving import WEB_WORKERS, WORKER_CLASS

# gunicorn's sync worker, storing webhooks that arrive together in one commit and closing a
# finished connection without waiting for the client (gatehouse.serving).
worker_class = WORKER_CLASS
# A bigger host, or one that runs only the web tier, sets WEB_CONCURRENCY (or --workers).
# Read here too: gunicorn takes WEB_CONCURRENCY as its default, which this file overrides.
workers = int(os.environ.get("WEB_CONCURRENCY") or WEB_WORKERS)

# A default that works for `make run`: every process started from this checkout agrees.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(INSTANCE_DIR / "prometheus"))
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    # Drops the dead worker's live gauges; its counters stay counted.
    multiprocess.mark_process_dead(worker.pid)
