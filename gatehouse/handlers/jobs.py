"""Entry points RQ calls (by import path). Jobs take ids, never ORM objects or payloads.

They raise on failure so RQ retries and records it; `on_job_failure` marks the event
`failed` after the last try.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select

from gatehouse import metrics
from gatehouse.access import cache
from gatehouse.extensions import begin_read_only, db, takes_turns, write_turn
from gatehouse.handlers import contact_events, preload, tag_batch
from gatehouse.handlers.dispatch import HANDLERS
from gatehouse.handlers.outcome import Assertion, BatchOutcome, Outcome, Skip, Unmatched
from gatehouse.models import Event, EventAttempt, Member, Source, utcnow
from gatehouse.models.in_list import in_list

log = logging.getLogger("gatehouse.handlers")
RECOMPUTE_CHUNK = 1000
_ATTEMPTS: Any = EventAttempt.__table__  # a Core insert: no ORM unit of work per row


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


# Types whose handler talks to the outside world (an HTTP fetch) before it locks anything:
# never inside a batch's transaction, where the wait would hold every lock of the batch.
# A merge moves tag rows between contacts with its own queries: alone, so no batch-wide
# preload (handlers.preload) can be stale after it.
RUN_ALONE = frozenset({"contact.fetch", "contact.merged"})
# Types whose handler opens one contact named in the payload (contact_events._open): their
# contacts, members, tags and snapshots are locked and loaded for the batch up front.
PRELOADED_TYPES = frozenset(
    kind for kind, handler in HANDLERS.items() if handler.__module__ == contact_events.__name__
)


def _finish(event: Event, started_at: datetime, attempts: list[dict[str, Any]]) -> tuple[Any, ...]:
    """Apply one event in the current transaction; its attempt is added to `attempts`, for
    the caller to insert in the same transaction. Returns the outcome and what the metrics
    count (with the source's id, for the caller to name)."""
    event.attempts += 1
    outcome = apply_event(event)
    finished_at = event.processed_at or utcnow()
    attempts.append(
        {
            "event_id": event.id,
            "number": event.attempts,
            "started_at": started_at,
            "finished_at": finished_at,
        }
    )
    return outcome, (event.source_id, event.type, event.status, event.received_at, finished_at)


_SOURCE_SLUGS = select(Source.id, Source.slug).where(in_list(Source.id, "ids"))


def _named(finished: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, tuple[Any, ...]]]:
    """The metrics' counts with each source's slug for its id: one query per batch (a
    per-event lookup was a round trip per event), after the commit, outside the write turn.
    Counts that name their source already (the lean path read the slug with its events)
    are left as they are."""
    source_ids = {counts[0] for _id, counts in finished if isinstance(counts[0], int)}
    if not source_ids:
        return finished
    began = begin_read_only()
    try:
        rows = db.session.execute(_SOURCE_SLUGS, {"ids": sorted(source_ids)})
        slugs = {sid: slug for sid, slug in rows}
    finally:
        if began:
            db.session.rollback()
    return [
        (event_id, (slugs.get(counts[0]) or str(counts[0]), *counts[1:]))
        if isinstance(counts[0], int)
        else (event_id, counts)
        for event_id, counts in finished
    ]


def _contact_keys(events: list[Event]) -> dict[tuple[str, str], set[str] | None]:
    """Per contact the batch names: the tags whose rows its events read (None: every row)."""
    wanted: dict[tuple[str, str], set[str] | None] = {}
    for event in events:
        contact = event.payload.get("contact") if event.type in PRELOADED_TYPES else None
        if isinstance(contact, dict) and isinstance(contact.get("crm"), str):
            if isinstance(contact.get("id"), str):
                key = (contact["crm"], contact["id"])
                tags = contact_events.named_tags(event.type, event.payload)
                known = wanted.get(key, set())
                wanted[key] = None if tags is None or known is None else known | set(tags)
    return wanted


def _log_processed(event_id: str, counts: tuple[Any, ...], started: float) -> None:
    # Built only when someone listens: at WARNING (production) a job costs no log record.
    # Plain values captured before the commit: the rows are expired and detached by now.
    if log.isEnabledFor(logging.INFO):
        source, event_type, status = counts[:3]
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


def process_event(event_id: str) -> dict[str, Any]:
    """Claim and apply one event in one transaction, then write its members' cache.

    A crash before the commit leaves the event as it was (`queued`): the job is re-run from
    RQ's started registry (see gatehouse.queue.worker), and `on_job_failure` counts the
    attempt of a run that failed before its commit.
    """
    results = process_events([event_id], run_alone=())
    return results[event_id]


def _apply_batch(
    event_ids: Sequence[str], run_alone: Collection[str], started_at: datetime
) -> BatchOutcome:
    """Apply the batch through the handlers (HANDLERS), in the current transaction."""
    events = list(db.session.execute(select(Event).where(Event.id.in_(list(event_ids)))).scalars())
    batch = BatchOutcome.of(event_ids, {event.id for event in events})
    events = [e for e in events if e.type not in run_alone]
    # Queue order within a contact (a stable sort on the contact only): a profile change
    # stated in parts (first name, then last name, same instant) ends as it did one job at
    # a time.
    position = {event_id: n for n, event_id in enumerate(event_ids)}
    events.sort(key=lambda e: (e.contact_key or "", position[e.id]))
    attempts: list[dict[str, Any]] = []
    with preload.preloaded(_contact_keys(events)):
        for event in events:
            outcome, counts = _finish(event, started_at, attempts)
            batch.add(event.id, event.status, counts, outcome.touched)
        if attempts:
            # One statement for the batch's attempts: as ORM objects each was an INSERT of
            # its own (the ORM reads back every new row's id).
            db.session.execute(insert(_ATTEMPTS), attempts)
    return batch


