"""Webhooks that were waiting together, stored together: one insert, one commit, one log
flush for all of them, and then each answered as it would have been alone.

Why: a sync web worker serves one request at a time, and on PostgreSQL it waited more than
half of each accepted request for its own commit's log flush (docs/benchmarks.md, "A web
request without an app context", 1). During a burst the other requests are already waiting
in the listen socket's queue meanwhile. The web worker (`gatehouse.serving.GroupCommitWorker`)
serves each webhook's connection in a greenlet (`Slots`). When the fast path reaches its store it
parks the request here instead of inserting; the worker then starts whichever other
connections are already waiting with a request sent (up to `GROUP_MAX`), flushes the group
(`DriverInsert.insert_group`: one multi-row INSERT ... ON CONFLICT DO NOTHING, committed),
and resumes each parked request in turn, which answers and closes as before.

What does not change:
- nothing is answered before the commit that stored it; a crash before the commit loses
  only requests that nobody was answered, which their senders deliver again;
- a redelivery is still answered `200 duplicate`, and its delivery counted;
- a failed group insert fails each of its requests the way a failed single insert does: the
  fast path hands the request to Flask, which stores it alone or answers 503;
- a lone request (no burst), and anything but an accepted webhook, is served as before.

The group also queues its events' jobs itself, after answering them (`enqueue`): its rows
are stored `queued`, not `received`, so the relay never claims them. The relay's claim
rewrote each event's row (about 60 µs of PostgreSQL's CPU an event, the largest single
statement of a burst), and its polling added up to 20 ms before a job existed. What can go
wrong is what the relay already allows for:
- the worker dies between the commit and the enqueue: the events are `queued` with no job,
  and the sweep queues them after GATEHOUSE_SWEEP_GRACE, as after a relay that died there;
- Redis refuses or does not answer within 0.5 s (`redis_client.web`): the events are
  handed back to the relay (`received` again), and for `ENQUEUE_PAUSE` seconds this worker
  stores its groups `received`, for the relay, instead of trying Redis with each group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from greenlet import getcurrent, greenlet
from sqlalchemy.exc import SQLAlchemyError

from gatehouse import metrics
from gatehouse.extensions import redis_client
from gatehouse.queue.relay import queue_or_hand_back
from gatehouse.webhooks.inbox import DriverInsert, Stored, event_rows
from gatehouse.webhooks.senders.base import CanonicalEvent, SourceInfo

# The most connections a worker takes into one group: at 16 a group's insert binds at most
# 272 values, and the first request of a full group waits for the fifteen after it (about
# 5 ms of the web worker's CPU).
GROUP_MAX = 16

# What a parked request's greenlet hands back to the worker.
PARKED = object()

log = logging.getLogger("gatehouse.webhooks")

# After Redis refused a group's jobs, how long this worker leaves queuing to the relay.
ENQUEUE_PAUSE = 5.0
_enqueue_paused_until = 0.0


@dataclass
class _Parked:
    rows: list[dict[str, Any]]
    stored_ids: set[str] = field(default_factory=set)
    error: Exception | None = None


class InsertGroup:
    """The requests parked in one worker's round, until `flush` stores them."""

    def __init__(self) -> None:
        self.worker = getcurrent()
        self.parked: list[_Parked] = []
        self.inserter: DriverInsert | None = None
        self.app: Flask | None = None
        self.flushed = False
        # Events this group stored `queued`: `enqueue` queues their jobs.
        self.queued: list[str] = []

    def __len__(self) -> int:
        return len(self.parked)

    def can_park(self) -> bool:
        # Only a request the worker runs in a greenlet of its own can wait for the others;
        # once flushed, a group takes no more.
        return not self.flushed and getcurrent().parent is self.worker

    def store(
        self,
        inserter: DriverInsert,
        app: Flask,
        source: SourceInfo,
        events: list[CanonicalEvent],
        headers: dict[str, str],
    ) -> Stored:
        """Park this request until the group is flushed; its Stored, or the insert's error."""
        if not self.can_park() or (self.inserter is not None and inserter is not self.inserter):
            return inserter.store(source, events, headers)
        self.inserter, self.app = inserter, app
        parked = _Parked(event_rows(source, events, headers))
        self.parked.append(parked)
        self.worker.switch(PARKED)
        if parked.error is not None:
            raise parked.error
        return inserter.finish_group(source, events, parked.rows, parked.stored_ids)

    def flush(self) -> None:
        """Store every parked request's rows in one statement. Never raises: an error is
        handed to each parked request, which answers it as its own."""
        self.flushed = True
        if not self.parked or self.inserter is None:
            return
        rows = [row for p in self.parked for row in p.rows]
        queue_here = time.monotonic() >= _enqueue_paused_until
        if queue_here:
            for row in rows:
                if row["status"] == "received":
                    row["status"] = "queued"
        try:
            stored_ids = self.inserter.insert_group(rows)
        except Exception as exc:  # noqa: BLE001 - not swallowed: each request raises it
            for parked in self.parked:
                parked.error = exc
            return
        for parked in self.parked:
            parked.stored_ids = stored_ids
        if queue_here:
            self.queued = [
                r["id"] for r in rows if r["status"] == "queued" and r["id"] in stored_ids
            ]
        metrics.WEBHOOK_GROUPS.observe(len(self.parked))

    def enqueue(self) -> None:
        """Queue the jobs of the events this group stored `queued` (after their answers: a
        sender never waits for Redis). Never raises: what Redis refused goes to the relay."""
        global _enqueue_paused_until
        if not self.queued or self.app is None:
            return
        try:
            if queue_or_hand_back(self.queued, self.app, redis_client.web(self.app)):
                return
            _enqueue_paused_until = time.monotonic() + ENQUEUE_PAUSE
        except SQLAlchemyError as exc:
            # Left `queued` with no job: the sweep queues them after GATEHOUSE_SWEEP_GRACE.
            _enqueue_paused_until = time.monotonic() + ENQUEUE_PAUSE
            log.warning(
                "group.hand_back_failed", extra={"events": len(self.queued), "error": str(exc)}
            )


