"""Entry points RQ calls (by import path). Jobs take ids, never ORM objects or payloads.

They raise on failure so RQ retries and records it; `on_job_failure` marks the event
`failed` after the last try.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import select, update

from gatehouse import metrics
from gatehouse.access import cache
from gatehouse.extensions import db
from gatehouse.handlers.dispatch import HANDLERS
from gatehouse.handlers.outcome import Assertion, Outcome, Skip, Unmatched
from gatehouse.models import Event, EventAttempt, Member, utcnow

log = logging.getLogger("gatehouse.handlers")
RECOMPUTE_CHUNK = 1000


def apply_event(event: Event) -> Outcome:
    """Run the event's handler in the current transaction and record the outcome on it."""
    outcome = Outcome()
    status, reason = "processed", None
    handler = HANDLERS.get(event.type)
    try:
        if handler is None:
            raise Skip(f"no handler for event type {event.type!r}")
        handler(event, Assertion.of(event), outcome)
    except Skip as exc:
        status, reason = "skipped", str(exc)
    except Unmatched as exc:
        status, reason = "unmatched", str(exc)
    event.status, event.reason = status, reason
    event.effects = outcome.effects()
    event.last_error = None
    event.processed_at = utcnow()
    return outcome


def process_event(event_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    started_at = utcnow()
    source, event_type = None, None
    try:
        claimed = db.session.execute(
            update(Event)
            .where(Event.id == event_id)
            .values(status="processing", attempts=Event.attempts + 1)
            .returning(Event.id)
        ).first()
        db.session.commit()
        if claimed is None:
            return {"event": event_id, "status": "missing"}
        event = db.session.get(Event, event_id)
        assert event is not None
        outcome = apply_event(event)
        status = event.status
        source, event_type = metrics.source_slug(event.source_id), event.type
        finished_at = event.processed_at or utcnow()
        finished = (source, event_type, status, event.received_at, finished_at)
        # In the transaction that finishes the event: no extra round trip per job.
        db.session.add(
            EventAttempt(
                event_id=event_id,
                number=event.attempts,
                started_at=started_at,
                finished_at=finished_at,
            )
        )
        db.session.commit()
        metrics.count_finished(*finished)
        # After the commit: a crash here re-runs the job, which writes the cache again.
        cache.refresh(sorted(outcome.touched))
    except BaseException:
        db.session.rollback()
        raise
    finally:
        db.session.remove()
    log.info(
        "job.processed",
        extra={
            "event_id": event_id,
            "source": source,
            "type": event_type,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )
    return {"event": event_id, "status": status, "members": sorted(outcome.touched)}


def on_job_failure(job: Any, connection: Any, exc_type: Any, exc_value: Any, tb: Any) -> None:
    """Record the error on the event; after the last try the event is `failed`."""
    event_id = job.args[0] if job.args else None
    if event_id is None or job.func_name != "gatehouse.handlers.jobs.process_event":
        return
    last_try = not job.retries_left
    error = f"{getattr(exc_type, '__name__', exc_type)}: {exc_value}"[:2000]
    try:
        record_failure(event_id, error, last_try, getattr(job, "started_at", None))
        db.session.commit()
    finally:
        db.session.remove()


def record_failure(
    event_id: str, error: str, last_try: bool, started_at: Any = None
) -> None:
    """Keep the error on the event and on its attempt; the caller commits."""
    db.session.execute(
        update(Event)
        .where(Event.id == event_id)
        .values(status="failed" if last_try else "queued", last_error=error)
    )
    event = db.session.get(Event, event_id)
    if event is None:
        return
    now = utcnow()
    # The attempt may already be recorded (the job failed after its commit, on the cache).
    attempt = db.session.execute(
        select(EventAttempt).where(
            EventAttempt.event_id == event_id, EventAttempt.number == event.attempts
        )
    ).scalar_one_or_none()
    if attempt is None:
        if started_at is not None and started_at.tzinfo is None:
            started_at = started_at.replace(tzinfo=now.tzinfo)
        attempt = EventAttempt(
            event_id=event_id, number=event.attempts, started_at=started_at or now
        )
        db.session.add(attempt)
    attempt.finished_at, attempt.error = now, error
    if last_try:
        source = metrics.source_slug(event.source_id)
        metrics.count_finished(source, event.type, "failed", event.received_at, now)


def recompute_members(member_ids: list[str] | None = None) -> int:
    """Recompute the access cache of these members, or of every member, in chunks."""
    done = 0
    try:
        if member_ids is not None:
            for i in range(0, len(member_ids), RECOMPUTE_CHUNK):
                done += len(cache.refresh(member_ids[i : i + RECOMPUTE_CHUNK]))
                db.session.rollback()
            return done
        last = ""
        while True:
            chunk = list(
                db.session.execute(
                    select(Member.id)
                    .where(Member.id > last)
                    .order_by(Member.id)
                    .limit(RECOMPUTE_CHUNK)
                ).scalars()
            )
            if not chunk:
                return done
            done += len(cache.refresh(chunk))
            db.session.rollback()
            last = chunk[-1]
    finally:
        db.session.remove()
