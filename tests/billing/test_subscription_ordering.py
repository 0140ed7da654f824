"""A subscription's row is the same whatever order its events are folded in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import permutations
from typing import Any

from gatehouse.handlers.billing import EPOCH, apply_assertion
from gatehouse.handlers.outcome import Assertion
from gatehouse.models import Subscription

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def fold(events: list[tuple[int, dict[str, Any]]]) -> tuple[Any, ...]:
    sub = Subscription(
        provider="stripe",
        subscription_id="sub_1",
        status="incomplete",
        asserted_at=EPOCH,
        assert_key="",
        final=False,
        good_key="",
        product_key="",
    )
    for minute, data in events:
        when = Assertion(at=T0 + timedelta(minutes=minute), key=f"evt_{minute}", event_id=None)
        apply_assertion(sub, {"id": "sub_1", **data}, when)
    return (sub.status, sub.product, sub.past_due_since)


def test_product_is_the_newest_event_naming_one_in_any_order() -> None:
    """Found in review: an event without a product must not let an older product win."""
    events = [
        (1, {"status": "active", "product": "prod_silver"}),
        (2, {"status": "active", "product": "prod_gold"}),
        (3, {"status": "past_due"}),
    ]
    outcomes = {fold(list(order)) for order in permutations(events)}
    assert outcomes == {("past_due", "prod_gold", T0 + timedelta(minutes=3))}
