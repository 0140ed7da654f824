"""The batch worker: event jobs taken several at a time, applied in one transaction, with
RQ's own registries and job hashes left exactly as RQ's per-job path leaves them."""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import current_timestamp, utcformat
from rq.utils import now as rq_now
from rq.worker import SimpleWorker
from sqlalchemy import func, select

from gatehouse.extensions import db, redis_client
from gatehouse.models import Event, EventAttempt, Source, new_id, utcnow
from gatehouse.queue import enqueue_events, get_queue
from gatehouse.queue.worker import BATCH_TTL, GatehouseWorker, TakenJob, batchable
from tests.conftest import make_app
from tests.handlers.test_tag_ordering import (
    TAGS,
    Spec,
    latest_assertion_oracle,
    outcome,
    store,
)
from tests.helpers import create_source


def burst(app: Flask, batch_size: int = 10) -> GatehouseWorker:
    worker = GatehouseWorker(app, batch_size=batch_size)
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
    return worker


def scenario(rng: random.Random, contacts: int, per_contact: int) -> dict[str, list[Spec]]:
    out = {}
    for c in range(contacts):
        specs = [Spec("member.provision", 0, tags=("101",))]
        for second in range(1, per_contact):
            kind = rng.choice(["contact.tags_set", "contact.tag_added", "contact.tag_removed"])
            if kind == "contact.tags_set":
                specs.append(Spec(kind, second, tags=tuple(rng.sample(TAGS, rng.randint(0, 3)))))
            else:
                specs.append(Spec(kind, second, tag=rng.choice(TAGS)))
        out[f"batch{c}-{rng.randrange(10**6)}"] = specs
    return out


def broken_event(tag: str | None = None) -> str:
    """A tag event whose payload names no tag (a poison event) unless `tag` is given."""
    if db.session.execute(select(Source.id).where(Source.slug == "bridge")).scalar() is None:
        create_source("bridge", "standard", crm="keap")
    source_id = db.session.execute(select(Source.id).where(Source.slug == "bridge")).scalar_one()
    event_id = new_id()
    payload: dict[str, Any] = {"type": "contact.tag_added", "contact": {"id": "p1", "crm": "keap"}}
    if tag is not None:
        payload["tag"] = tag
    db.session.add(
        Event(
            id=event_id,
            source_id=source_id,
            external_id=f"msg_{event_id}",
            type="contact.tag_added",
            occurred_at=utcnow(),
            status="queued",
            payload=payload,
            contact_key="keap:p1",
        )
    )
    db.session.commit()
    return event_id


