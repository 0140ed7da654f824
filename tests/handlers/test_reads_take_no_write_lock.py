"""On SQLite, what only reads the database takes no write lock: a worker batch's read-back
of its members' answers, and a recompute of the access cache. Web inserts and worker
batches go on meanwhile."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from gatehouse.extensions import db
from gatehouse.handlers.jobs import _read_back, recompute_members
from gatehouse.models import Member
from tests.helpers import bearer, create_token


@pytest.fixture
def write_lock_held(app: Flask) -> Iterator[None]:
    """Another connection holding SQLite's write lock, as a writer mid-transaction does."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: PostgreSQL readers never wait for writers")
    writer = sqlite3.connect(str(db.engine.url.database), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def finishes_while_the_lock_is_held(app: Flask, read: Callable[[], Any]) -> list[Any]:
    done: list[Any] = []

    def run() -> None:
        with app.app_context():
            done.append(read())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(3)  # the busy timeout is 30 s: a read that waited would still be waiting
    assert not thread.is_alive(), "the read waited for the write lock"
    return done


def test_on_sqlite_a_batchs_read_back_takes_no_write_lock(
    app: Flask, write_lock_held: None
) -> None:
    assert finishes_while_the_lock_is_held(app, lambda: _read_back(["no-such-member"])) == [{}]


@pytest.fixture
def three_members(app: Flask) -> list[str]:
    members = [Member(email=f"m{n}@example.com", access_version=1) for n in range(3)]
    db.session.add_all(members)
    db.session.commit()
    ids = [m.id for m in members]
    db.session.remove()  # no transaction left open by the test itself
    return ids


def test_on_sqlite_a_recompute_of_every_member_takes_no_write_lock(
    app: Flask, three_members: list[str], write_lock_held: None
) -> None:
    assert finishes_while_the_lock_is_held(app, recompute_members) == [3]


def test_on_sqlite_a_recompute_of_named_members_takes_no_write_lock(
    app: Flask, three_members: list[str], write_lock_held: None
) -> None:
    some = three_members[:2]
    assert finishes_while_the_lock_is_held(app, lambda: recompute_members(some)) == [2]


def test_on_sqlite_an_access_read_that_misses_the_cache_takes_no_write_lock(
    app: Flask, three_members: list[str]
) -> None:
    token = create_token("reader")
    db.session.remove()
    client = app.test_client()
    warm = client.get(f"/api/members/{three_members[0]}/access", headers=bearer(token))
    assert warm.status_code == 200  # the token is now cached: no lookup below
    missed = three_members[1]  # never computed: not in the cache
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: PostgreSQL readers never wait for writers")
    writer = sqlite3.connect(str(db.engine.url.database), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        [answer] = finishes_while_the_lock_is_held(
            app, lambda: client.get(f"/api/members/{missed}/access", headers=bearer(token))
        )
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert answer.status_code == 200
    assert answer.get_json()["member_id"] == missed
