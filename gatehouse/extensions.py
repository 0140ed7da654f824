"""Extensions are created unbound here and attached to an app in `init_app`."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from flask import Flask, current_app
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine

from gatehouse.models.base import Base

db = SQLAlchemy(model_class=Base)
migrate = Migrate()


class RedisClient:
    """One connection pool per app; `redis_client.get()` returns the current app's client."""

    def init_app(self, app: Flask) -> None:
        client = redis.Redis.from_url(
            app.config["REDIS_URL"],
            socket_connect_timeout=2,
            socket_timeout=10,
            health_check_interval=30,
        )
        app.extensions["gatehouse.redis"] = client
        # The web worker's own client (it queues the jobs of a group it stored): a Redis
        # that hangs holds a web worker for this long, not for socket_timeout above.
        app.extensions["gatehouse.redis_web"] = redis.Redis.from_url(
            app.config["REDIS_URL"], socket_connect_timeout=0.5, socket_timeout=0.5
        )

    @staticmethod
    def get(app: Flask | None = None) -> redis.Redis:
        client: redis.Redis = (app or current_app).extensions["gatehouse.redis"]
        return client

    @staticmethod
    def web(app: Flask | None = None) -> redis.Redis:
        client: redis.Redis = (app or current_app).extensions["gatehouse.redis_web"]
        return client


redis_client = RedisClient()


# Execution option for a connection that only reads (the relay's poll): on SQLite it is
# not made to queue for the single write lock.
READ_ONLY = "gatehouse_read_only"


def begin_read_only() -> bool:
    """Begin the session's next transaction as a read; True if it began one. On SQLite
    there is then no BEGIN IMMEDIATE: it takes no write lock, and each statement reads a
    snapshot of its own (read what must agree in one statement, or versions first). In a
    transaction already open, the reads simply join it (False)."""
    session = db.session()
    if session.in_transaction():
        return False
    session.connection(execution_options={READ_ONLY: True})
    return True


WAL_AUTOCHECKPOINT_PAGES = 20_000  # 80 MB of WAL at the default 4 KB page


def configure_sqlite(engine: Engine) -> None:
    """WAL + synchronous=NORMAL survives a kill -9 of any process (not a power cut).

    Transactions begin IMMEDIATE so two writers queue on the busy timeout instead of
    failing with "database is locked" when a reader tries to upgrade.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        # No web request pays for a checkpoint (copying the WAL into the database, with an
        # fsync): the relay checkpoints every half second. This bound only matters if it stops.
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            return  # no BEGIN: each statement reads a snapshot of its own, takes no lock
        conn.exec_driver_sql("BEGIN IMMEDIATE")


# Per (process, lock file): the open descriptor, and a lock for the threads of that process.
_TURNS: dict[tuple[int, str], tuple[int, threading.Lock]] = {}
_TURNS_MADE = threading.Lock()


def takes_turns(engine: Engine) -> bool:
    """Whether the engine's writers take turns (`write_turn`): a SQLite file."""
    url = engine.url
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")


@contextmanager
def write_turn(engine: Engine) -> Iterator[None]:
    """On a SQLite file, the frequent writers take turns at its single write lock through
    `flock`: web inserts, the relay's claims and checkpoints, and worker batches.

    SQLite's own wait for a busy database sleeps 1 ms, then 2, 5, 10 … up to 100 ms at a
    time, while a web request holds the write lock for tens of microseconds and a worker
    batch for a few milliseconds: a writer that collides with another would mostly sleep.
    The kernel wakes the next `flock` waiter the moment the lock is free, and drops the lock
    of a process that dies. All of them take the one turn: a web request that met a worker
    batch at SQLite's busy handler instead slept through several of its steps (with two
    workers running, posts answered in 25 ms at the median instead of 14: docs/benchmarks.md,
    "One write turn for every SQLite writer"). Elsewhere (PostgreSQL): nothing to do.
    """
    if not takes_turns(engine):
        yield
        return
    url = engine.url
    key = (os.getpid(), f"{url.database}.write-lock")  # a descriptor is not shared by a fork
    turn = _TURNS.get(key)
    if turn is None:
        with _TURNS_MADE:
            turn = _TURNS.get(key)
            if turn is None:
                fd = os.open(key[1], os.O_RDWR | os.O_CREAT, 0o600)
                turn = _TURNS[key] = (fd, threading.Lock())
    fd, threads = turn
    # flock tells processes apart, not the threads of one (they share the descriptor): a
    # thread lock first, so threaded web workers, and a worker's relay thread, take turns
    # too. Not reentrant: a turn is never taken inside a turn.
    with threads:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def init_database(app: Flask) -> None:
    uri: str = app.config["SQLALCHEMY_DATABASE_URI"]
    options: dict[str, Any] = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
    if uri.startswith("sqlite"):
        options.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
    else:
        # No pre-ping: it costs a round trip per request, as much as the insert itself. A
        # connection broken by a database restart fails its request with 503 (the sender
        # retries) and SQLAlchemy then replaces every pooled connection.
        options.setdefault("pool_pre_ping", False)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    db.init_app(app)
    migrate.init_app(app, db, directory=str(app.config["MIGRATIONS_DIR"]))
    if uri.startswith("sqlite"):
        with app.app_context():
            configure_sqlite(db.engine)