def test_a_shuffled_burst_with_redeliveries_ends_like_in_order_processing(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gatehouse")  # the per-job line is built at INFO
    rng = random.Random(7)
    plan = scenario(rng, contacts=8, per_contact=12)
    ids = [event_id for cid, specs in plan.items() for event_id in store(specs, cid)]
    order = list(ids)
    rng.shuffle(order)
    assert enqueue_events(order)
    redelivered = rng.sample(ids, 10)
    assert enqueue_events(redelivered)  # the same job id queued again runs again

    worker = burst(app, batch_size=16)

    messages = [r.getMessage() for r in caplog.records]
    assert "batch.fallback" not in messages  # every batch committed as one
    assert messages.count("job.processed") == len(order) + len(redelivered)
    for contact_id, specs in plan.items():
        tags, access = outcome(contact_id)
        assert tags == latest_assertion_oracle(specs), contact_id
        assert access is not None
    statuses = set(db.session.execute(select(Event.status)).scalars())
    assert statuses <= {"processed", "skipped"}
    # One attempt per run: a redelivered event ran twice, every other event once.
    attempts = dict(db.session.execute(select(Event.id, Event.attempts)).all())
    assert {i: attempts[i] for i in ids} == {i: 2 if i in redelivered else 1 for i in ids}
    rows = db.session.execute(select(func.count()).select_from(EventAttempt)).scalar_one()
    assert rows == len(ids) + len(redelivered)
    db.session.rollback()

    queue = get_queue(app)
    assert queue.count == 0
    assert queue.started_job_registry.get_job_ids() == []
    assert sorted(queue.finished_job_registry.get_job_ids()) == sorted(ids)
    client = redis_client.get(app)
    assert client.llen(queue.intermediate_queue_key) == 0
    for job in Job.fetch_many(ids, connection=client):
        assert job is not None
        assert job.get_status() == JobStatus.FINISHED
        assert job.worker_name == worker.name
        result = job.latest_result()
        assert result is not None and result.type == Result.Type.SUCCESSFUL
        assert result.return_value["event"] == job.id
    # RQ's own counters for the worker are kept per job, as its per-job path keeps them.
    assert int(client.hget(worker.key, "successful_job_count") or 0) == len(order) + 10


# Fields that differ between two runs of the same kind of job whatever the worker does.
VARYING = {
    "created_at",
    "enqueued_at",
    "started_at",
    "ended_at",
    "last_heartbeat",
    "data",
    "description",
    "worker_name",
}


def _job_hash(client: Any, job_id: str) -> dict[str, bytes]:
    raw = client.hgetall(f"rq:job:{job_id}")
    return {k.decode(): v for k, v in raw.items()}


@pytest.mark.parametrize("taken_second", [False, True], ids=["dequeued-by-rq", "taken-with-it"])
def test_a_batch_leaves_rq_structures_as_stock_rq_leaves_them(
    app: Flask, taken_second: bool
) -> None:
    """Field by field (modulo timestamps), so an RQ upgrade that changes the format fails.
    Both for the job RQ's own loop dequeued and for one `_take_more` took with it, which
    reads only part of the job's hash."""
    client = redis_client.get(app)
    queue = get_queue(app)
    stock_id, batch_id = broken_event(tag="101"), broken_event(tag="102")

    # Keys RQ expires along with a finished job, made to exist so their expiry shows.
    dependents = {i: Job.dependents_key_for(i) for i in (stock_id, batch_id)}
    dependencies = {i: Job(i, connection=client).dependencies_key for i in (stock_id, batch_id)}
    for key in (*dependents.values(), *dependencies.values()):
        client.sadd(key, "nothing")

    assert enqueue_events([stock_id])
    stock = SimpleWorker([queue], connection=client)
    with app.app_context():
        stock.work(burst=True, with_scheduler=False, logging_level="WARNING")
    lead = [broken_event(tag="103")] if taken_second else []
    assert enqueue_events([*lead, batch_id])
    batch = burst(app, batch_size=10)

    a, b = _job_hash(client, stock_id), _job_hash(client, batch_id)
    assert set(a) == set(b)
    assert {k: v for k, v in a.items() if k not in VARYING} == {
        k: v for k, v in b.items() if k not in VARYING
    }
    assert b["worker_name"].decode() == batch.name
    for field in ("started_at", "ended_at", "last_heartbeat"):
        assert b[field]
    # The same expiry (the job's result_ttl) on the job hash and the result stream.
    assert abs(client.ttl(f"rq:job:{stock_id}") - client.ttl(f"rq:job:{batch_id}")) <= 2
    assert abs(client.ttl(Result.get_key(stock_id)) - client.ttl(Result.get_key(batch_id))) <= 2
    for keys in (dependents, dependencies):
        assert client.ttl(keys[batch_id]) > 0
        assert abs(client.ttl(keys[stock_id]) - client.ttl(keys[batch_id])) <= 2

    # RQ's own readers see the same thing.
    for job_id in (stock_id, batch_id):
        job = Job.fetch(job_id, connection=client)
        assert job.get_status() == JobStatus.FINISHED
        result = job.latest_result()
        assert result is not None and result.type == Result.Type.SUCCESSFUL
        assert result.return_value["status"] == "skipped"  # no member linked: kept on contact
        assert job_id in queue.finished_job_registry
        assert job_id not in queue.started_job_registry
        assert job.get_executions() == []
    finished = client.zrange(queue.finished_job_registry.key, 0, -1, withscores=True)
    scores = {m.decode(): s for m, s in finished}
    assert abs(scores[stock_id] - scores[batch_id]) <= 2
    # Nothing else was left: no execution hash, no execution registry, no intermediate entry.
    assert client.keys("rq:execution:*") == []
    assert client.keys("rq:executions:*") == []
    assert client.llen(queue.intermediate_queue_key) == 0
    for name, count in ((stock.key, 1), (batch.key, 1 + len(lead))):
        assert int(client.hget(name, "successful_job_count") or 0) == count
        assert float(client.hget(name, "total_working_time") or 0) > 0


def _started(client: Any, worker: SimpleWorker, job_id: str) -> dict[str, Any]:
    """Everything RQ keeps about a started job, with each expiry as seconds from now."""
    queue_key = get_queue().started_job_registry.key
    entries = [m.decode() for m in client.zrange(queue_key, 0, -1)]
    [composite] = [m for m in entries if m.startswith(job_id)]
    execution_id = composite.split(":", 1)[1]
    execution_key = f"rq:execution:{composite}"
    index_key = f"rq:executions:{job_id}"
    execution = {k.decode(): v.decode() for k, v in client.hgetall(execution_key).items()}
    return {
        "job": _job_hash(client, job_id),
        "job_ttl": client.ttl(f"rq:job:{job_id}"),
        "execution": execution,
        "execution_ttl": client.ttl(execution_key),
        "wip_expires_in": client.zscore(queue_key, composite) - current_timestamp(),
        "index": [m.decode() for m in client.zrange(index_key, 0, -1)],
        "index_expires_in": client.zscore(index_key, execution_id) - current_timestamp(),
        "index_ttl": client.ttl(index_key),
        "in_worker_set": client.sismember(worker.executions_key, composite),
        "worker_set_ttl": client.ttl(worker.executions_key),
        "execution_id": execution_id,
    }


def test_a_started_batch_leaves_rq_structures_as_stock_rq_leaves_them(app: Flask) -> None:
    """What a SIGKILL leaves, and what RQ's cleanup and readers then go by: the same keys,
    fields and values as RQ's own prepare_execution + prepare_job_execution, except that a
    batch's execution lives BATCH_TTL (heartbeats extend it) where stock RQ's lives for the
    job's timeout plus a minute."""
    client = redis_client.get(app)
    queue = get_queue(app)
    stock_id, batch_id = broken_event(tag="101"), broken_event(tag="102")
    assert enqueue_events([stock_id, batch_id])
    for job_id in (stock_id, batch_id):
        client.expire(f"rq:job:{job_id}", 3600)  # a running job's hash must not expire
    stock = SimpleWorker([queue], connection=client)
    batch = GatehouseWorker(app, batch_size=10)
    with app.app_context():
        for worker in (stock, batch):
            worker.register_birth()
        taken = queue.dequeue_any([queue], None, connection=client)
        assert taken is not None and taken[0].id == stock_id
        stock.prepare_execution(taken[0])
        stock.prepare_job_execution(taken[0], remove_from_intermediate_queue=True)
        taken = queue.dequeue_any([queue], None, connection=client)
        assert taken is not None and taken[0].id == batch_id
        [execution] = batch._start_batch([taken[0]], queue)

    a, b = _started(client, stock, stock_id), _started(client, batch, batch_id)
    assert set(a["job"]) == set(b["job"])
    assert {k: v for k, v in a["job"].items() if k not in VARYING} == {
        k: v for k, v in b["job"].items() if k not in VARYING
    }
    assert b["job"]["status"] == b"started" and b["job"]["worker_name"].decode() == batch.name
    assert b["job"]["started_at"] == b["job"]["last_heartbeat"]
    assert a["job_ttl"] == b["job_ttl"] == -1  # persisted while it runs
    assert set(a["execution"]) == set(b["execution"])
    assert b["execution"]["id"] == b["execution_id"] == execution.id
    assert b["execution"]["job_id"] == batch_id
    assert b["execution"]["worker_name"] == batch.name
    assert float(b["execution"]["created_at"]) == execution.created_at.timestamp()
    assert b["execution"]["last_heartbeat"] == b["execution"]["created_at"]
    assert a["index"] == [a["execution_id"]] and b["index"] == [b["execution_id"]]
    assert a["in_worker_set"] and b["in_worker_set"]
    # Stock's expiries all follow its heartbeat TTL, the batch's follow BATCH_TTL, alike.
    ttl = a["execution_ttl"]
    for started, own in ((a, ttl), (b, BATCH_TTL)):
        assert own - 2 <= started["execution_ttl"] <= own
        assert own - 2 <= started["wip_expires_in"] <= own
        assert own + 58 <= started["index_expires_in"] <= own + 60
        assert own + 58 <= started["index_ttl"] <= own + 60
    assert BATCH_TTL + 58 <= b["worker_set_ttl"] <= BATCH_TTL + 60
    assert client.llen(queue.intermediate_queue_key) == 0

    # RQ's readers see it started, by this worker.
    job = Job.fetch(batch_id, connection=client)
    assert job.get_status() == JobStatus.STARTED and job.worker_name == batch.name
    assert [e.id for e in job.get_executions()] == [execution.id]
    assert batch_id in queue.started_job_registry.get_job_ids()


def test_a_poison_event_in_a_batch_fails_alone(app: Flask) -> None:
    assert app.config["GATEHOUSE_RETRY_INTERVALS"] == []  # its first failure is its last
    good = [broken_event(tag=str(100 + n)) for n in range(6)]
    poison = broken_event()
    assert enqueue_events([*good[:3], poison, *good[3:]])

    burst(app, batch_size=10)

    db.session.rollback()
    rows = {e.id: e for e in db.session.execute(select(Event)).scalars()}
    assert rows[poison].status == "failed" and rows[poison].attempts == 1
    assert (rows[poison].last_error or "").startswith("KeyError")
    for event_id in good:
        assert rows[event_id].status == "skipped" and rows[event_id].attempts == 1
        assert rows[event_id].last_error is None
    db.session.rollback()
    queue = get_queue(app)
    assert queue.failed_job_registry.get_job_ids() == [poison]
    assert sorted(queue.finished_job_registry.get_job_ids()) == sorted(good)
    job = Job.fetch(poison, connection=redis_client.get(app))
    assert job.get_status() == JobStatus.FAILED
    result = job.latest_result()
    assert result is not None and result.type == Result.Type.FAILED
    assert "KeyError" in (result.exc_string or "")


def test_a_job_deleted_while_its_batch_ran_is_skipped_when_the_batch_falls_back(
    app: Flask,
) -> None:
    """A job `_take_more` read in part is read again in full before RQ's own path runs it;
    one deleted meanwhile is skipped, as RQ's dequeue skips one, and the rest still run."""
    assert app.config["GATEHOUSE_RETRY_INTERVALS"] == []
    good = [broken_event(tag=str(100 + n)) for n in range(3)]
    poison = broken_event()
    assert enqueue_events([good[0], poison, *good[1:]])
    client = redis_client.get(app)

    class DeletingOne(GatehouseWorker):
        def _start_batch(self, jobs: list[Job], queue: Any) -> Any:
            executions = super()._start_batch(jobs, queue)
            client.delete(Job.key_for(good[1]))  # taken with the first, read in part
            return executions

    worker = DeletingOne(app, batch_size=10)
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")

    db.session.rollback()
    rows = {e.id: e for e in db.session.execute(select(Event)).scalars()}
    assert rows[poison].status == "failed"
    # The one after the deleted job ran too.
    assert [rows[g].status for g in (good[0], good[2])] == ["skipped", "skipped"]
    assert rows[good[1]].status == "queued"  # never run; the sweep queues it again
    db.session.rollback()
    queue = get_queue(app)
    assert sorted(queue.finished_job_registry.get_job_ids()) == sorted([good[0], good[2]])
    assert queue.failed_job_registry.get_job_ids() == [poison]


def test_a_poison_event_is_retried_then_failed_while_the_rest_of_its_batch_finishes(
    app: Flask, database_url: str, redis_server: Any
) -> None:
    retrying = make_app(database_url, redis_server.url, GATEHOUSE_RETRY_INTERVALS=[0, 0])
    good = [broken_event(tag=str(100 + n)) for n in range(4)]
    poison = broken_event()
    assert enqueue_events([poison, *good], retrying)

    burst(retrying, batch_size=10)

    db.session.rollback()
    rows = {e.id: e for e in db.session.execute(select(Event)).scalars()}
    assert rows[poison].status == "failed"
    assert rows[poison].attempts == 3  # the first try and two retries
    assert all(rows[g].status == "skipped" and rows[g].attempts == 1 for g in good)
    db.session.rollback()
    assert get_queue(retrying).failed_job_registry.get_job_ids() == [poison]


def test_an_abandoned_batch_is_rerun_once_its_short_ttl_expires(
    app: Flask, database_url: str, redis_server: Any
) -> None:
    """A worker SIGKILLed mid-batch: its jobs sit in the started registry with no heartbeat.

    Simulated by starting a batch and never finishing it (what a kill leaves in Redis; the
    database transaction was never committed). RQ's own registry cleanup, run by any
    worker's maintenance, re-queues them once BATCH_TTL has passed.
    """
    retrying = make_app(database_url, redis_server.url, GATEHOUSE_RETRY_INTERVALS=[0])
    ids = [broken_event(tag=str(100 + n)) for n in range(3)]
    assert enqueue_events(ids, retrying)
    queue = get_queue(retrying)
    dead = GatehouseWorker(retrying, batch_size=10)
    with retrying.app_context():
        first = queue.dequeue_any([queue], None, connection=queue.connection)
        assert first is not None
        jobs = [first[0], *dead._take_more(queue, 9)]
        dead._start_batch(jobs, queue)
    assert sorted(queue.started_job_registry.get_job_ids()) == sorted(ids)
    expires = [
        s
        for _m, s in queue.connection.zrange(queue.started_job_registry.key, 0, -1, withscores=True)
    ]
    assert max(expires) <= current_timestamp() + BATCH_TTL + 1

    with retrying.app_context():
        # What the next maintenance tick does once the entries expired.
        queue.started_job_registry.cleanup(timestamp=current_timestamp() + BATCH_TTL + 1)
    assert sorted(queue.get_job_ids()) == sorted(ids)  # retried at once (interval 0)

    burst(retrying, batch_size=10)

    db.session.rollback()
    rows = {e.id: e for e in db.session.execute(select(Event)).scalars()}
    # The abandoned run is counted (on_job_failure), then the re-run applies the event.
    assert all(rows[i].status == "skipped" and rows[i].attempts == 2 for i in ids)
    db.session.rollback()
    assert sorted(queue.finished_job_registry.get_job_ids()) == sorted(ids)
    assert queue.started_job_registry.get_job_ids() == []


def test_the_batch_heartbeat_keeps_a_long_batch_alive(app: Flask, monkeypatch: Any) -> None:
    from gatehouse.queue import worker as worker_module

    monkeypatch.setattr(worker_module, "HEARTBEAT_EVERY", 0.2)
    ids = [broken_event(tag="101")]
    assert enqueue_events(ids)
    queue = get_queue(app)
    w = GatehouseWorker(app, batch_size=10)
    with app.app_context():
        first = queue.dequeue_any([queue], None, connection=queue.connection)
        assert first is not None
        executions = w._start_batch([first[0]], queue)
        key, member = queue.started_job_registry.key, executions[0].composite_key
        before = queue.connection.zscore(key, member)
        with w._heartbeats([first[0]], executions):
            time.sleep(1.3)
        after = queue.connection.zscore(key, member)
    assert before is not None and after is not None and after >= before + 1
    assert timedelta(seconds=after - time.time()) <= timedelta(seconds=BATCH_TTL + 1)


def test_more_jobs_are_taken_as_rq_dequeue_takes_one(app: Flask) -> None:
    """Moved to RQ's intermediate list in queue order (RQ's cleanup requeues them from
    there if the worker dies before it starts them), the rest left queued."""
    client = redis_client.get(app)
    queue = get_queue(app)
    ids = [broken_event(tag=str(n)) for n in range(3)]
    assert enqueue_events(ids)
    worker = GatehouseWorker(app, batch_size=10)

    taken = worker._take_more(queue, 2)

    assert [job.id for job in taken] == ids[:2]
    # Read in part, but with all the batch path reads: each still goes in the batch.
    assert all(isinstance(job, TakenJob) and batchable(job) for job in taken)
    assert [job.args for job in taken] == [(i,) for i in ids[:2]]
    assert {job.origin for job in taken} == {queue.name}
    assert [x.decode() for x in client.lrange(queue.intermediate_queue_key, 0, -1)] == ids[:2]
    assert queue.get_job_ids() == ids[2:]
    assert worker._take_more(queue, 5)[0].id == ids[2]
    assert worker._take_more(queue, 5) == []


def test_a_batch_that_is_not_full_waits_once_for_jobs_arriving_meanwhile(app: Flask) -> None:
    client = redis_client.get(app)
    queue = get_queue(app)
    # Two queued: a job waited behind the first, so events are streaming in.
    early = [broken_event(tag="100"), broken_event(tag="101")]
    assert enqueue_events(early)
    late_ids: list[str] = []

    def enqueue_once_the_first_is_taken() -> None:
        deadline = time.monotonic() + 5
        while not client.llen(queue.intermediate_queue_key) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.1)  # well after the worker's first look for more, well within 3 s
        with app.app_context():
            # Stored now, not before: the burst worker relays what is stored before it
            # dequeues.
            late_ids.append(broken_event(tag="102"))
            enqueue_events(late_ids)
            db.session.remove()

    late = threading.Thread(target=enqueue_once_the_first_is_taken)
    late.start()
    # The wait counts from the first job's enqueue: long enough that the worker's own
    # start-up on a loaded machine cannot use it up before the late job comes.
    worker = GatehouseWorker(app, batch_size=10, linger_ms=3000)
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
    late.join()

    attempts = db.session.execute(
        select(EventAttempt.event_id, EventAttempt.started_at).order_by(EventAttempt.event_id)
    ).all()
    assert {event_id for event_id, _ in attempts} == {*early, *late_ids}
    assert len(late_ids) == 1
    # One batch: one transaction, one start time for all three attempts.
    assert len({started for _, started in attempts}) == 1


