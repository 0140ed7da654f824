"""`ExecuteMany` writes the rows SQLAlchemy's own executemany writes: every value through
its column type's processor (aware times to naive UTC text on SQLite, JSON, booleans,
NULLs), for an insert and for an update, on each database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    insert,
    update,
)

from gatehouse.driver import ExecuteMany
from gatehouse.extensions import db
from gatehouse.models.base import UTCDateTime

META = MetaData()


def probe(name: str) -> Table:
    return Table(
        name,
        META,
        Column("id", Integer, primary_key=True),
        Column("label", String(32)),
        Column("flag", Boolean),
        Column("at", UTCDateTime),
        Column("doc", JSON),
    )


OURS, THEIRS = probe("execute_many_ours"), probe("execute_many_theirs")
ROWS: list[dict[str, Any]] = [
    {
        "id": 1,
        "label": "plain",
        "flag": True,
        "at": datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC),
        "doc": {"tags": ["a", "b"], "n": 1},
    },
    {
        "id": 2,
        "label": "elsewhere",
        "flag": False,
        "at": datetime(2026, 11, 24, 7, 30, tzinfo=timezone(timedelta(hours=-5))),
        "doc": [1, "x", None],
    },
    {"id": 3, "label": None, "flag": None, "at": None, "doc": None},
]


@pytest.fixture
def tables(app: Flask) -> Iterator[None]:
    with app.app_context():
        META.create_all(db.engine)
        try:
            yield
        finally:
            db.session.rollback()
            META.drop_all(db.engine)


def stored(table: Table) -> list[tuple[Any, ...]]:
    """The rows as the database holds them, read past SQLAlchemy's result processing."""
    sql = f"SELECT id, label, flag, at, CAST(doc AS TEXT) FROM {table.name} ORDER BY id"  # noqa: S608
    return [tuple(row) for row in db.session.connection().exec_driver_sql(sql)]


def changes(table: Table) -> Any:
    c = table.c
    return (
        update(table)
        .where(c.id == bindparam("b_id"))
        .values(
            flag=bindparam("b_flag", type_=c.flag.type),
            at=bindparam("b_at", type_=c.at.type),
            doc=bindparam("b_doc", type_=c.doc.type),
        )
    )


@pytest.mark.usefixtures("tables")
def test_inserts_and_updates_store_what_sqlalchemy_stores(app: Flask) -> None:
    later = datetime(2026, 12, 1, 0, 0, tzinfo=timezone(timedelta(hours=9)))
    updates = [
        {"b_id": 1, "b_flag": False, "b_at": later, "b_doc": {"moved": True}},
        {"b_id": 3, "b_flag": True, "b_at": later, "b_doc": []},
    ]
    with app.app_context():
        ExecuteMany(insert(OURS)).run(db.session, ROWS)
        db.session.execute(insert(THEIRS), ROWS)
        inserted = stored(OURS)
        assert inserted == stored(THEIRS)
        # None in a JSON column is JSON's null, as SQLAlchemy writes it (none_as_null off).
        assert len(inserted) == 3 and inserted[2][1:] == (None, None, None, "null")

        ExecuteMany(changes(OURS)).run(db.session, updates)
        db.session.execute(changes(THEIRS), updates)
        assert stored(OURS) == stored(THEIRS)
        assert stored(OURS) != inserted
        db.session.commit()


@pytest.mark.usefixtures("tables")
def test_an_update_by_key_stores_what_sqlalchemy_stores(app: Flask) -> None:
    """`ExecuteMany.update` (on PostgreSQL one UPDATE ... FROM unnest) against SQLAlchemy's
    executemany of the same UPDATE, including a row set to NULLs and a key not stored."""
    later = datetime(2026, 12, 1, 0, 0, tzinfo=timezone(timedelta(hours=9)))
    updates = [
        {"b_id": 1, "b_label": "moved", "b_flag": False, "b_at": later, "b_doc": {"moved": True}},
        {"b_id": 2, "b_label": None, "b_flag": None, "b_at": None, "b_doc": None},
        {"b_id": 3, "b_label": "x", "b_flag": True, "b_at": later, "b_doc": []},
        {"b_id": 99, "b_label": "nobody", "b_flag": True, "b_at": later, "b_doc": 1},
    ]
    c = THEIRS.c
    theirs = (
        update(THEIRS)
        .where(c.id == bindparam("b_id"))
        .values({k: bindparam(f"b_{k}", type_=c[k].type) for k in ("label", "flag", "at", "doc")})
    )
    with app.app_context():
        ExecuteMany(insert(OURS)).run(db.session, ROWS)
        db.session.execute(insert(THEIRS), ROWS)
        ExecuteMany.update(OURS, ("id",), ("label", "flag", "at", "doc")).run(db.session, updates)
        db.session.execute(theirs, updates)
        assert stored(OURS) == stored(THEIRS)
        assert stored(OURS)[1][1:] == (None, None, None, "null")
        assert len(stored(OURS)) == 3


@pytest.mark.usefixtures("tables")
def test_on_postgresql_the_rows_go_as_one_statement(app: Flask) -> None:
    """One execute for the batch, not an executemany of one execute per row; rows that
    repeat a key go one by one, so the last one wins as it would there."""
    sent: list[bool] = []

    def record(_conn: Any, _cursor: Any, sql: str, _params: Any, _ctx: Any, many: bool) -> None:
        if OURS.name in sql:
            sent.append(many)

    set_flag = ExecuteMany.update(OURS, ("id",), ("flag",))
    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", record)
        try:
            ExecuteMany(insert(OURS)).run(db.session, ROWS)
            set_flag.run(db.session, [{"b_id": 1, "b_flag": False}, {"b_id": 2, "b_flag": True}])
            repeated = [{"b_id": 3, "b_flag": True}, {"b_id": 3, "b_flag": False}]
            set_flag.run(db.session, repeated)
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
        flags = [row[2] for row in stored(OURS)]
        assert flags[:2] == [False, True] and flags[2] in (False, 0)
        if db.engine.dialect.name == "postgresql":
            assert sent == [False, False, True]
        else:
            assert sent == [True, True, True]


@pytest.mark.usefixtures("tables")
def test_nothing_to_write_sends_nothing(app: Flask) -> None:
    with app.app_context():
        ExecuteMany(insert(OURS)).run(db.session, [])
        assert stored(OURS) == []


@pytest.mark.usefixtures("tables")
def test_an_insert_writes_the_columns_its_rows_name(app: Flask) -> None:
    """The columns come from the rows, as in SQLAlchemy's executemany: a key the caller adds
    is written, not dropped by a column list kept beside it; one left out is NULL."""
    rows = [{"id": 7, "label": "named", "flag": True}, {"id": 8, "label": None, "flag": False}]
    with app.app_context():
        insert_ours = ExecuteMany(insert(OURS))
        insert_ours.run(db.session, rows)
        db.session.execute(insert(THEIRS), rows)
        assert stored(OURS) == stored(THEIRS)
        assert stored(OURS)[0][:2] == (7, "named") and stored(OURS)[0][3:] == (None, None)
        # The same statement with every column: its own plan, not the narrower one.
        insert_ours.run(db.session, ROWS)
        db.session.execute(insert(THEIRS), ROWS)
        assert stored(OURS) == stored(THEIRS)
        assert len(stored(OURS)) == 5
