"""The durable inbox: insert events idempotently on (source, external id)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import bindparam, insert, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from gatehouse.driver import HeldConnection, for_engine
from gatehouse.extensions import db, write_turn
from gatehouse.models import Event, new_id
from gatehouse.webhooks.senders.base import CanonicalEvent, SourceInfo


@dataclass
class Stored:
    ids: list[str]  # every event of the request, new and duplicate, in order
    new_ids: list[str]  # newly stored and left for the relay to queue
    duplicates: int


class EventStore(Protocol):
    def store(
        self, source: SourceInfo, events: list[CanonicalEvent], headers: dict[str, str]
    ) -> Stored: ...


def _insert_ignoring_duplicates(dialect: str) -> Any:
    """The insert statement, built once per dialect and executed with bound parameters.

    A statement carrying its rows as a literal multi-VALUES list is recompiled by SQLAlchemy
    on every request (about 3 ms, more than the rest of the insert); this one has no values
    of its own, so its compiled form is cached and reused. A Core insert into the table
    (not the ORM entity) also skips the ORM bulk-insert machinery: column defaults still
    apply, they are Core defaults.
    """
    stmt = _INSERTS.get(dialect)
    if stmt is not None:
        return stmt
    table: Any = Event.__table__
    if dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing(
            index_elements=["source_id", "external_id"]
        )
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(
            index_elements=["source_id", "external_id"]
        )
    else:  # pragma: no cover - other databases are not supported
        stmt = insert(table)
    stmt = stmt.returning(table.c.id, table.c.external_id)
    _INSERTS[dialect] = stmt
    return stmt


_INSERTS: dict[str, Any] = {}


def event_rows(
    source: SourceInfo, events: list[CanonicalEvent], headers: dict[str, str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for event in events:
        if event.external_id in seen:
            continue  # the same id twice in one batch is one event
        seen.add(event.external_id)
        rows.append(
            {
                "id": new_id(),
                "source_id": source.id,
                "external_id": event.external_id,
                "type": event.type,
                "occurred_at": event.occurred_at,
                # The relay turns `received` into `queued` once the job exists (a web
                # worker's group stores its rows `queued` and queues them itself: group.py).
                "status": "skipped" if event.skip_reason else "received",
                "reason": event.skip_reason,
                "contact_key": event.contact_key,
                "payload": event.payload,
                "headers": headers,
                "attempts": 0,
                "deliveries": 1,
            }
        )
    return rows


def store_events(
    source: SourceInfo,
    events: list[CanonicalEvent],
    headers: dict[str, str],
    connection: Connection | None = None,
) -> Stored:
    """Insert new events and count deliveries of known ones; the caller commits.

    On `connection` when given (a Core transaction: the receive view's hot path, about a
    third cheaper in CPU than the ORM session's execute + commit), else on the session.
    """
    return _store_rows(source, events, event_rows(source, events, headers), connection)


def _store_rows(
    source: SourceInfo,
    events: list[CanonicalEvent],
    rows: list[dict[str, Any]],
    connection: Connection | None,
) -> Stored:
    run: Any = connection if connection is not None else db.session
    dialect = connection.dialect if connection is not None else db.engine.dialect
    stmt = _insert_ignoring_duplicates(dialect.name)
    # One row (the usual case) is a plain execute; several go as one executemany, which
    # SQLAlchemy sends as multi-row INSERT ... RETURNING ("insertmanyvalues").
    result = run.execute(stmt, rows[0] if len(rows) == 1 else rows)
    inserted = {ext: eid for eid, ext in result}
    duplicates = [r["external_id"] for r in rows if r["external_id"] not in inserted]
    return _stored(events, rows, inserted, _count_deliveries(run, source, duplicates))


def _count_deliveries(run: Any, source: SourceInfo, external_ids: list[str]) -> dict[str, str]:
    """Count one more delivery of each known event; {external id: event id}."""
    if not external_ids:
        return {}
    result = run.execute(
        update(Event)
        .where(Event.source_id == source.id, Event.external_id.in_(external_ids))
        .values(deliveries=Event.deliveries + 1)
        .returning(Event.id, Event.external_id)
    )
    return {ext: eid for eid, ext in result}


def _stored(
    events: list[CanonicalEvent],
    rows: list[dict[str, Any]],
    inserted: dict[str, str],
    existing: dict[str, str],
) -> Stored:
    """The answer to a request from {external id: event id} of new and of known events."""
    skipped = {e.external_id for e in events if e.skip_reason}
    ids = [inserted.get(r["external_id"]) or existing[r["external_id"]] for r in rows]
    new_ids = [eid for ext, eid in inserted.items() if ext not in skipped]
    return Stored(ids=ids, new_ids=new_ids, duplicates=len(existing))


class DriverInsert:
    """The inbox insert of new events, run on the database driver's own connection.

    The hot path of a burst is one new event per request. Through SQLAlchemy's Connection
    its insert + commit cost about twice the work of the driver calls they are made of
    (execution context, events, result objects), and on SQLite that work happens while
    the single write lock is held, which the other web workers then wait for. Here the
    statement is compiled by SQLAlchemy once, every column is bound explicitly (the Core
    defaults are the model's own callables, called here), and each value goes through the
    column type's own bind processor (`UTCDateTime`, `JSON`), so the row is the one
    SQLAlchemy would have written; `tests/webhooks/test_inbox_insert.py` compares them.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine  # not `db.engine`: a lookup through the app, per request
        dialect = engine.dialect
        table: Any = Event.__table__
        self.dialect = dialect.name
        self.columns = [column.name for column in table.c]
        # The general path's statement, with every column bound explicitly.
        stmt = _insert_ignoring_duplicates(dialect.name).values(
            {name: bindparam(f"p_{name}") for name in self.columns}
        )
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        self.positional = compiled.positiontup  # None for named paramstyles (psycopg)
        self.processors = {
            f"p_{column.name}": column.type.dialect_impl(dialect).bind_processor(dialect)
            for column in table.c
        }
        self.defaults = {
            name: table.c[name].default.arg
            for name in self.columns
            if table.c[name].default is not None and callable(table.c[name].default.arg)
        }
        # Per column: (name, bind name, default callable, bind processor), worked out once.
        self.plan = [
            (name, f"p_{name}", self.defaults.get(name), self.processors[f"p_{name}"])
            for name in self.columns
        ]
        self.held = HeldConnection(engine)
        # Per number of rows: the group insert's SQL and, on SQLite, its parameters' order.
        self._groups: dict[int, tuple[str, Any]] = {}

    def params(self, row: dict[str, Any]) -> Any:
        bound = self._bound(row)
        if self.positional is not None:
            return tuple(bound[key] for key in self.positional)
        return bound

    def _bound(self, row: dict[str, Any], prefix: str | None = None) -> dict[str, Any]:
        """The row's values as the database takes them, keyed `<prefix><column>` (by
        default `p_<column>`, the single-row statement's names, worked out once)."""
        bound: dict[str, Any] = {}
        for name, key, default, process in self.plan:
            if prefix is not None:
                key = prefix + name
            if name in row:
                value = row[name]
            elif default is not None:
                value = default(None)  # SQLAlchemy passes a context; ours ignore it
            else:
                bound[key] = None  # left out of an insert: SQL NULL (a JSON column's too)
                continue
            bound[key] = process(value) if process is not None else value
        return bound

    def store(
        self, source: SourceInfo, events: list[CanonicalEvent], headers: dict[str, str]
    ) -> Stored:
        """Store the events and commit, with no app context needed: new events on the
        driver connection; a request with a stored one among them (a redelivery) in a Core
        transaction that inserts what is new and counts the rest."""
        rows = event_rows(source, events, headers)
        inserted = self.try_insert(rows)
        if inserted is not None:
            return _stored(events, rows, inserted, {})
        with self.engine.begin() as connection:
            return _store_rows(source, events, rows, connection)

    def try_insert(self, rows: list[dict[str, Any]]) -> dict[str, str] | None:
        """Insert and commit; returns {external id: event id}, or None (nothing written)
        when some row was already stored: the caller then takes the general path."""
        # Bound before the turn: the other web workers wait for as little as possible.
        params = [self.params(row) for row in rows]
        with write_turn(self.engine):
            return self._insert(params)

    def _insert(self, params: list[Any]) -> dict[str, str] | None:
        if len(params) == 1:
            found = self.held.run_alone(self.sql, params[0])
            if not found:
                return None  # already stored: nothing was written
            [(event_id, external_id)] = found
            return {external_id: event_id}
        raw: Any = self.held.get()
        try:
            cursor = raw.cursor()
            if self.dialect == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
            inserted: dict[str, str] = {}
            for bound in params:
                cursor.execute(self.sql, bound)
                for event_id, external_id in cursor.fetchall():
                    inserted[external_id] = event_id
            if len(inserted) != len(params):
                raw.rollback()
                return None
            raw.commit()
            return inserted
        except self.held.dbapi_error as exc:
            raise self.held.failed(raw, exc, self.sql) from exc
        except BaseException:
            raw.rollback()
            raise

    def insert_group(self, rows: list[dict[str, Any]]) -> set[str]:
        """Insert the rows of several requests as one statement, committed (one log flush for
        them all); returns the ids of the rows stored, leaving out those whose (source,
        external id) was stored already, by an earlier request or earlier in `rows`."""
        sql, positional = self._group_statement(len(rows))
        bound: dict[str, Any] = {}
        for i, row in enumerate(rows):
            bound.update(self._bound(row, f"g{i}_"))
        params: Any = bound if positional is None else tuple(bound[key] for key in positional)
        with write_turn(self.engine):
            found = self.held.run_alone(sql, params)
        return {event_id for event_id, _external_id in found}

    def _group_statement(self, count: int) -> tuple[str, Any]:
        statement = self._groups.get(count)
        if statement is None:
            stmt = _insert_ignoring_duplicates(self.dialect).values(
                [{name: bindparam(f"g{i}_{name}") for name in self.columns} for i in range(count)]
            )
            compiled = stmt.compile(dialect=self.engine.dialect)
            statement = self._groups[count] = (compiled.string, compiled.positiontup)
        return statement

    def finish_group(
        self,
        source: SourceInfo,
        events: list[CanonicalEvent],
        rows: list[dict[str, Any]],
        stored_ids: set[str],
    ) -> Stored:
        """One request's answer once its group's insert has run: its rows left out there are
        redeliveries, counted as the general path counts them."""
        inserted = {row["external_id"]: row["id"] for row in rows if row["id"] in stored_ids}
        if len(inserted) == len(rows):
            return _stored(events, rows, inserted, {})
        known = [row["external_id"] for row in rows if row["id"] not in stored_ids]
        with self.engine.begin() as connection:
            existing = _count_deliveries(connection, source, known)
        return _stored(events, rows, inserted, existing)


DRIVER_INSERT = "gatehouse.driver_insert"


def driver_insert() -> DriverInsert:
    return for_engine(DRIVER_INSERT, DriverInsert)


def store_and_commit(
    source: SourceInfo, events: list[CanonicalEvent], headers: dict[str, str]
) -> Stored:
    """Store the events and commit: after this returns they survive any crash."""
    # No session made in this context yet means no transaction open (and making one just to
    # ask would cost as much as the insert's own Python work).
    if db.session.registry.has() and db.session().in_transaction():
        # A sender looked something up: store in that same transaction. A second
        # connection would wait on this one's SQLite write lock (BEGIN IMMEDIATE).
        stored = store_events(source, events, headers)
        db.session.commit()
        return stored
    return driver_insert().store(source, events, headers)