def test_a_batch_whose_first_job_waited_in_the_queue_does_not_wait_again(app: Flask) -> None:
    # Two queued (a stream), the first for longer than the linger already: behind a slow
    # batch, say. Its wait counts from its enqueue, so the batch starts at once.
    events = [broken_event(tag="100"), broken_event(tag="101")]
    assert enqueue_events(events)
    client = redis_client.get(app)
    first = Job.fetch(get_queue(app).job_ids[0], connection=client)
    client.hset(first.key, "enqueued_at", utcformat(rq_now() - timedelta(seconds=10)))
    worker = GatehouseWorker(app, batch_size=10, linger_ms=3000)
    takes: list[int] = []
    take = worker.batch_writes.take

    def counted(*args: Any) -> list[str]:
        takes.append(1)
        return take(*args)

    worker.batch_writes.take = counted  # type: ignore[method-assign]

    began = time.monotonic()
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
    took = time.monotonic() - began

    attempts = db.session.execute(select(EventAttempt.event_id, EventAttempt.started_at)).all()
    assert {event_id for event_id, _ in attempts} == set(events)
    assert len({started for _, started in attempts}) == 1  # one batch
    assert took < 2.0, f"the batch waited {took:.2f} s more"
    # No wait, so no second look: the first take had just emptied the queue.
    assert len(takes) == 1


