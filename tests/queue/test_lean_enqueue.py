"""The lean enqueue writes exactly what RQ writes, and RQ's own tools read it.

`enqueue_events` replays commands recorded from RQ (`JobTemplate`) instead of building a
`Job` per event. If an RQ upgrade changes what a job looks like in Redis, these tests fail.
"""

from __future__ import annotations

import pytest
from flask import Flask
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from gatehouse.extensions import redis_client
from gatehouse.queue import enqueue_events, get_queue
from gatehouse.queue.enqueue import TIME_FIELDS, job_data

TIMES = {b"created_at", b"enqueued_at"}


def _rq_enqueue(app: Flask, event_ids: list[str]) -> None:
    """What the code did before: RQ's own enqueue_many."""
    queue = get_queue(app)
    with queue.connection.pipeline() as pipe:
        queue.enqueue_many([job_data(e, app) for e in event_ids], pipeline=pipe)
        pipe.execute()


def _snapshot(app: Flask, event_ids: list[str]) -> dict[str, object]:
    client = redis_client.get(app)
    queue = get_queue(app)
    return {
        "jobs": {e: client.hgetall(f"rq:job:{e}") for e in event_ids},
        "ttls": {e: client.ttl(f"rq:job:{e}") for e in event_ids},
        "queue": client.lrange(queue.key, 0, -1),
        "queues": client.smembers("rq:queues"),
        "keys": sorted(client.keys("*")),
    }


@pytest.mark.parametrize("retries", [[], [10, 60]])
def test_the_job_hash_and_queue_entry_are_field_for_field_what_rq_writes(
    app: Flask, retries: list[int]
) -> None:
    app.config["GATEHOUSE_RETRY_INTERVALS"] = retries  # before the template is recorded
    assert {f.encode() for f in TIME_FIELDS} == TIMES
    ids = ["01aaaaaaaaaaaaaaaaaaaaaaaa", "01bbbbbbbbbbbbbbbbbbbbbbbb"]
    client = redis_client.get(app)

    _rq_enqueue(app, ids)
    by_rq = _snapshot(app, ids)
    client.flushall()
    assert enqueue_events(ids, app)
    ours = _snapshot(app, ids)

    for e in ids:
        rq_job, our_job = by_rq["jobs"][e], ours["jobs"][e]  # type: ignore[index]
        assert set(our_job) == set(rq_job)
        for field in rq_job:
            if field in TIMES:
                continue
            assert our_job[field] == rq_job[field], field
        for field in TIMES:
            assert our_job[field]  # a real time, in RQ's format (parsed below)
    for name in ("ttls", "queue", "queues", "keys"):
        assert ours[name] == by_rq[name], name


def test_rq_reads_the_jobs_and_a_real_worker_runs_them(app: Flask) -> None:
    from tests.helpers import run_worker

    ids = ["01cccccccccccccccccccccccc"]
    assert enqueue_events(ids, app)
    queue = get_queue(app)
    conn = redis_client.get(app)

    job = Job.fetch(ids[0], connection=conn)
    assert job.func_name == "gatehouse.handlers.jobs.process_event"
    assert job.args == (ids[0],)
    assert job.kwargs == {}
    assert job.get_status() == JobStatus.QUEUED
    assert job.origin == queue.name
    assert job.timeout == app.config["GATEHOUSE_JOB_TIMEOUT"]
    assert job.result_ttl == 600 and job.failure_ttl == 7 * 24 * 3600
    assert job.failure_callback is not None
    assert job.failure_callback.__name__ == "on_job_failure"
    assert job.created_at is not None and job.enqueued_at is not None
    assert queue.job_ids == ids
    assert Queue.all(connection=conn) == [queue]

    # The event does not exist in the database: the job runs and finishes (status "missing"),
    # and RQ's own registries record it as any job RQ enqueued itself.
    run_worker(app)
    job = Job.fetch(ids[0], connection=conn)
    assert job.get_status() == JobStatus.FINISHED
    assert ids[0] in FinishedJobRegistry(queue=queue).get_job_ids()
    assert ids[0] not in FailedJobRegistry(queue=queue).get_job_ids()
    assert queue.count == 0


def test_events_posted_are_queued_as_rq_jobs(app: Flask) -> None:
    """Several events in one call: one job each, in order, each with its own arguments."""
    ids = [f"01{c * 24}" for c in "defg"]
    assert enqueue_events(ids, app)
    conn = redis_client.get(app)
    assert get_queue(app).job_ids == ids
    for e in ids:
        assert Job.fetch(e, connection=conn).args == (e,)
