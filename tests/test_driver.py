"""The held driver connection runs a statement by itself, as SQLAlchemy would have."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy.exc import DBAPIError

from gatehouse.driver import HeldConnection
from gatehouse.extensions import db


def placeholders(sqlite: bool, sql: str) -> str:
    return sql.replace("%s", "?") if sqlite else sql


@pytest.fixture
def held(app: Flask) -> Iterator[HeldConnection]:
    held = HeldConnection(db.engine)
    yield held
    held.release()


@pytest.fixture
def probe_table(held: HeldConnection) -> Iterator[None]:
    """`driver_probe`, a table of one integer column `n`, made and dropped through `held`."""
    held.run_alone("DROP TABLE IF EXISTS driver_probe", ())  # left by an interrupted run
    held.run_alone("CREATE TABLE driver_probe (n INTEGER)", ())
    yield
    if held.current is not None:
        held.current.rollback()  # a test may leave a transaction open on purpose
    held.run_alone("DROP TABLE driver_probe", ())


def test_named_and_positional_parameters_and_a_literal_percent(held: HeldConnection) -> None:
    if held.sqlite:
        assert held.run_alone("SELECT :a + :b, 7 % 4", {"b": 2, "a": 1}) == [(3, 3)]
        assert held.run_alone("SELECT ? || ?", ("x", "y")) == [("xy",)]
        return
    # Named out of order, one name twice, and `%%`: each `$n` must get its own value.
    assert held.run_alone(
        "SELECT %(a)s::int + %(b)s::int, %(a)s::int * 10, 7 %% 4", {"b": 2, "a": 1}
    ) == [(3, 10, 3)]
    assert held.run_alone("SELECT %s::text || %s::text", ("x", "y")) == [("xy",)]
    assert held.run_alone("SELECT %s::text[]", (["a", "b"],)) == [(["a", "b"],)]


def test_a_failing_statement_raises_and_the_connection_goes_on(held: HeldConnection) -> None:
    sql = placeholders(held.sqlite, "SELECT 1 / %s")
    before = held.get()
    if held.sqlite:
        with pytest.raises(DBAPIError):
            held.run_alone("SELECT * FROM no_such_table", ())
    else:
        with pytest.raises(DBAPIError) as failed:
            held.run_alone(sql, (0,))
        assert failed.value.orig is not None
        assert type(failed.value.orig).__name__ == "DivisionByZero"
    assert held.current is before  # an error in a statement does not drop the connection
    assert held.run_alone(sql, (2,)) == [(0,)]  # integer division on both


@pytest.mark.usefixtures("probe_table")
def test_each_statement_commits_by_itself(held: HeldConnection) -> None:
    held.run_alone(placeholders(held.sqlite, "INSERT INTO driver_probe VALUES (%s)"), (5,))
    # Another connection sees it at once: nothing is left in an open transaction.
    with db.engine.connect() as other:
        assert other.exec_driver_sql("SELECT n FROM driver_probe").scalars().all() == [5]


@pytest.mark.usefixtures("probe_table")
def test_a_transaction_left_open_on_the_connection_does_not_swallow_the_next_statement(
    held: HeldConnection,
) -> None:
    if held.sqlite:
        pytest.skip("PostgreSQL: SQLite's held connection is in autocommit mode")
    connection = held.get().dbapi_connection
    connection.execute("SELECT 1")  # psycopg opens a transaction and leaves it open
    assert connection.info.transaction_status.name == "INTRANS"
    held.run_alone("INSERT INTO driver_probe VALUES (%s)", (7,))
    with db.engine.connect() as other:  # committed when run_alone returned
        assert other.exec_driver_sql("SELECT n FROM driver_probe").scalars().all() == [7]