class _Parking:
    """The inserter as `views.store` calls it, parking in the current group."""

    def __init__(self, group: InsertGroup, inserter: DriverInsert, app: Flask) -> None:
        self.group = group
        self.inserter = inserter
        self.app = app

    def store(
        self, source: SourceInfo, events: list[CanonicalEvent], headers: dict[str, str]
    ) -> Stored:
        return self.group.store(self.inserter, self.app, source, events, headers)


_current: InsertGroup | None = None


def parking(inserter: DriverInsert, app: Flask) -> DriverInsert | _Parking:
    """What the fast path stores with: the current group's parking when this request can
    wait in one, else the inserter itself."""
    group = _current
    if group is None or not group.can_park():
        return inserter
    return _Parking(group, inserter, app)


@contextmanager
def collecting() -> Iterator[InsertGroup]:
    """A group for the requests the calling worker starts until it leaves the block."""
    global _current
    group = InsertGroup()
    _current = group
    try:
        yield group
    finally:
        _current = None


# What a request's greenlet hands back to the worker when the request has been served.
DONE = object()


class Slots:
    """The greenlets a worker serves requests in, kept from one connection to the next.

    A new greenlet per connection cost about 8% of hello-world's rate (hello-world alone, a
    new greenlet per connection: 4,417-4,817 req/s, against 4,901-5,141 without one);
    starting and ending one takes more than switching into one kept. Each serves a request,
    hands back DONE, and waits for the next.
    """

    def __init__(self, serve: Any) -> None:
        self.serve = serve
        self.free: list[greenlet] = []

    def _loop(self, *args: Any) -> None:
        while True:
            self.serve(*args)
            args = getcurrent().parent.switch(DONE)

    def start(self, *args: Any) -> greenlet | None:
        """Serve a connection in a kept greenlet; the greenlet if the request parked."""
        slot = self.free.pop() if self.free else greenlet(self._loop)
        if slot.switch(*args) is PARKED:
            return slot
        self.free.append(slot)
        return None

    def resume(self, slot: greenlet) -> None:
        """Resume a parked request until it has been served."""
        try:
            slot.switch()
        finally:
            if not slot.dead:
                self.free.append(slot)
