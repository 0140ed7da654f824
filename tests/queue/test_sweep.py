"""The outbox sweep: events the database holds but Redis does not are queued again."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select, update

from gatehouse.access.rules import parse_rules_text
from gatehouse.extensions import db, redis_client
from gatehouse.models import AccessRules, Event, utcnow
from gatehouse.queue import get_queue
from gatehouse.queue.relay import relay_all
from gatehouse.queue.sweep import LOCK_KEY, LOCK_SECONDS
from tests.helpers import bearer, create_source, create_token, keap_url, run_worker

RULES = """
groups:
  - name: gold
    tags: {any: ["keap:101"]}
    grants: [course:gold]
"""
GENPASS = {"contactId": "2729", "Email": "jane@example.com", "Groups": "101"}


def load_rules() -> None:
    db.session.add(AccessRules(source_text=RULES, rules=parse_rules_text(RULES)))
    db.session.commit()


def post_genpass(client: FlaskClient) -> str:
    secret = create_source("keap", "keap-http-post")
    r = client.post(keap_url("keap", secret, "genpass"), data=GENPASS)
    assert r.status_code == 202, r.json
    # Queued as a worker's relay would: the sweep's cases start from a queued event.
    assert relay_all(client.application) == 1
    return str(r.json["events"][0])


def status_of(event_id: str) -> str:
    status = db.session.execute(select(Event.status).where(Event.id == event_id)).scalar_one()
    db.session.rollback()
    return str(status)


def sweep_cli(app: Flask) -> Any:
    return app.test_cli_runner().invoke(args=["events", "sweep"])


def test_event_accepted_while_redis_is_down_is_processed_after_the_sweep(
    app: Flask, client: FlaskClient, redis_server: Any
) -> None:
    load_rules()
    secret = create_source("keap", "keap-http-post")
    reader = create_token("reader")
    redis_server.stop()
    try:
        r = client.post(keap_url("keap", secret, "genpass"), data=GENPASS)
        assert r.status_code == 202, r.json
        [event_id] = r.json["events"]
        assert status_of(event_id) == "received"
    finally:
        redis_server.start()

    result = sweep_cli(app)
    assert result.exit_code == 0, result.output
    assert "1 received" in result.output
    assert status_of(event_id) == "queued"
    assert get_queue(app).job_ids == [event_id]
    run_worker(app)

    assert status_of(event_id) == "processed"
    answer = client.get("/api/access?contact=keap:2729", headers=bearer(reader)).json
    assert answer["groups"] == ["gold"]
    assert answer["permissions"] == ["course:gold"]


def test_sweep_while_redis_is_down_fails_with_advice_and_leaves_events_received(
    app: Flask, client: FlaskClient, redis_server: Any
) -> None:
    secret = create_source("keap", "keap-http-post")
    redis_server.stop()
    try:
        r = client.post(keap_url("keap", secret, "genpass"), data=GENPASS)
        [event_id] = r.json["events"]
        result = sweep_cli(app)
    finally:
        redis_server.start()

    assert result.exit_code != 0
    assert "Redis" in result.output
    assert status_of(event_id) == "received"


def test_queued_event_whose_job_vanished_is_queued_again(app: Flask, client: FlaskClient) -> None:
    event_id = post_genpass(client)
    redis_client.get(app).flushall()  # a Redis restart without persistence

    result = sweep_cli(app)

    assert result.exit_code == 0, result.output
    assert "1 lost from Redis" in result.output
    assert get_queue(app).job_ids == [event_id]
    run_worker(app)
    assert status_of(event_id) == "processed"


def test_queued_event_whose_job_key_was_deleted_is_queued_again(
    app: Flask, client: FlaskClient
) -> None:
    event_id = post_genpass(client)
    redis_client.get(app).delete(f"rq:job:{event_id}")

    result = sweep_cli(app)

    assert "1 lost from Redis" in result.output
    run_worker(app)
    assert status_of(event_id) == "processed"


def test_queued_event_with_a_live_job_is_left_alone(app: Flask, client: FlaskClient) -> None:
    event_id = post_genpass(client)

    result = sweep_cli(app)

    assert result.exit_code == 0
    assert "Queued 0 event(s)" in result.output
    assert get_queue(app).job_ids == [event_id]


def test_queued_event_inside_the_grace_period_is_left_alone(
    app: Flask, client: FlaskClient
) -> None:
    event_id = post_genpass(client)
    redis_client.get(app).flushall()

    result = app.test_cli_runner().invoke(args=["events", "sweep", "--grace", "3600"])

    assert "Queued 0 event(s)" in result.output
    assert status_of(event_id) == "queued"


def _stuck_in_processing(event_id: str, seconds_ago: int) -> None:
    db.session.execute(
        update(Event)
        .where(Event.id == event_id)
        .values(status="processing", updated_at=utcnow() - timedelta(seconds=seconds_ago))
    )
    db.session.commit()


def test_event_stuck_in_processing_past_the_job_timeout_is_queued_again(
    app: Flask, client: FlaskClient
) -> None:
    event_id = post_genpass(client)
    # The worker that took it died: its job hash still says "started".
    get_queue(app).empty()
    redis_client.get(app).hset(f"rq:job:{event_id}", "status", "started")
    _stuck_in_processing(event_id, app.config["GATEHOUSE_JOB_TIMEOUT"] + 61)

    result = sweep_cli(app)

    assert "1 stuck in processing" in result.output
    assert status_of(event_id) == "queued"
    assert get_queue(app).job_ids == [event_id]
    run_worker(app)
    assert status_of(event_id) == "processed"


def test_event_processing_within_the_job_timeout_is_left_alone(
    app: Flask, client: FlaskClient
) -> None:
    event_id = post_genpass(client)
    get_queue(app).empty()
    _stuck_in_processing(event_id, 5)

    result = sweep_cli(app)

    assert "Queued 0 event(s)" in result.output
    assert status_of(event_id) == "processing"


def test_finished_events_are_never_swept(app: Flask, client: FlaskClient) -> None:
    event_id = post_genpass(client)
    run_worker(app)
    redis_client.get(app).flushall()

    result = sweep_cli(app)

    assert "Queued 0 event(s)" in result.output
    assert status_of(event_id) == "processed"


def test_the_worker_sweeps_during_maintenance(app: Flask, client: FlaskClient) -> None:
    event_id = post_genpass(client)
    redis_client.get(app).flushall()

    from gatehouse.queue.worker import GatehouseWorker

    worker = GatehouseWorker(app)
    with app.app_context():
        worker.run_maintenance_tasks()
    run_worker(app)

    assert status_of(event_id) == "processed"


def test_queued_event_whose_job_left_the_queue_list_is_queued_again(
    app: Flask, client: FlaskClient
) -> None:
    """Found by the chaos run: the job hash said `queued` but nothing would ever pop it."""
    event_id = post_genpass(client)
    queue = get_queue(app)
    redis_client.get(app).lrem(queue.key, 0, event_id)
    assert redis_client.get(app).hget(f"rq:job:{event_id}", "status") == b"queued"

    result = sweep_cli(app)

    assert "1 lost from Redis" in result.output
    run_worker(app)
    assert status_of(event_id) == "processed"


def schedule_retry(app: Flask, event_id: str, due_in: float) -> None:
    """Put the event's job where RQ keeps a retry waiting for its scheduler."""
    queue = get_queue(app)
    client = redis_client.get(app)
    client.lrem(queue.key, 0, event_id)
    client.hset(f"rq:job:{event_id}", "status", "scheduled")
    client.zadd(ScheduledJobRegistry(queue=queue).key, {event_id: utcnow().timestamp() + due_in})


