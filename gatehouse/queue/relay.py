"""The relay: turns committed `received` events into RQ jobs, in batches (a transactional
outbox).

The receive view stores an event `received`, commits and answers 202; it does not talk to
Redis. Every worker runs a relay thread that claims what is `received` (one UPDATE ...
RETURNING, so relays on several workers never claim the same event), enqueues one job per
claimed event in one atomic script call, and goes back to polling. Why not enqueue in the
request: the enqueue was a Redis round trip and a third of a request's CPU on the hot path,
and a request that waits on Redis is a request the sender may time out; taken out, the 202
depends on the database alone.

Crash safety, step by step:
- killed before the claim commits: the events stay `received`; the next relay takes them;
- killed between the claim's commit and the enqueue: the events are `queued` with no job;
  the sweep finds queued events whose job is missing (after GATEHOUSE_SWEEP_GRACE);
- Redis refuses the enqueue: the claim is handed back (`received` again) and retried.
A job enqueued twice (a reply lost after Redis ran the script) runs twice; jobs are
idempotent, the second finds its event final.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from flask import Flask
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from gatehouse.extensions import READ_ONLY, db, write_turn
from gatehouse.models import Event
from gatehouse.queue.enqueue import enqueue_events

log = logging.getLogger("gatehouse.queue")

BATCH = 500
# How long a relay waits before looking again while events arrive: the latency it adds.
IDLE_POLL = 0.02
# The longest wait between polls once nothing arrives: the most an event arriving after a
# quiet spell can wait for its relay.
IDLE_POLL_MAX = 0.1
CHECKPOINT_EVERY = 1.0


def _pending(limit: int) -> list[str]:
    # A plain read: on SQLite it runs without BEGIN IMMEDIATE (READ_ONLY),
    # so polling never takes the write lock the receive view needs.
    with db.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
        rows = conn.execute(
            select(Event.id)
            .where(Event.status == "received")
            .order_by(Event.received_at)
            .limit(limit)
        ).all()
        conn.rollback()
    return [row[0] for row in rows]


def _set_status(ids: list[str], old: str, new: str) -> list[str]:
    # In turn with the web requests' inserts (SQLite), not through SQLite's sleeping wait.
    with write_turn(db.engine, "ingest"), db.engine.begin() as conn:
        result = conn.execute(
            update(Event)
            # coalesce(): without it SQLite's planner picks the status index and scans
            # every row in `old` (20,000 during a burst) instead of the primary key.
            .where(Event.id.in_(ids), func.coalesce(Event.status, "") == old)
            .values(status=new)  # updated_at: the column's onupdate
            .returning(Event.id)
        )
        return [row[0] for row in result]


def relay_pending(app: Flask, limit: int = BATCH) -> int:
    """Claim up to `limit` received events and queue their jobs; returns how many.

    Raises RedisError when Redis refused the jobs (after handing the claim back) and
    SQLAlchemyError when the database did: the caller decides how long to wait.
    """
    with app.app_context():
        ids = _pending(limit)
        if not ids:
            return 0
        # Another relay may have claimed some of them since: only ours come back.
        claimed = _set_status(ids, "received", "queued")
        if claimed and not enqueue_events(claimed, app):
            _set_status(claimed, "queued", "received")
            raise redis.ConnectionError("Redis refused the jobs; the events stay received")
        return len(claimed)


def relay_all(app: Flask) -> int:
    """Relay until nothing is `received` (the sweep and `flask relay --once`)."""
    total = 0
    while True:
        moved = relay_pending(app)
        total += moved
        if moved == 0:
            return total


def checkpoint(app: Flask) -> None:
    """On SQLite, copy the WAL into the database file (PASSIVE: waits for no one).

    Web connections leave this to the relay (extensions.WAL_AUTOCHECKPOINT_PAGES), so a
    request never pays for it; on PostgreSQL there is nothing to do."""
    with app.app_context():
        if db.engine.dialect.name != "sqlite":
            return
        with db.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


class RelayThread(threading.Thread):
    """Runs `relay_pending` in a loop inside a worker (or `flask relay`) process."""

    def __init__(
        self,
        app: Flask,
        poll: float = IDLE_POLL,
        batch: int = BATCH,
        idle_poll_max: float = IDLE_POLL_MAX,
    ) -> None:
        super().__init__(name="gatehouse-relay", daemon=True)
        self.app = app
        self.poll = poll
        self.idle_poll_max = max(poll, idle_poll_max)
        self.batch = batch
        self.stopping = threading.Event()
        self.relayed = 0
        self.polls = 0

    def run(self) -> None:
        failing = False
        next_checkpoint = 0.0
        wait = self.poll
        while not self.stopping.is_set():
            self.polls += 1
            try:
                if time.monotonic() >= next_checkpoint:
                    checkpoint(self.app)
                    next_checkpoint = time.monotonic() + CHECKPOINT_EVERY
                moved = relay_pending(self.app, self.batch)
            except (redis.RedisError, SQLAlchemyError) as exc:
                if not failing:
                    log.warning("relay.failed", extra={"error": str(exc)})
                failing = True
                self.stopping.wait(1.0)
                continue
            if failing:
                log.info("relay.recovered")
                failing = False
            self.relayed += moved
            # Busy: look again soon. Idle: look less and less often, up to idle_poll_max, so
            # a quiet site's workers do not query the database 50 times a second each.
            wait = self.poll if moved else min(wait * 2, self.idle_poll_max)
            if moved < self.batch:
                self.stopping.wait(wait)

    def stop(self, timeout: float | None = 5.0) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)

