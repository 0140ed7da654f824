"""The grace check's database fallback finds past_due subscriptions through their partial
index, not by reading every subscription: it runs once a minute on every site."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import event

from gatehouse.extensions import db, redis_client
from gatehouse.models import utcnow
from gatehouse.queue.grace import due_in_database


def test_the_past_due_scan_reads_the_partial_index(app: Flask) -> None:
    sent: list[tuple[str, object]] = []
    with app.app_context():
        engine = db.engine

        def record(*args: object) -> None:
            if "FROM subscriptions" in str(args[2]):
                sent.append((str(args[2]), args[3]))

        event.listen(engine, "before_cursor_execute", record)
        try:
            assert due_in_database(redis_client.get(app), utcnow()) == []
        finally:
            event.remove(engine, "before_cursor_execute", record)
            db.session.rollback()
        [(sql, params)] = sent
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params).all()  # type: ignore[arg-type]
                steps = [str(row[3]) for row in plan]
            else:
                conn.exec_driver_sql("SET enable_seqscan = off")  # an empty table: else a scan
                plan = conn.exec_driver_sql("EXPLAIN " + sql, params).all()  # type: ignore[arg-type]
                steps = [str(row[0]) for row in plan]
    assert any("ix_subscriptions_past_due_since" in step for step in steps), steps