def test_a_lone_job_does_not_wait_for_more(app: Flask) -> None:
    # Nothing queued behind it (a quiet site): waiting would only delay its member's access.
    event = broken_event(tag="101")
    assert enqueue_events([event])
    worker = GatehouseWorker(app, batch_size=10, linger_ms=3000)

    began = time.monotonic()
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
    took = time.monotonic() - began

    status = db.session.execute(select(Event.status).where(Event.id == event)).scalar_one()
    assert status in ("processed", "skipped")  # applied, whatever its contact's member
    assert took < 2.0, f"a lone job waited {took:.2f} s"


def test_heartbeats_from_rqs_loop_are_sent_at_most_once_a_gap(app: Flask) -> None:
    from gatehouse.queue.worker import HEARTBEAT_MIN_GAP

    worker = GatehouseWorker(app)
    worker.register_birth()
    r = redis_client.get(app)
    try:
        r.persist(worker.key)
        worker.last_heartbeat = rq_now() - timedelta(seconds=HEARTBEAT_MIN_GAP + 1)
        worker.heartbeat()
        beat = r.hget(worker.key, "last_heartbeat")
        assert beat is not None and beat.decode() == utcformat(worker.last_heartbeat)
        assert r.ttl(worker.key) == worker.worker_ttl + 60  # what RQ's heartbeat sets

        r.persist(worker.key)
        worker.heartbeat()  # straight after: not sent
        assert r.hget(worker.key, "last_heartbeat") == beat
        assert r.ttl(worker.key) == -1

        worker.heartbeat(timeout=90)  # a beat with its own timeout always goes
        assert r.ttl(worker.key) == 90
    finally:
        worker.register_death()