def _prepare_lean(
    event_ids: Sequence[str], run_alone: Collection[str]
) -> tag_batch.Prepared | None:
    """The lean path's first read, which needs no lock. On SQLite, a read of its own, ended
    before the write turn that web inserts wait for. Elsewhere there is no turn to shorten:
    it is the first statement of the batch's transaction (one transaction a batch, not two;
    a transaction of its own made PostgreSQL's lag worse: docs/benchmarks.md)."""
    if not takes_turns(db.engine):
        return tag_batch.prepare(event_ids, run_alone)
    began = begin_read_only()
    try:
        return tag_batch.prepare(event_ids, run_alone)
    finally:
        if began:
            db.session.rollback()  # ends the read


def process_events(
    event_ids: Sequence[str], run_alone: Collection[str] = RUN_ALONE, *, lean: bool = True
) -> dict[str, dict[str, Any]]:
    """Apply a batch of events in ONE transaction, then write the cache of every touched member
    in one pipeline. Returns each event's result, keyed by id.

    Events whose type is in `run_alone` are left out (not in the result): the caller runs
    them one by one. Events are applied grouped by contact, in queue order within a contact;
    the contacts and members themselves are locked up front in id order (handlers.preload),
    so two workers take the row locks of overlapping batches in the same order. Any error
    rolls the whole batch back and is raised: the caller then runs the events one by one,
    so a poison event fails alone through RQ's retry and failed-job path.
    """
    started = time.perf_counter()
    started_at = utcnow()
    try:
        prepared = _prepare_lean(event_ids, run_alone) if lean else None
        # On SQLite, the batch takes its turn at the single write lock with the web inserts,
        # the relay and the other worker (`write_turn`: the kernel wakes the next writer the
        # moment it is free, where SQLite's own wait sleeps up to 100 ms a step).
        with write_turn(db.engine):
            try:
                # The lean path steps aside (None) for any batch it does not handle.
                batch = tag_batch.apply(prepared, started_at) if prepared else None
                if batch is None:
                    batch = _apply_batch(event_ids, run_alone, started_at)
                if not batch.finished:
                    db.session.rollback()
                    return batch.results
                db.session.commit()
            except BaseException:
                db.session.rollback()  # before the next worker's turn, not after
                raise
        finished = _named(batch.finished)
        for _event, counts in finished:
            metrics.count_finished(*counts)
        # After the commit: a crash here re-runs the jobs, which write the cache again.
        if batch.touched:
            # Read back outside the write turn (a read: `cache.refresh`), so the other
            # writers, web inserts above all, wait only for the batch's writes.
            cache.refresh(sorted(batch.touched))
    except BaseException:
        db.session.rollback()
        raise
    finally:
        db.session.remove()
    for event_id, counts in finished:
        _log_processed(event_id, counts, started)
    return batch.results


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


def record_failure(event_id: str, error: str, last_try: bool, started_at: Any = None) -> None:
    """Keep the error on the event and on its attempt; the caller commits.

    A run that failed before its commit left no trace (claim and apply are one transaction),
    so its attempt is counted here. A run that failed after its commit (on the cache write)
    already recorded its attempt, started at or after the job's `started_at`: that one is
    updated instead of counted twice.
    """
    event = db.session.get(Event, event_id)
    if event is None:
        return
    now = utcnow()
    if started_at is not None and started_at.tzinfo is None:
        started_at = started_at.replace(tzinfo=now.tzinfo)
    attempt = None
    if started_at is not None and event.attempts:
        attempt = db.session.execute(
            select(EventAttempt).where(
                EventAttempt.event_id == event_id,
                EventAttempt.number == event.attempts,
                EventAttempt.started_at >= started_at,
            )
        ).scalar_one_or_none()
    if attempt is None:
        event.attempts += 1
        attempt = EventAttempt(
            event_id=event_id, number=event.attempts, started_at=started_at or now
        )
        db.session.add(attempt)
    event.status = "failed" if last_try else "queued"
    event.last_error = error
    attempt.finished_at, attempt.error = now, error
    if last_try:
        source = metrics.source_slug(event.source_id)
        metrics.count_finished(source, event.type, "failed", event.received_at, now)


def recompute_members(member_ids: list[str] | None = None) -> int:
    """Recompute the access cache of these members, or of every member, in chunks."""
    done = 0
    # Each chunk is a read (`cache.refresh`; the cache writes go to Redis): on SQLite it
    # takes no write lock, so web inserts and worker batches go on meanwhile.
    try:
        if member_ids is not None:
            for i in range(0, len(member_ids), RECOMPUTE_CHUNK):
                done += len(cache.refresh(member_ids[i : i + RECOMPUTE_CHUNK]))
            return done
        last = ""
        while True:
            begin_read_only()  # the chunk's ids are read in the same read as its states
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
