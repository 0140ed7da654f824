"""The relay: turns committed `received` events into RQ jobs, in batches (a transactional
outbox).

The receive view stores an event `received`, commits and answers 202; it does not talk to
Redis. (Webhooks stored together by the web worker's group commit are the exception: the
group stores them `queued` and queues their jobs itself once answered, and hands them back
here, `received`, when Redis refuses: gatehouse.webhooks.group.)

Every worker runs a relay thread that claims what is `received` (one UPDATE ...
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
from typing import Any

import redis
from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from gatehouse.driver import HeldConnection, for_engine
from gatehouse.extensions import READ_ONLY, db, write_turn
from gatehouse.models import Event, utcnow
from gatehouse.queue.enqueue import enqueue_events

log = logging.getLogger("gatehouse.queue")

BATCH = 500
# How long a relay waits before looking again while events arrive: the latency it adds.
IDLE_POLL = 0.02
# The longest wait between polls once nothing arrives: the most an event arriving after a
# quiet spell can wait for its relay.
IDLE_POLL_MAX = 0.1
# Half a second of a burst is 30-40 MB of log, well under the automatic limit (80 MB).
CHECKPOINT_EVERY = 0.5


class DriverClaim:
    """The relay's poll and claim, each one statement on a driver connection it keeps.

    A relay on a busy site polls every 20 ms and claims a few dozen events each time.
    Through SQLAlchemy's pool and Connection the two statements cost 1.5-2.5 ms of CPU per
    batch however small it was, and the claim holds SQLite's write turn, which the web
    workers then wait for. As one autocommitted statement each, on a kept connection
    (`gatehouse.driver.HeldConnection`), a batch costs a fraction of that.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.held = HeldConnection(engine)
        dialect = engine.dialect
        updated_at: Any = Event.__table__.c.updated_at
        self.stamp = updated_at.type.dialect_impl(dialect).bind_processor(dialect)
        # ORDER BY received_at: the oldest first, along the (status, received_at) index.
        self.pending_sql = "SELECT id FROM events WHERE status = ? ORDER BY received_at LIMIT ?"
        if not self.held.sqlite:
            self.pending_sql = self.pending_sql.replace("?", "%s")

    def _claim_sql(self, count: int) -> str:
        if self.held.sqlite:
            # coalesce(): without it SQLite's planner picks the status index and scans
            # every `received` row (20,000 during a burst) instead of the primary key.
            return _SQLITE_CLAIM.replace("(ids)", "(" + ", ".join("?" * count) + ")")
        # Re-checked under the row lock: of two relays claiming one event, one gets it.
        return (
            "UPDATE events SET status = %s, updated_at = %s "
            "WHERE id = ANY(%s) AND status = %s RETURNING id"
        )

    def pending(self, limit: int) -> list[str]:
        """The oldest `received` event ids. On SQLite a plain read: no write lock taken,
        so polling never holds up the receive view."""
        return [row[0] for row in self.held.run_alone(self.pending_sql, ("received", limit))]

    def claim(self, ids: list[str], old: str = "received", new: str = "queued") -> list[str]:
        """Move those of `ids` still in `old` to `new`; returns the ids moved."""
        stamp = self.stamp(utcnow()) if self.stamp is not None else utcnow()
        if self.held.sqlite:
            params: tuple[Any, ...] = (new, stamp, *ids, old)
        else:
            params = (new, stamp, list(ids), old)
        # In turn with the other writers (SQLite), not through SQLite's sleeping wait.
        with write_turn(self.engine):
            return [row[0] for row in self.held.run_alone(self._claim_sql(len(ids)), params)]


_SQLITE_CLAIM = (
    "UPDATE events SET status = ?, updated_at = ? "
    "WHERE id IN (ids) AND coalesce(status, '') = ? RETURNING id"
)


def driver_claim() -> DriverClaim:
    return for_engine("gatehouse.driver_claim", DriverClaim)


def queue_or_hand_back(ids: list[str], app: Flask, client: redis.Redis | None = None) -> bool:
    """Queue the jobs of these `queued` events; if Redis refuses, hand them back
    (`received`) for a relay to queue later and return False. Needs no app context (the
    web worker calls it after each group, where pushing one would cost every group); the
    hand-back pushes its own. A database error on the hand-back is raised: the events are
    then `queued` with no job, which the sweep queues after GATEHOUSE_SWEEP_GRACE."""
    if not ids or enqueue_events(ids, app, client):
        return True
    with app.app_context():
        driver_claim().claim(ids, old="queued", new="received")
    return False


def relay_pending(app: Flask, limit: int = BATCH) -> int:
    """Claim up to `limit` received events and queue their jobs; returns how many.

    Raises RedisError when Redis refused the jobs (after handing the claim back) and
    SQLAlchemyError when the database did: the caller decides how long to wait.
    """
    with app.app_context():
        claims = driver_claim()
        ids = claims.pending(limit)
        if not ids:
            return 0
        # Another relay may have claimed some of them since: only ours come back.
        claimed = claims.claim(ids)
        if not queue_or_hand_back(claimed, app):
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
    """On SQLite, copy all of the WAL into the database file, so that the next write starts
    the log over. On PostgreSQL there is nothing to do.

    Web connections leave this to the relay (extensions.WAL_AUTOCHECKPOINT_PAGES), so that a
    request never pays for it. The log only starts over once a checkpoint has copied all of
    it, and under a steady stream of inserts one never did: the web workers kept appending
    while it copied. The log then grew to the automatic limit (80 MB in 1.5 s of a burst)
    and the web requests' own commits ran checkpoints, with their fsyncs. So the bulk is
    copied first while the web workers go on, then what they appended meanwhile (a few
    frames, a millisecond or two) in their write turn, where nothing can be appended.
    """
    with app.app_context():
        if db.engine.dialect.name != "sqlite":
            return
        with db.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            with write_turn(db.engine):
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
