"""On SQLite, what only reads the database takes no write lock: the read-back of members'
answers (`cache.refresh`: after a worker batch, an admin action, a recompute) and an access
read that misses the cache. Web inserts and worker batches go on meanwhile."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask

from gatehouse.access import cache
from gatehouse.extensions import db
from gatehouse.handlers.jobs import process_events, recompute_members
from gatehouse.models import Member
from tests.handlers.test_tag_ordering import TAGS, Spec, outcome, store
from tests.helpers import bearer, create_token


def sqlite_only() -> None:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: PostgreSQL readers never wait for writers")


@contextmanager
def write_lock_held_elsewhere() -> Iterator[None]:
    """Another connection holding SQLite's write lock, as a writer mid-transaction does."""
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
    with write_lock_held_elsewhere():
        thread.start()
        thread.join(3)  # the busy timeout is 30 s: a read that waited would still be waiting
        assert not thread.is_alive(), "the read waited for the write lock"
    return done


@pytest.fixture
def three_members(app: Flask) -> list[str]:
    members = [Member(email=f"m{n}@example.com", access_version=1) for n in range(3)]
    db.session.add_all(members)
    db.session.commit()
    ids = [m.id for m in members]
    db.session.remove()  # no transaction left open by the test itself
    return ids


def test_on_sqlite_a_cache_refresh_takes_no_write_lock(
    app: Flask, three_members: list[str]
) -> None:
    sqlite_only()
    [answers] = finishes_while_the_lock_is_held(app, lambda: cache.refresh(three_members))
    assert sorted(answers) == sorted(three_members)
    assert finishes_while_the_lock_is_held(app, lambda: cache.refresh(["no-such-member"])) == [{}]


def test_on_sqlite_a_batch_writes_its_members_cache_outside_the_write_turn(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's turn ends with its commit: the read-back and the cache write come after,
    so the web inserts waiting for the turn do not wait for them too."""
    sqlite_only()
    ids = store([Spec("member.provision", 0), Spec("contact.tag_added", 1, tag=TAGS[0])], "ct")
    db.session.remove()
    lock_file = f"{db.engine.url.database}.write-lock"
    turn_free: list[bool] = []
    real_store = cache.store

    def store_when_the_turn_is_free(answers: Any, app: Flask | None = None) -> None:
        fd = os.open(lock_file, os.O_RDWR)  # a second open file: it conflicts in-process too
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            turn_free.append(True)
        except BlockingIOError:
            turn_free.append(False)
        finally:
            os.close(fd)
        real_store(answers, app)

    monkeypatch.setattr(cache, "store", store_when_the_turn_is_free)
    results = process_events(ids)
    assert {r["status"] for r in results.values()} == {"processed"}
    assert turn_free == [True]
    tags, answer = outcome("ct")
    assert tags == [TAGS[0]] and answer is not None  # the cache was written all the same


def test_on_sqlite_a_recompute_of_every_member_takes_no_write_lock(
    app: Flask, three_members: list[str]
) -> None:
    sqlite_only()
    assert finishes_while_the_lock_is_held(app, recompute_members) == [3]


def test_on_sqlite_a_recompute_of_named_members_takes_no_write_lock(
    app: Flask, three_members: list[str]
) -> None:
    sqlite_only()
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
    sqlite_only()
    [answer] = finishes_while_the_lock_is_held(
        app, lambda: client.get(f"/api/members/{missed}/access", headers=bearer(token))
    )
    assert answer.status_code == 200
    assert answer.get_json()["member_id"] == missed
