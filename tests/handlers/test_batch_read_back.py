"""A worker batch writes its members' cache from a read after its commit, outside the turn."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from flask import Flask

from gatehouse.extensions import db
from gatehouse.handlers.jobs import _read_back


def test_on_sqlite_the_read_back_takes_no_write_lock(app: Flask) -> None:
    """Another writer holding SQLite's write lock (a web insert, the other worker) does not
    hold up the read: only the batch's own writes wait for the turn."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: PostgreSQL readers never wait for writers")
    writer = sqlite3.connect(str(db.engine.url.database), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, held
    answers: list[dict[str, object]] = []

    def read_back() -> None:
        with app.app_context():
            answers.append(_read_back(["no-such-member"]))

    reader = threading.Thread(target=read_back, daemon=True)
    try:
        reader.start()
        reader.join(3)
        finished = not reader.is_alive()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        reader.join(35)
    assert finished, "the read waited for the write lock"
    assert answers == [{}]
