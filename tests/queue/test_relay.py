"""The relay: the receive view stores `received`; the relay claims and queues, once each."""

from __future__ import annotations

import shutil
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text, update
from sqlalchemy.exc import SQLAlchemyError

from gatehouse.extensions import WAL_AUTOCHECKPOINT_PAGES, db
from gatehouse.models import Event
from gatehouse.queue import get_queue
from gatehouse.queue.relay import (
    RelayThread,
    checkpoint,
    driver_claim,
    relay_all,
    relay_pending,
)
from gatehouse.queue.sweep import sweep
from tests.helpers import create_source, post_standard, run_worker


def post_events(client: FlaskClient, count: int, slug: str = "std") -> list[str]:
    secret = create_source(slug, "standard")
    ids = []
    for i in range(count):
        event = {"type": "contact.tag_added", "contact": {"id": str(i)}, "tag": "gold"}
        r = post_standard(client, slug, secret, event, f"msg_{slug}_{i}")
        assert r.status_code == 202, r.json
        ids += r.json["events"]
    return ids


def statuses(ids: list[str]) -> dict[str, str]:
    rows = db.session.execute(select(Event.id, Event.status).where(Event.id.in_(ids))).all()
    db.session.rollback()
    return {row[0]: row[1] for row in rows}


def test_the_receive_view_stores_received_and_queues_nothing(
    app: Flask, client: FlaskClient
) -> None:
    ids = post_events(client, 3)
    assert set(statuses(ids).values()) == {"received"}
    assert get_queue(app).job_ids == []


def test_relay_queues_each_received_event_once_and_marks_it_queued(
    app: Flask, client: FlaskClient
) -> None:
    ids = post_events(client, 5)
    assert relay_pending(app) == 5
    assert set(statuses(ids).values()) == {"queued"}
    assert sorted(get_queue(app).job_ids) == sorted(ids)
    # Nothing is claimed twice: a second pass finds nothing, the queue is unchanged.
    assert relay_pending(app) == 0
    assert sorted(get_queue(app).job_ids) == sorted(ids)


def test_relay_takes_at_most_its_batch_and_relay_all_takes_the_rest(
    app: Flask, client: FlaskClient
) -> None:
    ids = post_events(client, 7)
    assert relay_pending(app, limit=3) == 3
    assert list(statuses(ids).values()).count("received") == 4
    assert relay_all(app) == 4
    assert sorted(get_queue(app).job_ids) == sorted(ids)


def test_an_event_another_relay_claimed_is_not_queued_again(
    app: Flask, client: FlaskClient
) -> None:
    [first, second] = post_events(client, 2)
    # Another relay claimed `first` between this relay's read and its claim.
    db.session.execute(update(Event).where(Event.id == first).values(status="queued"))
    db.session.commit()
    assert relay_pending(app) == 1
    assert get_queue(app).job_ids == [second]


def test_redis_down_hands_the_claim_back_and_the_events_stay_received(
    app: Flask, client: FlaskClient, redis_server: Any
) -> None:
    ids = post_events(client, 2)
    redis_server.stop()
    try:
        with pytest.raises(redis.RedisError):
            relay_pending(app)
        assert set(statuses(ids).values()) == {"received"}
    finally:
        redis_server.start()
    assert relay_pending(app) == 2
    assert sorted(get_queue(app).job_ids) == sorted(ids)


def test_events_claimed_by_a_relay_killed_before_its_enqueue_are_found_by_the_sweep(
    app: Flask, client: FlaskClient
) -> None:
    ids = post_events(client, 2)
    # What a relay leaves when killed between the claim's commit and the enqueue.
    db.session.execute(update(Event).where(Event.id.in_(ids)).values(status="queued"))
    db.session.commit()
    result = sweep(app, grace_seconds=0)
    assert result.lost == 2
    assert sorted(get_queue(app).job_ids) == sorted(ids)


def test_a_worker_relays_before_it_takes_jobs(app: Flask, client: FlaskClient) -> None:
    ids = post_events(client, 3)
    run_worker(app)
    # Processed to an end (skipped: these contacts have no member yet), none left behind.
    assert set(statuses(ids).values()) == {"skipped"}
    assert get_queue(app).job_ids == []


def test_relay_thread_queues_what_arrives_while_it_runs(app: Flask, client: FlaskClient) -> None:
    thread = RelayThread(app, poll=0.01)
    thread.start()
    try:
        ids = post_events(client, 4)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and thread.relayed < 4:
            time.sleep(0.02)
    finally:
        thread.stop()
    assert not thread.is_alive()
    assert thread.relayed == 4
    assert set(statuses(ids).values()) == {"queued"}


