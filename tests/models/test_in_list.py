"""`in_list`: the rows of an IN over a bound list, on each database, and on PostgreSQL one
statement text whatever the list's length (so psycopg parses it once and prepares it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select

from gatehouse.extensions import db
from gatehouse.models.in_list import in_list
from tests.helpers import query_plan

PROBE = Table(
    "in_list_probe",
    MetaData(),
    Column("id", String(26), primary_key=True),
    Column("crm", String(32)),
    Column("n", Integer),
)


@pytest.fixture
def probe(app: Flask) -> Iterator[None]:
    with app.app_context():
        PROBE.create(db.engine)
        with db.engine.begin() as conn:
            conn.execute(
                insert(PROBE),
                [{"id": f"e{n}", "crm": "keap" if n % 2 else "hubspot", "n": n} for n in range(6)],
            )
        try:
            yield
        finally:
            PROBE.drop(db.engine)


BY_ID = select(PROBE.c.n).where(in_list(PROBE.c.id, "ids")).order_by(PROBE.c.n)


@pytest.mark.parametrize(
    ("ids", "found"),
    [([], []), (["e3"], [3]), (["e5", "e0", "e2"], [0, 2, 5]), (["e1", "nope"], [1])],
    ids=["none", "one", "several", "one-unknown"],
)
@pytest.mark.usefixtures("probe")
def test_the_rows_whose_column_is_in_the_list(app: Flask, ids: list[str], found: list[int]) -> None:
    with app.app_context():
        assert db.session.execute(BY_ID, {"ids": ids}).scalars().all() == found


@pytest.mark.usefixtures("probe")
def test_two_lists_in_one_statement(app: Flask) -> None:
    stmt = (
        select(PROBE.c.n)
        .where(in_list(PROBE.c.crm, "crms"), in_list(PROBE.c.id, "ids"))
        .order_by(PROBE.c.n)
    )
    with app.app_context():
        rows = db.session.execute(stmt, {"crms": ["keap"], "ids": ["e1", "e2", "e3"]})
        assert rows.scalars().all() == [1, 3]


@pytest.mark.usefixtures("probe")
def test_postgresql_sends_one_statement_text_for_every_length(app: Flask) -> None:
    sent: list[str] = []
    with app.app_context():
        engine = db.engine

        def record(*args: object) -> None:
            if "in_list_probe" in str(args[2]):  # not the session's own BEGIN and such
                sent.append(str(args[2]))

        event.listen(engine, "before_cursor_execute", record)
        try:
            for length in range(1, 6):
                db.session.execute(BY_ID, {"ids": [f"e{n}" for n in range(length)]}).all()
        finally:
            event.remove(engine, "before_cursor_execute", record)
        dialect = engine.dialect.name
    assert len(sent) == 5
    if dialect == "postgresql":
        assert len(set(sent)) == 1 and "= ANY(" in sent[0]
        # The list goes in binary (psycopg's `%(name)b`), not dumped as text per element.
        assert "%(ids)b" in sent[0]
    else:  # SQLAlchemy's expanding IN: one text per length
        assert len(set(sent)) == 5 and all(" IN (" in s for s in sent)


def test_the_compiled_cache_tells_columns_and_names_apart() -> None:
    """The element's cache key carries its column and name: were either left out, two
    statements differing only there would share one cached SQL text."""
    base = select(PROBE.c.n).where(in_list(PROBE.c.id, "ids"))
    same = select(PROBE.c.n).where(in_list(PROBE.c.id, "ids"))
    other_column = select(PROBE.c.n).where(in_list(PROBE.c.crm, "ids"))
    other_name = select(PROBE.c.n).where(in_list(PROBE.c.id, "crms"))
    key = base._generate_cache_key()
    assert key is not None and key == same._generate_cache_key()
    assert key != other_column._generate_cache_key()
    assert key != other_name._generate_cache_key()


@pytest.mark.usefixtures("probe")
def test_the_database_finds_the_rows_by_the_columns_index(app: Flask, database_kind: str) -> None:
    """A plain comparison in the WHERE clause: SQLite, with no boolean type, would be given
    `id IN (...) = 1` for an expression not known to be one, which no index serves."""
    steps = query_plan(
        app, "in_list_probe", lambda: db.session.execute(BY_ID, {"ids": ["e1", "e2"]}).all()
    )
    if database_kind == "sqlite":
        assert "SEARCH in_list_probe USING INDEX sqlite_autoindex_in_list_probe_1 (id=?)" in steps
        assert not any(step.startswith("SCAN in_list_probe") for step in steps)
    else:
        assert any("in_list_probe_pkey" in step for step in steps), steps
        assert not any("Seq Scan" in step for step in steps), steps
