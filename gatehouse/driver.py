"""Driver connections kept between calls, for the two statements run thousands of times a
second: the webhook insert (`gatehouse.webhooks.inbox.DriverInsert`) and the relay's
claim (`gatehouse.queue.relay.DriverClaim`).

Through SQLAlchemy's pool and `Connection` each of those paid a checkout, a reset on
check-in, an execution context and a result object: more than the statement itself. Here
each process and thread keeps one driver connection checked out of the engine's pool (on
PostgreSQL its statements are libpq prepared statements, run without psycopg's cursor), and
errors are turned into what SQLAlchemy would have raised, with the same handling of a
connection the database dropped (it is invalidated and replaced, never reused).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import current_app
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from sqlalchemy import bindparam
from sqlalchemy import event as sa_event
from sqlalchemy import update as sa_update
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
        self._local.prepared = {}
        with self._lock:
            self._all.append(held)
        return held

    def run_alone(self, sql: str, params: Any) -> list[Any]:
        """Run one statement as its own transaction (autocommit) and return its rows: on
        PostgreSQL one round trip instead of BEGIN, statement, COMMIT; on SQLite two fewer
        calls. It is committed once its rows have been read, before this returns."""
        raw: Any = self.get()
        try:
            if self.sqlite:  # the connection is in autocommit mode already
                # One cursor per connection, kept: making a cursor costs 8 µs of CPU (on
                # psycopg), a fiftieth of an accepted request.
                cursor = self._local.cursor
                if cursor is None:
                    cursor = self._local.cursor = raw.cursor()
                return list(cursor.execute(sql, params).fetchall())
            return self._run_prepared(raw.dbapi_connection, sql, params)
        except self.dbapi_error as exc:
            raise self.failed(raw, exc, sql) from exc

    def _run_prepared(self, connection: Any, sql: str, params: Any) -> list[Any]:
        """PostgreSQL: the statement prepared once per connection, then each call one
        libpq `PQexecPrepared`, its values dumped and its rows loaded by psycopg's own
        adapters. psycopg's cursor wraps the same call in a generator and a wait loop
        (three waits per execute), about 20 µs of CPU more per statement, a twentieth of
        an accepted request. No BEGIN is sent, so the statement commits by itself.

        Each distinct SQL text is prepared once and kept for the connection's life: the
        callers run a fixed few (the webhook insert, the relay's poll and claim)."""
        local = self._local
        statement: _Prepared | None = local.prepared.get(sql)
        pgconn = connection.pgconn
        if pgconn.transaction_status != pq.TransactionStatus.IDLE:
            # Inside a transaction the statement would not commit when this returns, and an
            # event would be answered 202 before it is stored. Only a bug elsewhere can leave
            # one open on this connection; what it left is not ours to keep.
            connection.rollback()
        if statement is None:
            statement = _Prepared.of(sql, f"gatehouse_{len(local.prepared)}", connection)
            _checked(pgconn.prepare(statement.name, statement.sql), statement)
            local.prepared[sql] = statement
        values = params if statement.keys is None else [params[key] for key in statement.keys]
        adapters = statement.adapters
        result = _checked(
            pgconn.exec_prepared(statement.name, adapters.dump_sequence(values, statement.formats)),
            statement,
        )
        adapters.set_pgresult(result)
        return adapters.load_rows(0, result.ntuples, tuple)

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
            self._local.connection = None  # `get` makes the next, with its own state
            with self._lock:
                if raw in self._all:
                    self._all.remove(raw)
            raw.invalidate(exc)
        return DBAPIError.instance(
            statement, None, exc, self.dbapi_error, connection_invalidated=dropped
        )


# `%(name)s` or `%s` (psycopg's placeholders), or a `%%` (a literal `%`).
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


@dataclass
class _Prepared:
    name: bytes
    sql: bytes  # with libpq's `$1, $2 …`
    keys: list[str] | None  # for named parameters: the name of `$1`, `$2` …; else None
    formats: list[PyFormat]  # one per `$n`, all text: typed by the statement's own casts
    adapters: Any  # psycopg's Transformer for this connection: dumps values, loads rows
    encoding: str

    @classmethod
    def of(cls, sql: str, name: str, connection: Any) -> _Prepared:
        keys: list[str] = []
        named = False

        def number(match: re.Match[str]) -> str:
            nonlocal named
            if match.group(0) == "%%":
                return "%"
            named = match.group(1) is not None
            keys.append(match.group(1) or "")
            return f"${len(keys)}"

        converted = _PLACEHOLDER.sub(number, sql)
        encoding = connection.info.encoding
        return cls(
            name=name.encode(),
            sql=converted.encode(encoding),
            keys=keys if named else None,
            formats=[PyFormat.TEXT] * len(keys),
            adapters=Transformer(connection),
            encoding=encoding,
        )


def _checked(result: Any, statement: _Prepared) -> Any:
    if result.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        raise pg_errors.error_from_result(result, encoding=statement.encoding)
    return result


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


class ExecuteMany:
    """A Core statement run for many rows at once on a session's connection, its values
    bound the way SQLAlchemy binds them, without SQLAlchemy's work per row.

    `session.execute(stmt, rows)` builds each row's parameters again from the compiled
    statement (`construct_params`) before calling the driver's `executemany`. A worker's
    lean batch writes about 190 rows in five such statements inside its write turn; without
    that per-row work the batch's apply step costs 3.5 ms of CPU instead of 4.1-4.3 on
    SQLite (docs/benchmarks.md). Here the statement is compiled once per dialect, and each
    value goes through its bind parameter's own type processor (`UTCDateTime`, `JSON`, ...),
    so the rows written are the ones SQLAlchemy writes (tests/test_execute_many.py compares
    them). An INSERT writes the columns the rows name, as SQLAlchemy's executemany takes
    them from the first row. Only for statements whose every parameter is given in each row:
    no column defaults or `onupdate` values are added.

    On PostgreSQL the rows go as one statement, each column's values one array bound in
    binary (`unnest`): `executemany` sent a Bind and an Execute per row, and PostgreSQL
    started and ended its executor for each. A worker's batch of 50 tag events then cost it
    0.185-0.20 ms of CPU an event instead of 0.24-0.26 (`jobs.process_events`, in-process,
    docs/benchmarks.md). An UPDATE made with `ExecuteMany.update` knows its key columns and
    goes the same way; rows that repeat a key go one by one, as before, since one statement
    changes a row once.
    """

    def __init__(self, stmt: Any, keys: tuple[str, ...] = (), values: tuple[str, ...] = ()):
        self.stmt = stmt
        self.keys, self.values = keys, values
        self._plans: dict[tuple[str, tuple[str, ...]], tuple[str, bool, list[tuple[str, Any]]]]
        self._plans = {}
        self._arrays: dict[tuple[str, ...], tuple[str, list[Any]]] = {}

    @classmethod
    def update(cls, table: Any, keys: tuple[str, ...], values: tuple[str, ...]) -> ExecuteMany:
        """UPDATE table SET <values> WHERE <keys>, with `b_<column>` parameters."""
        c = table.c
        stmt = (
            sa_update(table)
            .where(*(c[k] == bindparam(f"b_{k}") for k in keys))
            .values({v: bindparam(f"b_{v}", type_=c[v].type) for v in values})
        )
        return cls(stmt, keys, values)

    def _plan(self, dialect: Any, keys: tuple[str, ...]) -> tuple[str, bool, list[tuple[str, Any]]]:
        columns = list(keys) if self.stmt.is_insert else None
        compiled = self.stmt.compile(dialect=dialect, column_keys=columns)
        names = list(compiled.positiontup or compiled.binds)
        plan = [
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in names
        ]
        return compiled.string, compiled.positiontup is not None, plan

    def _array_plan(self, dialect: Any, names: tuple[str, ...]) -> tuple[str, list[Any]]:
        """PostgreSQL: the statement with one array parameter per column, and per parameter
        the row key it takes and the column type's bind processor."""
        table = self.stmt.table
        quote = dialect.identifier_preparer.quote
        if self.stmt.is_insert:
            columns = list(names)
        else:
            columns = [*self.keys, *self.values]
            names = tuple(f"b_{c}" for c in columns)
        steps = []
        arrays = []
        for name, column in zip(names, columns, strict=True):
            kind = table.c[column].type
            steps.append((name, kind.dialect_impl(dialect).bind_processor(dialect)))
            # Binary (`%b`): psycopg dumps an array as text element by element, escaping
            # each (1.3 µs a string, 2.8 a timestamp); in binary, 0.3.
            arrays.append(f"%b::{kind.compile(dialect=dialect)}[]")
        rows = f"unnest({', '.join(arrays)}) AS v({', '.join(quote(c) for c in columns)})"
        target = dialect.identifier_preparer.format_table(table)
        if self.stmt.is_insert:
            listed = ", ".join(quote(c) for c in columns)
            sql = f"INSERT INTO {target} ({listed}) SELECT {listed} FROM {rows}"  # noqa: S608
        else:
            sets = ", ".join(f"{quote(c)} = v.{quote(c)}" for c in self.values)
            match = " AND ".join(f"{target}.{quote(c)} = v.{quote(c)}" for c in self.keys)
            sql = f"UPDATE {target} SET {sets} FROM {rows} WHERE {match}"  # noqa: S608
        return sql, steps

    def _as_arrays(self, connection: Any, rows: list[dict[str, Any]]) -> bool:
        dialect = connection.dialect
        if dialect.name != "postgresql" or not (self.stmt.is_insert or self.keys):
            return False
        if self.keys:
            named = [tuple(row[f"b_{k}"] for k in self.keys) for row in rows]
            if len(set(named)) != len(named):
                return False
        names = tuple(rows[0])
        plan = self._arrays.get(names)
        if plan is None:
            plan = self._arrays[names] = self._array_plan(dialect, names)
        sql, steps = plan
        columns = tuple(
            [row[n] for row in rows] if p is None else [p(row[n]) for row in rows] for n, p in steps
        )
        connection.exec_driver_sql(sql, columns)
        return True

    def run(self, session: Any, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        connection = session.connection()
        if self._as_arrays(connection, rows):
            return
        dialect = connection.dialect
        key = (dialect.name, tuple(rows[0]))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(dialect, key[1])
        sql, positional, steps = plan
        params: list[Any]
        if positional:
            params = [tuple(row[n] if p is None else p(row[n]) for n, p in steps) for row in rows]
        else:
            params = [{n: row[n] if p is None else p(row[n]) for n, p in steps} for row in rows]
        # Through the Connection: its error handling (a dropped connection is invalidated)
        # and events stay; only the compiled statement's per-row work is skipped.
        connection.exec_driver_sql(sql, params)
