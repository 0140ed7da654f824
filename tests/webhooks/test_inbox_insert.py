"""The driver-level inbox insert writes the row SQLAlchemy would have written."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from gatehouse.extensions import db, write_turn
from gatehouse.handlers.jobs import process_events
from gatehouse.models import Event, Source
from gatehouse.webhooks import inbox
from gatehouse.webhooks.inbox import store_and_commit, store_events
from gatehouse.webhooks.senders.base import CanonicalEvent, SourceInfo
from tests.helpers import create_source


def source_info() -> SourceInfo:
    create_source("std", "standard")
    source_id = db.session.execute(select(Source.id).where(Source.slug == "std")).scalar_one()
    db.session.rollback()  # no transaction open: store_and_commit takes the driver path
    return SourceInfo(id=source_id, slug="std", kind="standard", crm="keap", secrets=())


def event(external_id: str) -> CanonicalEvent:
    return CanonicalEvent(
        type="contact.tag_added",
        external_id=external_id,
        occurred_at=datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC),
        payload={"type": "contact.tag_added", "contact": {"id": "7", "crm": "keap"}, "tag": "é"},
        contact_key="keap:7",
    )


def stored_as_is(external_id: str) -> dict[str, Any]:
    """The row as the database holds it (driver values, no SQLAlchemy type processing)."""
    with db.engine.connect() as conn:
        if _sqlite():
            row = conn.exec_driver_sql("SELECT * FROM events WHERE external_id = ?", (external_id,))
        else:
            row = conn.exec_driver_sql(
                "SELECT * FROM events WHERE external_id = %(e)s", {"e": external_id}
            )
        values = dict(row.mappings().one())
        conn.rollback()
    return values


def _sqlite() -> bool:
    return db.engine.dialect.name == "sqlite"


def test_driver_insert_row_matches_the_sqlalchemy_insert(app: Flask) -> None:
    info = source_info()
    headers = {"content-type": "application/json", "webhook-id": "x"}
    assert not db.session().in_transaction()
    fast = store_and_commit(info, [event("fast")], headers)  # the driver path
    assert inbox.driver_insert().held.current is not None  # it was taken
    with db.engine.begin() as conn:
        general = store_events(info, [event("general")], headers, conn)
    assert fast.new_ids and general.new_ids

    a, b = stored_as_is("fast"), stored_as_is("general")
    assert set(a) == set(b)
    for column in a:
        if column in ("id", "external_id", "received_at", "updated_at"):
            continue
        assert a[column] == b[column], column
    for column in ("received_at", "updated_at"):
        assert type(a[column]) is type(b[column]), column
        if isinstance(a[column], str):  # SQLite: the same text format
            assert re.sub(r"\d", "0", a[column]) == re.sub(r"\d", "0", b[column]), column
    assert a["effects"] is None and a["last_error"] is None  # SQL NULL, not JSON null

    # And read back through the ORM, the two are the same event.
    rows = {e.external_id: e for e in db.session.execute(select(Event)).scalars()}
    assert rows["fast"].payload == rows["general"].payload == event("x").payload
    assert rows["fast"].occurred_at == rows["general"].occurred_at
    assert rows["fast"].status == rows["general"].status == "received"
    assert rows["fast"].received_at.tzinfo is not None


def test_a_duplicate_takes_the_general_path_and_counts_the_delivery(app: Flask) -> None:
    info = source_info()
    first = store_and_commit(info, [event("dup")], {})
    again = store_and_commit(info, [event("dup")], {})
    assert again.ids == first.ids
    assert again.new_ids == [] and again.duplicates == 1
    deliveries = db.session.execute(
        select(Event.deliveries).where(Event.external_id == "dup")
    ).scalar_one()
    assert deliveries == 2


def test_on_sqlite_inserts_wait_their_turn_at_the_write_lock(app: Flask, tmp_path: Any) -> None:
    """Web workers queue on a kernel file lock, not SQLite's sleeping busy handler."""
    if not _sqlite():
        pytest.skip("SQLite only: PostgreSQL locks rows")
    info = source_info()
    holder = subprocess.Popen(  # another process holding the turn for a moment
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(0.5)\n",
            f"{db.engine.url.database}.write-lock",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    started = time.monotonic()
    stored = store_and_commit(info, [event("waited")], {})
    waited = time.monotonic() - started
    holder.wait(5)
    assert stored.new_ids
    assert waited >= 0.3  # it waited for the other process's turn to end


@contextmanager
def turn_held_by_another_thread(seconds: float = 0.3) -> Iterator[list[float]]:
    """Another thread of this process in the write turn for `seconds`, as a web insert (or
    a worker's relay thread) is; yields the list its release time goes into."""
    engine = db.engine  # the thread has no app context
    entered = threading.Event()
    released: list[float] = []

    def hold() -> None:
        with write_turn(engine):
            entered.set()
            time.sleep(seconds)
            released.append(time.monotonic())

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(5)
    try:
        yield released
    finally:
        holder.join(5)


def test_on_sqlite_threads_of_one_process_take_turns_too(app: Flask) -> None:
    """flock does not tell threads of one process apart (they share its descriptor); a
    threaded web worker (gunicorn's gthread) must still queue at the write turn."""
    if not _sqlite():
        pytest.skip("SQLite only: PostgreSQL locks rows")
    engine = db.engine
    second_in: list[float] = []

    def second() -> None:
        with write_turn(engine):
            second_in.append(time.monotonic())

    with turn_held_by_another_thread() as release_at:
        other = threading.Thread(target=second)
        other.start()
    other.join(5)
    assert second_in and release_at
    assert second_in[0] >= release_at[0]  # it entered only once the holder had left


def test_on_sqlite_a_worker_batch_waits_at_the_turn_web_inserts_take(app: Flask) -> None:
    """One turn for every frequent writer: a worker batch that met a web insert at SQLite's
    busy handler instead would sleep in its steps (1, 2, 5 … 100 ms), and so would the
    web requests that met the batch."""
    if not _sqlite():
        pytest.skip("SQLite only: PostgreSQL locks rows")
    with turn_held_by_another_thread() as release_at:
        results = process_events(["no-such-event"])
        done_at = time.monotonic()
    assert results == {"no-such-event": {"event": "no-such-event", "status": "missing"}}
    assert release_at and done_at >= release_at[0]  # it read nothing before the turn was its


def test_the_driver_connection_is_kept_between_inserts(app: Flask) -> None:
    info = source_info()
    store_and_commit(info, [event("one")], {})
    driver = inbox.driver_insert()
    held = driver.held.current
    store_and_commit(info, [event("two")], {})
    assert driver.held.current is held  # no pool checkout per request
    assert held.dbapi_connection is not None


def test_the_driver_connection_keeps_one_cursor(app: Flask) -> None:
    if not _sqlite():
        pytest.skip("SQLite only: on PostgreSQL the insert runs without a cursor (next test)")
    info = source_info()
    store_and_commit(info, [event("one")], {})
    driver = inbox.driver_insert()
    made: list[Any] = []
    held = driver.held.current

    class Counting:
        """The held connection, counting the cursors made on it."""

        def __getattr__(self, name: str) -> Any:
            return getattr(held, name)

        def cursor(self) -> Any:
            made.append(1)
            return held.cursor()

    driver.held._local.connection = Counting()
    driver.held._local.cursor = None  # as on a new connection
    for name in ("two", "three", "four"):
        assert store_and_commit(info, [event(name)], {}).new_ids
    assert len(made) == 1


def test_on_postgresql_the_insert_is_prepared_once_and_run_per_request(app: Flask) -> None:
    if _sqlite():
        pytest.skip("PostgreSQL only: libpq's prepared statements")
    info = source_info()
    for name in ("one", "two", "three", "four"):
        assert store_and_commit(info, [event(name)], {}).new_ids
    held = inbox.driver_insert().held.current
    # Asked on the held connection itself: prepared statements belong to their session.
    found = held.dbapi_connection.execute(
        "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements"
        " WHERE name LIKE 'gatehouse\\_%'"
    ).fetchall()
    held.dbapi_connection.rollback()
    assert len(found) == 1
    statement, runs = found[0]
    assert statement.startswith("INSERT INTO events") and "$1" in statement
    assert runs == 4
    assert db.session.scalar(select(func.count()).select_from(Event)) == 4


def test_a_broken_driver_connection_is_replaced(app: Flask) -> None:
    info = source_info()
    store_and_commit(info, [event("before")], {})
    driver = inbox.driver_insert()
    broken = driver.held.current
    broken.dbapi_connection.close()  # as a database restart would leave it

    with pytest.raises(DBAPIError):  # answered 503 by the view; the sender retries
        store_and_commit(info, [event("during")], {})
    assert driver.held.current is None
    after = store_and_commit(info, [event("after")], {})
    assert after.new_ids
    assert driver.held.current is not broken
    stored = set(db.session.execute(select(Event.external_id)).scalars())
    assert stored == {"before", "after"}


def test_disposing_the_engine_gives_the_held_connections_back(app: Flask) -> None:
    info = source_info()
    store_and_commit(info, [event("one")], {})
    driver = inbox.driver_insert()
    held = driver.held.current
    db.engine.dispose()
    assert held.dbapi_connection is None  # closed, not leaked (PostgreSQL counts them)
    assert driver.held.all_held == []
    assert store_and_commit(info, [event("two")], {}).new_ids


def test_one_event_is_its_own_transaction_and_several_stay_all_or_nothing(app: Flask) -> None:
    info = source_info()
    assert store_and_commit(info, [event("alone")], {}).new_ids  # autocommit, one statement
    driver = inbox.driver_insert()
    held = driver.held.current.dbapi_connection
    if not _sqlite():
        assert held.autocommit is False  # left as SQLAlchemy expects it
    # Several events with one already stored: the driver path writes none of them (its
    # transaction rolls back) and the general path stores the new ones and counts the old.
    batch = store_and_commit(info, [event("new-1"), event("alone"), event("new-2")], {})
    assert len(batch.new_ids) == 2 and batch.duplicates == 1
    deliveries = dict(db.session.execute(select(Event.external_id, Event.deliveries)).all())
    assert deliveries == {"alone": 2, "new-1": 1, "new-2": 1}


def test_on_sqlite_one_event_is_one_statement_and_several_one_transaction(app: Flask) -> None:
    """What the autocommitted single insert saves is BEGIN and COMMIT: checked on the
    statements SQLite itself runs."""
    if not _sqlite():
        pytest.skip("SQLite's trace callback; PostgreSQL is covered by the test above")
    info = source_info()
    store_and_commit(info, [event("warm")], {})  # the held connection exists now
    held = inbox.driver_insert().held.current.dbapi_connection
    ran: list[str] = []
    held.set_trace_callback(lambda sql: ran.append(sql.split()[0].upper()))
    try:
        store_and_commit(info, [event("one")], {})
        single = list(ran)
        ran.clear()
        store_and_commit(info, [event("two-a"), event("two-b")], {})
        several = list(ran)
    finally:
        held.set_trace_callback(None)
    assert single == ["INSERT"]
    assert several == ["BEGIN", "INSERT", "INSERT", "COMMIT"]
