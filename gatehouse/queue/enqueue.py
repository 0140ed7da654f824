from __future__ import annotations

import logging
from collections.abc import Sequence

import redis
from flask import Flask, current_app
from rq import Callback, Queue, Retry

from gatehouse.extensions import redis_client

log = logging.getLogger("gatehouse.queue")

# Jobs are referenced by import path: the queue never imports the handlers.
PROCESS_EVENT = "gatehouse.handlers.jobs.process_event"
ON_FAILURE = "gatehouse.handlers.jobs.on_job_failure"
RECOMPUTE_MEMBERS = "gatehouse.handlers.jobs.recompute_members"


def get_queue(app: Flask | None = None) -> Queue:
    app = app or current_app
    queue = app.extensions.get("gatehouse.queue")
    if queue is None:
        queue = Queue(app.config["GATEHOUSE_QUEUE"], connection=redis_client.get(app))
        app.extensions["gatehouse.queue"] = queue
    return queue


def retry_policy(app: Flask | None = None) -> Retry | None:
    intervals: list[int] = (app or current_app).config["GATEHOUSE_RETRY_INTERVALS"]
    if not intervals:
        return None
    return Retry(max=len(intervals), interval=intervals)


def enqueue_events(event_ids: Sequence[str], app: Flask | None = None) -> bool:
    """Queue one job per event (job id = event id) in one round trip.

    Returns False when Redis cannot be reached: the events stay in the database and the
    sweeper queues them later. Never raises for a Redis outage.
    """
    if not event_ids:
        return True
    app = app or current_app
    queue = get_queue(app)
    retry = retry_policy(app)
    timeout = app.config["GATEHOUSE_JOB_TIMEOUT"]
    jobs = [
        Queue.prepare_data(
            PROCESS_EVENT,
            args=(event_id,),
            job_id=event_id,
            timeout=timeout,
            retry=retry,
            on_failure=Callback(ON_FAILURE),
            result_ttl=600,
            failure_ttl=7 * 24 * 3600,
        )
        for event_id in event_ids
    ]
    try:
        with queue.connection.pipeline() as pipe:
            queue.enqueue_many(jobs, pipeline=pipe)
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("queue.enqueue_failed", extra={"events": len(event_ids), "error": str(exc)})
        return False
    return True


def enqueue_call(func: str, *args: object, job_id: str | None = None, timeout: int = 3600) -> str:
    """Queue a maintenance job (recompute, replay); raises if Redis is down."""
    job = get_queue().enqueue(func, *args, job_id=job_id, job_timeout=timeout, result_ttl=3600)
    return str(job.id)
