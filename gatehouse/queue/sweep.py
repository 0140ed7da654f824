"""The outbox sweep: queue what the database holds but Redis does not.

Events are left behind when no relay ran (`received`: Redis down, no worker running), when
Redis lost its data or a process died between the relay's claim and its enqueue (`queued`
with no job), or when a
worker died mid-job (`processing` past the job timeout). The sweep is safe to run from
several workers at once: a Redis lock keeps it to one at a time, and jobs are idempotent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

import redis
from flask import Flask, current_app
from rq import Queue
from rq.registry import ScheduledJobRegistry
from sqlalchemy import or_, select, update

from gatehouse.extensions import db, redis_client
from gatehouse.models import Event, utcnow
from gatehouse.queue.enqueue import enqueue_events, get_queue
from gatehouse.queue.relay import relay_all

log = logging.getLogger("gatehouse.queue")
LOCK_KEY = "gatehouse:sweep-lock"
# The lock only saves duplicate work (claims are atomic, jobs idempotent), so it is short: a
# worker killed mid-sweep (chaos run: SIGKILL during maintenance) used to keep every sweep
# away for 300 s, and lost events waited that long. A sweep takes well under a second.
LOCK_SECONDS = 30
BATCH = 1000
# RQ job states that mean the job will still run (or is running).
# A retry due this long ago should have been moved to the queue by RQ's scheduler.
SCHEDULER_SLACK = 60


@dataclass
class SweepResult:
    received: int = 0
    lost: int = 0
    stuck: int = 0
    errors: list[str] = field(default_factory=list)
    skipped_locked: bool = False

    @property
    def total(self) -> int:
        return self.received + self.lost + self.stuck


def _jobs_alive(client: redis.Redis, queue: Queue, ids: list[str]) -> list[bool]:
    """Whether RQ will still run each job: its hash says so *and* it sits where that state
    lives. A job hash can survive while its place in the queue list does not (a worker or
    Redis dying mid-move), and a retry can sit in the scheduled registry with no scheduler
    left to move it; such jobs would otherwise wait forever.
    """
    scheduled_key = ScheduledJobRegistry(queue=queue).key
    with client.pipeline(transaction=True) as pipe:
        for event_id in ids:
            pipe.hget(f"rq:job:{event_id}", "status")
            pipe.lpos(queue.key, event_id)
            pipe.lpos(queue.intermediate_queue_key, event_id)
            pipe.zscore(scheduled_key, event_id)
        answers = pipe.execute()
    overdue = time.time() - SCHEDULER_SLACK
    alive = []
    for i in range(len(ids)):
        state, in_queue, in_intermediate, due = answers[4 * i : 4 * i + 4]
        if state == b"queued":
            alive.append(in_queue is not None or in_intermediate is not None)
        elif state == b"scheduled":
            alive.append(due is not None and float(due) > overdue)
        else:
            alive.append(state in (b"started", b"deferred"))
    return alive


def sweep(app: Flask | None = None, *, grace_seconds: int | None = None) -> SweepResult:
    app = app or current_app
    client = redis_client.get(app)
    result = SweepResult()
    grace = app.config["GATEHOUSE_SWEEP_GRACE"] if grace_seconds is None else grace_seconds
    job_timeout = app.config["GATEHOUSE_JOB_TIMEOUT"]
    lock = client.lock(LOCK_KEY, timeout=LOCK_SECONDS, blocking=False)
    if not lock.acquire():
        log.info("sweep.skipped_locked")
        result.skipped_locked = True
        return result
    try:
        # Received events are the relay's: taken the same way, so a relay running at the
        # same time never queues one twice.
        try:
            result.received = relay_all(app)
        except redis.RedisError:
            result.errors.append("Redis refused the jobs; try again when it answers")
            return result
        now = utcnow()
        queued_before = now - timedelta(seconds=grace)
        processing_before = now - timedelta(seconds=job_timeout + 60)
        last = ""
        while True:
            rows = db.session.execute(
                select(Event.id, Event.status)
                .where(
                    Event.id > last,
                    or_(
                        (Event.status == "queued") & (Event.updated_at < queued_before),
                        (Event.status == "processing") & (Event.updated_at < processing_before),
                    ),
                )
                .order_by(Event.id)
                .limit(BATCH)
            ).all()
            db.session.rollback()
            if not rows:
                break
            last = rows[-1][0]
            states = _jobs_alive(client, get_queue(app), [r[0] for r in rows])
            to_queue: list[str] = []
            for (event_id, status), job_alive in zip(rows, states, strict=True):
                if status == "queued" and not job_alive:
                    to_queue.append(event_id)
                    result.lost += 1
                elif status == "processing":
                    # Past the job timeout: whatever RQ says, the worker that took it died.
                    to_queue.append(event_id)
                    result.stuck += 1
            if to_queue and not enqueue_events(to_queue, app):
                result.errors.append("Redis refused the jobs; try again when it answers")
                break
            if to_queue:
                db.session.execute(
                    update(Event)
                    .where(
                        Event.id.in_(to_queue),
                        Event.status.in_(("processing", "queued")),
                    )
                    .values(status="queued")
                )
                db.session.commit()
    finally:
        try:
            lock.release()
        except redis.RedisError:
            pass
        db.session.remove()
    if result.total:
        log.warning(
            "sweep.requeued",
            extra={"received": result.received, "lost": result.lost, "stuck": result.stuck},
        )
    return result
