"""The worker: RQ's SimpleWorker (no fork per job) running inside the app context.

Jobs run in the worker process itself, so the app, its database pool and its Redis
connection are set up once, not per job. Maintenance (RQ's registry cleanup plus our
sweep) runs every GATEHOUSE_SWEEP_INTERVAL seconds, also while idle.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask
from rq.worker import SimpleWorker
from sqlalchemy.exc import SQLAlchemyError

from gatehouse.extensions import redis_client
from gatehouse.queue.enqueue import get_queue
from gatehouse.queue.grace import recompute_due
from gatehouse.queue.sweep import sweep

log = logging.getLogger("gatehouse.queue")


class GatehouseWorker(SimpleWorker):
    def __init__(self, app: Flask, **kwargs: Any) -> None:
        self.app = app
        interval = int(app.config["GATEHOUSE_SWEEP_INTERVAL"])
        kwargs.setdefault("maintenance_interval", interval)
        super().__init__([get_queue(app)], connection=redis_client.get(app), **kwargs)

    @property
    def dequeue_timeout(self) -> int:
        # Wake up at least once per maintenance interval so the sweep runs while idle.
        return max(1, min(self.worker_ttl - 15, int(self.maintenance_interval)))

    def work(self, *args: Any, **kwargs: Any) -> bool:
        with self.app.app_context():
            return bool(super().work(*args, **kwargs))

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        try:
            sweep(self.app)
        except redis.RedisError as exc:
            log.warning("sweep.failed", extra={"error": str(exc)})
        try:
            recompute_due(self.app)
        except (redis.RedisError, SQLAlchemyError) as exc:
            log.warning("grace.failed", extra={"error": str(exc)})
