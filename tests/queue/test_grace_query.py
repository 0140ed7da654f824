"""The grace check's database fallback finds past_due subscriptions through their partial
index, not by reading every subscription: it runs once a minute on every site."""

from __future__ import annotations

from flask import Flask

from gatehouse.extensions import redis_client
from gatehouse.models import utcnow
from gatehouse.queue.grace import due_in_database
from tests.helpers import query_plan


def test_the_past_due_scan_reads_the_partial_index(app: Flask) -> None:
    steps = query_plan(
        app,
        "FROM subscriptions",
        lambda: due_in_database(redis_client.get(app), utcnow()),
    )
    assert any("ix_subscriptions_past_due_since" in step for step in steps), steps