def test_retry_long_overdue_in_the_scheduled_registry_is_queued_again(
    app: Flask, client: FlaskClient
) -> None:
    """A retry whose scheduler died with its worker would wait forever."""
    event_id = post_genpass(client)
    schedule_retry(app, event_id, due_in=-600)

    result = sweep_cli(app)

    assert "1 lost from Redis" in result.output
    run_worker(app)
    assert status_of(event_id) == "processed"


def test_retry_scheduled_for_later_is_left_to_the_scheduler(
    app: Flask, client: FlaskClient
) -> None:
    event_id = post_genpass(client)
    schedule_retry(app, event_id, due_in=600)

    result = sweep_cli(app)

    assert "Queued 0 event(s)" in result.output
    assert status_of(event_id) == "queued"


def test_a_sweep_killed_while_holding_its_lock_keeps_others_away_only_briefly(
    app: Flask, client: FlaskClient
) -> None:
    event_id = post_genpass(client)
    redis_client.get(app).flushall()  # its job is lost
    # What a worker SIGKILLed in the middle of a sweep leaves behind.
    stale = redis_client.get(app).lock(LOCK_KEY, timeout=LOCK_SECONDS)
    assert stale.acquire(blocking=False)
    assert LOCK_SECONDS <= 30  # lost events wait at most this long for the next sweep

    result = sweep_cli(app)
    assert result.exit_code == 0, result.output
    assert "Another sweep is running" in result.output
    assert get_queue(app).job_ids == []

    redis_client.get(app).delete(LOCK_KEY)  # what its expiry does
    result = sweep_cli(app)
    assert "1 lost from Redis" in result.output
    assert get_queue(app).job_ids == [event_id]
