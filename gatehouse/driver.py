"""Driver connections kept between calls, for the two statements run thousands of times a
second: the webhook insert (`gatehouse.webhooks.inbox.DriverInsert`) and the relay's
claim (`gatehouse.queue.relay.DriverClaim`).

Through SQLAlchemy's pool and `Connection` each of those paid a checkout, a reset on
check-in, an execution context and a result object: more than the statement itself. Here
each process and thread keeps one driver connection checked out of the engine's pool, and
errors are turned into what SQLAlchemy would have raised, with the same handling of a
connection the database dropped (it is invalidated and replaced, never reused).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, StatementError

from gatehouse.extensions import db


class HeldConnection:
    """One pooled driver connection per process and thread, kept checked out."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self.dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        sa_event.listen(engine, "engine_disposed", self.release)

    @property
    def current(self) -> Any:
        """This thread's connection, or None if it has none (yet, or since it broke)."""
        return getattr(self._local, "connection", None)

    @property
    def all_held(self) -> list[Any]:
        with self._lock:
            return list(self._all)

    def get(self) -> Any:
        held = self.current
        if held is not None and self._local.pid == os.getpid():
            return held
        # A connection is not shared with a forked child: it makes its own.
        self._local.connection = held = self.engine.raw_connection()
        self._local.pid = os.getpid()
        self._local.cursor = None
        with self._lock:
            self._all.append(held)
        return held

    def run_alone(self, sql: str, params: Any) -> list[Any]:
        """Run one statement as its own transaction (autocommit) and return its rows: on
        PostgreSQL one round trip instead of BEGIN, statement, COMMIT; on SQLite two fewer
        calls. It is committed once its rows have been read, before this returns."""
        raw: Any = self.get()
        try:
            # One cursor per connection, kept: making a psycopg cursor costs 8 µs of CPU, a
            # fiftieth of an accepted request.
            cursor = self._local.cursor
            if cursor is None:
                cursor = self._local.cursor = raw.cursor()
            if self.sqlite:  # the connection is in autocommit mode already
                return list(cursor.execute(sql, params).fetchall())
            connection = raw.dbapi_connection
            connection.autocommit = True
            try:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
            finally:
                connection.autocommit = False  # as SQLAlchemy expects a pooled connection
        except self.dbapi_error as exc:
            raise self.failed(raw, exc, sql) from exc

    def release(self, *_: Any) -> None:
        """Give every held connection back (the engine is being disposed)."""
        with self._lock:
            held, self._all = self._all, []
        for raw in held:
            if raw.dbapi_connection is not None:
                raw.close()
        self._local = threading.local()

    def failed(self, raw: Any, exc: Exception, statement: str) -> StatementError:
        """Roll back after a driver error and return the SQLAlchemy error to raise (the
        receive view answers it 503, the relay waits and tries again). A connection the
        database dropped is invalidated and forgotten: the next call gets a new one."""
        dropped = self.engine.dialect.is_disconnect(exc, raw.dbapi_connection, None)  # type: ignore[arg-type]
        if not dropped:
            try:
                raw.rollback()
            except self.dbapi_error:
                dropped = True
        if dropped:
            self._local.connection = self._local.cursor = None
            with self._lock:
                if raw in self._all:
                    self._all.remove(raw)
            raw.invalidate(exc)
        return DBAPIError.instance(
            statement, None, exc, self.dbapi_error, connection_invalidated=dropped
        )


T = TypeVar("T")


def for_engine(name: str, make: Callable[[Engine], T]) -> T:
    """The app's one `make(db.engine)`, kept in `app.extensions`: it lives and dies with the
    app (a module-level table keyed by engine kept every test app's). An app's engine is
    made once, by Flask-SQLAlchemy's `init_app`, so the hit path looks up nothing else: this
    runs on every accepted webhook."""
    extensions = current_app.extensions
    found: T | None = extensions.get(name)
    if found is None:
        found = extensions[name] = make(db.engine)
    return found
