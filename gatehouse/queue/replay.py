"""Replays: run stored events again through the same handlers.

Handlers are idempotent and order-independent (latest assertion wins), so replaying a
processed event changes nothing, and replaying a failed one after fixing its cause brings
members to where they should be. A dry run applies the events inside a transaction, computes
access from it, and rolls back: nothing is written to the database or to Redis.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.utils import import_attribute
from sqlalchemy import event as sa_event
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gatehouse.access import cache
from gatehouse.access.state import load_states
from gatehouse.event_query import EventFilter
from gatehouse.event_query import count as count_events
from gatehouse.extensions import db
from gatehouse.models import Event, Replay, utcnow
from gatehouse.queue.enqueue import PROCESS_EVENT, enqueue_call, enqueue_events, get_queue

log = logging.getLogger("gatehouse.queue")

RUN_REPLAY = "gatehouse.queue.replay.run_replay"
APPLY_EVENT = "gatehouse.handlers.jobs.apply_event"
RECORD_FAILURE = "gatehouse.handlers.jobs.record_failure"
CHUNK = 200


class ReplayUnavailable(RuntimeError):
    """Redis refused the job; nothing was changed."""


def _drop_finished_job(event_id: str) -> bool:
    """Forget a finished or failed job with this id so the new one starts clean.

    Returns True when a job with this id is still waiting or running: it will run the
    event anyway, so a second one is not needed.
    """
    queue = get_queue()
    try:
        job = Job.fetch(event_id, connection=queue.connection)
    except NoSuchJobError:
        return False
    status = job.get_status(refresh=True)
    if status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
        return True
    job.delete(remove_from_queue=True)
    return False


def replay_one(event: Event) -> bool:
    """Queue the event again; the caller has the event loaded. Returns False if Redis is down."""
    try:
        pending = _drop_finished_job(event.id)
    except redis.RedisError:
        return False
    event.status = "queued"
    db.session.commit()
    if pending:
        return True
    return enqueue_events([event.id])


def start_bulk(filters: EventFilter, requested_by: str | None) -> Replay:
    """Record the replay, then queue its background job. Raises ReplayUnavailable."""
    max_id = db.session.execute(
        filters.apply(select(Event.id)).order_by(Event.id.desc()).limit(1)
    ).scalar_one_or_none()
    matched = count_events(filters, max_id) if max_id else 0
    replay = Replay(
        filters=filters.as_dict(),
        max_event_id=max_id,
        matched=matched,
        requested_by=requested_by,
        status="pending" if matched else "finished",
        finished_at=None if matched else utcnow(),
    )
    db.session.add(replay)
    db.session.commit()
    if matched:
        try:
            enqueue_call(RUN_REPLAY, replay.id, job_id=f"replay-{replay.id}", timeout=24 * 3600)
        except redis.RedisError as exc:
            replay.status, replay.error = "failed", f"could not queue the replay: {exc}"
            replay.finished_at = utcnow()
            db.session.commit()
            raise ReplayUnavailable(str(exc)) from exc
    return replay


def _chunks(filters: EventFilter, after: str, max_id: str) -> Iterator[list[str]]:
    while True:
        ids = list(
            db.session.execute(
                filters.apply(select(Event.id))
                .where(Event.id > after, Event.id <= max_id)
                .order_by(Event.id)
                .limit(CHUNK)
            ).scalars()
        )
        db.session.rollback()
        if not ids:
            return
        yield ids
        after = ids[-1]


def run_replay(replay_id: str) -> dict[str, Any]:
    """The background job of a bulk replay: each matching event, in id order, inline.

    Progress is committed after every event, so a re-run of this job (after a crash) picks
    up after the last event it finished. An event whose handler raises is recorded as
    failed with its error, and the replay goes on; infrastructure errors raise.
    """
    process = import_attribute(PROCESS_EVENT)
    record_failure = import_attribute(RECORD_FAILURE)
    replay = db.session.get(Replay, replay_id)
    if replay is None or replay.max_event_id is None:
        return {"replay": replay_id, "status": "missing"}
    filters = EventFilter.parse(replay.filters)
    max_id, cursor = replay.max_event_id, replay.cursor
    replay.status = "running"
    db.session.commit()
    done = failed = 0
    for ids in _chunks(filters, cursor, max_id):
        for event_id in ids:
            try:
                process(event_id)
                outcome = {"done": Replay.done + 1}
                done += 1
            except Exception as exc:  # noqa: BLE001 - recorded on the event, counted below
                error = f"{type(exc).__name__}: {exc}"[:2000]
                record_failure(event_id, error, True)
                outcome = {"failed": Replay.failed + 1}
                failed += 1
            db.session.execute(
                update(Replay).where(Replay.id == replay_id).values(cursor=event_id, **outcome)
            )
            db.session.commit()
    db.session.execute(
        update(Replay).where(Replay.id == replay_id).values(status="finished", finished_at=utcnow())
    )
    db.session.commit()
    db.session.remove()
    log.info("replay.finished", extra={"replay_id": replay_id, "done": done, "failed": failed})
    return {"replay": replay_id, "done": done, "failed": failed}


@contextmanager
def _no_commit(session: Session) -> Iterator[None]:
    """A dry run must never commit, whatever a handler does."""

    def refuse(session_: Session) -> None:
        if session_.in_nested_transaction():
            return  # releasing a savepoint, not committing
        raise RuntimeError("a dry run tried to commit; nothing was written")

    sa_event.listen(session, "before_commit", refuse)
    try:
        yield
    finally:
        sa_event.remove(session, "before_commit", refuse)


def _permissions_now(member_ids: Sequence[str]) -> dict[str, set[str]]:
    """What each member is answered today: the cached answer, else computed, never stored."""
    out: dict[str, set[str]] = {}
    missing = []
    for member_id in member_ids:
        try:
            body = cache.read(member_id)
        except redis.RedisError:
            body = None
        if body is None:
            missing.append(member_id)
            continue
        out[member_id] = set(json.loads(body)["permissions"])
    for member_id, (_v, _b, access) in cache.compute(load_states(missing)).items():
        out[member_id] = set(access.permissions)
    return out


def preview(filters: EventFilter | None = None, event_ids: Sequence[str] = ()) -> dict[str, Any]:
    """What replaying would change, per member, computed inside a rolled-back transaction."""
    apply_event = import_attribute(APPLY_EVENT)
    db.session.rollback()
    if filters is not None:
        ids = list(db.session.execute(filters.apply(select(Event.id)).order_by(Event.id)).scalars())
    else:
        ids = list(event_ids)
    session = db.session()
    touched: set[str] = set()
    errors: list[dict[str, str]] = []
    try:
        with _no_commit(session):
            for event_id in ids:
                event = db.session.get(Event, event_id)
                if event is None:
                    continue
                savepoint = db.session.begin_nested()
                try:
                    outcome = apply_event(event)
                    savepoint.commit()
                except Exception as exc:  # noqa: BLE001 - reported in the preview
                    savepoint.rollback()
                    errors.append({"event_id": event_id, "error": f"{type(exc).__name__}: {exc}"})
                    continue
                touched |= outcome.touched
            db.session.flush()
            after = {
                mid: set(access.permissions)
                for mid, (_v, _b, access) in cache.compute(load_states(sorted(touched))).items()
            }
    finally:
        db.session.rollback()
    before = _permissions_now(sorted(touched))
    db.session.rollback()  # only reads since the rollback above; end them, locks included
    changes = []
    for member_id in sorted(touched):
        was, will = before.get(member_id, set()), after.get(member_id, set())
        if was != will:
            changes.append(
                {
                    "member_id": member_id,
                    "new_member": member_id not in before,
                    "added": sorted(will - was),
                    "removed": sorted(was - will),
                }
            )
    return {"dry_run": True, "matched": len(ids), "changes": changes, "errors": errors}