def events_in_database_file(tmp_path: Path) -> int:
    """Events in the database file alone, as if its write-ahead log were not there."""
    copy = tmp_path / "copy.db"
    shutil.copyfile(str(db.engine.url.database), copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:  # the table itself is still only in the log
        return 0
    finally:
        conn.close()


def test_checkpoint_copies_the_write_ahead_log_into_the_database(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: PostgreSQL checkpoints by itself")
    limit = db.session.execute(text("PRAGMA wal_autocheckpoint")).scalar_one()
    db.session.rollback()
    assert limit == WAL_AUTOCHECKPOINT_PAGES  # requests do not checkpoint on their own
    post_events(client, 3)
    assert events_in_database_file(tmp_path) == 0
    checkpoint(app)
    assert events_in_database_file(tmp_path) == 3


def test_an_idle_relay_backs_off_and_a_new_event_still_arrives_quickly(
    app: Flask, client: FlaskClient
) -> None:
    thread = RelayThread(app, poll=0.01, idle_poll_max=0.1)
    thread.start()
    try:
        time.sleep(1.0)
        idle_polls = thread.polls
        # At a fixed 10 ms it would have polled about 100 times; backing off to 100 ms, ~15.
        assert idle_polls <= 30
        [event_id] = post_events(client, 1)
        posted = time.monotonic()
        while time.monotonic() - posted < 5 and thread.relayed < 1:
            time.sleep(0.005)
        waited = time.monotonic() - posted
    finally:
        thread.stop()
    assert thread.relayed == 1
    assert waited < 0.5  # at most one idle wait (100 ms) plus the claim, with room for a slow CI
    assert statuses([event_id]) == {event_id: "queued"}


def test_a_relay_poll_does_not_wait_for_the_sqlite_write_lock(
    app: Flask, client: FlaskClient
) -> None:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: PostgreSQL readers never wait for writers")
    [event_id] = post_events(client, 1)
    # Another connection holds the write lock (a web insert, a worker's batch).
    with db.engine.connect() as writer:
        writer.exec_driver_sql("SELECT 1")  # its transaction began IMMEDIATE: the lock
        started = time.monotonic()
        assert driver_claim().pending(10) == [event_id]
        assert time.monotonic() - started < 1.0  # the busy timeout is 30 s
        writer.rollback()


def test_the_relay_polls_and_claims_in_one_statement_each_on_a_kept_connection(
    app: Flask, client: FlaskClient
) -> None:
    """What makes a relay batch cheap: no pool checkout, no BEGIN/COMMIT around the claim.
    Checked on the statements SQLite itself runs."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's trace callback; the claim's outcome is covered on both")
    post_events(client, 1, slug="warm")
    assert relay_pending(app) == 1  # the relay's connection exists now
    held = driver_claim().held.current
    ids = post_events(client, 3)
    ran: list[str] = []
    held.dbapi_connection.set_trace_callback(lambda sql: ran.append(sql.split()[0].upper()))
    try:
        assert relay_pending(app) == 3
    finally:
        held.dbapi_connection.set_trace_callback(None)
    assert ran == ["SELECT", "UPDATE"]
    assert driver_claim().held.current is held
    assert set(statuses(ids).values()) == {"queued"}


def test_a_relay_whose_database_connection_broke_takes_a_new_one(
    app: Flask, client: FlaskClient
) -> None:
    post_events(client, 1, slug="warm")
    assert relay_pending(app) == 1
    broken = driver_claim().held.current
    broken.dbapi_connection.close()  # as a database restart would leave it
    ids = post_events(client, 2)
    with pytest.raises(SQLAlchemyError):  # the relay thread logs it and waits a second
        relay_pending(app)
    assert set(statuses(ids).values()) == {"received"}
    assert relay_pending(app) == 2
    assert driver_claim().held.current is not broken
    assert set(ids) <= set(get_queue(app).job_ids)


WRITER = """
import fcntl, os, sqlite3, sys, time
db, lock, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
conn = sqlite3.connect(db, isolation_level=None, timeout=30)
conn.execute("PRAGMA wal_autocheckpoint=0")  # as web connections, it leaves them to the relay
conn.execute("CREATE TABLE IF NOT EXISTS burst (body BLOB)")
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
print("writing", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a web worker takes its turn for each insert
    conn.execute("INSERT INTO burst VALUES (randomblob(3000))")
    fcntl.flock(fd, fcntl.LOCK_UN)
"""


def restarts_of_the_log(database: str) -> int:
    """The WAL header's checkpoint sequence number: SQLite adds one each time the log
    starts over from its first frame."""
    with open(f"{database}-wal", "rb") as wal:
        return int(struct.unpack(">8I", wal.read(32))[3])


def test_a_checkpoint_during_a_burst_copies_the_whole_log_so_it_starts_over(
    app: Flask, client: FlaskClient
) -> None:
    """Another process inserts without pause, taking the write turn for each insert as
    the web workers do. A checkpoint that copied only what was there when it began would
    leave the newest frames behind every time: the log would never start over, and web
    requests would end up running checkpoints themselves at the automatic limit."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: PostgreSQL checkpoints by itself")
    post_events(client, 2)
    database = str(db.engine.url.database)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, database, f"{database}.write-lock", "2.5"],
        stdout=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"writing\n"
        time.sleep(0.2)  # the log holds frames from the writer now
        before = restarts_of_the_log(database)
        for _ in range(5):
            checkpoint(app)
            time.sleep(0.1)  # the writer's next insert starts the log over
        after = restarts_of_the_log(database)
    finally:
        writer.wait(10)
    assert after - before >= 4
