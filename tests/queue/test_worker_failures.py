"""Jobs that raise: retried per GATEHOUSE_RETRY_INTERVALS, then the event is `failed`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from gatehouse.extensions import db
from gatehouse.handlers.jobs import process_event
from gatehouse.models import Event, Source, new_id, utcnow
from gatehouse.queue import enqueue_events, get_queue
from tests.conftest import make_app
from tests.helpers import create_source, run_worker


def broken_event() -> str:
    """A tag event whose payload names no tag: the handler cannot apply it and raises."""
    create_source("bridge", "standard", crm="keap")
    source_id = db.session.execute(select(Source.id)).scalar_one()
    event_id = new_id()
    event = Event(
        id=event_id,
        source_id=source_id,
        external_id="msg_broken",
        type="contact.tag_added",
        occurred_at=utcnow(),
        status="queued",
        payload={"type": "contact.tag_added", "contact": {"id": "2729", "crm": "keap"}},
        contact_key="keap:2729",
    )
    db.session.add(event)
    db.session.commit()
    # Not event.id: reading it after the commit would open a transaction the worker waits on.
    return event_id


def reload(event_id: str) -> Event:
    db.session.rollback()
    event = db.session.execute(
        select(Event).where(Event.id == event_id).execution_options(populate_existing=True)
    ).scalar_one()
    return event


def test_failure_on_the_last_try_marks_the_event_failed_with_its_error(app: Flask) -> None:
    assert app.config["GATEHOUSE_RETRY_INTERVALS"] == []  # the first failure is the last
    event_id = broken_event()
    assert enqueue_events([event_id])

    run_worker(app)

    event = reload(event_id)
    assert event.status == "failed"
    assert event.attempts == 1
    assert event.last_error is not None and event.last_error.startswith("KeyError")
    assert get_queue(app).failed_job_registry.get_job_ids() == [event_id]


@pytest.fixture
def retrying_app(app: Flask, database_url: str, redis_server: Any) -> Iterator[Flask]:
    yield make_app(database_url, redis_server.url, GATEHOUSE_RETRY_INTERVALS=[0, 0])


def test_failure_before_the_last_try_leaves_the_event_queued_for_the_retry(
    app: Flask, database_url: str, redis_server: Any
) -> None:
    later = make_app(database_url, redis_server.url, GATEHOUSE_RETRY_INTERVALS=[3600])
    event_id = broken_event()
    assert enqueue_events([event_id], later)

    run_worker(later)  # the retry is scheduled an hour ahead, so the burst ends after one try

    event = reload(event_id)
    assert event.status == "queued"
    assert event.attempts == 1
    assert event.last_error is not None and event.last_error.startswith("KeyError")
    assert get_queue(later).scheduled_job_registry.get_job_ids() == [event_id]


def test_event_is_failed_only_after_every_retry_was_used(app: Flask, retrying_app: Flask) -> None:
    event_id = broken_event()
    assert enqueue_events([event_id], retrying_app)

    run_worker(retrying_app)

    event = reload(event_id)
    assert event.status == "failed"
    assert event.attempts == 3  # the first try and two retries


def test_a_job_for_an_event_that_does_not_exist_changes_nothing(app: Flask) -> None:
    assert process_event("0" * 26) == {"event": "0" * 26, "status": "missing"}


def test_a_failed_event_processes_when_run_again_after_the_fix(app: Flask) -> None:
    event_id = broken_event()
    assert enqueue_events([event_id])
    run_worker(app)
    event = reload(event_id)
    event.payload = {**event.payload, "tag": "101"}
    db.session.commit()

    result = process_event(event_id)

    assert result["status"] == "skipped"  # no member yet: kept at contact level
    event = reload(event_id)
    assert event.status == "skipped"
    assert event.last_error is None
    assert event.attempts == 2
