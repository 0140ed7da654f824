"""Each Stripe event type's effect on the subscription, and what is stored as skipped."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gatehouse.extensions import db
from gatehouse.handlers.jobs import apply_event
from gatehouse.models import Event, Subscription
from tests.billing.stripe_helpers import (
    link_customer,
    load_rules,
    make_member,
    post_stripe,
    stripe_event,
)
from tests.helpers import create_source, run_worker

SLUG = "stripe"


@pytest.fixture
def secret(app: Flask) -> str:
    load_rules()
    # An existing link: the events' effect is the point here, not how the customer is found.
    link_customer(make_member("jane@example.com"), "cus_RgOld1234567")
    return create_source(SLUG, "stripe", secret="whsec_test_events_0123456789abcdef")


def only_event() -> Event:
    db.session.expire_all()
    return db.session.execute(select(Event)).scalar_one()


def only_subscription() -> Subscription:
    db.session.expire_all()
    return db.session.execute(select(Subscription)).scalar_one()


@pytest.mark.parametrize(
    ("fixture", "status", "product"),
    [
        ("customer.subscription.created__active", "active", "prod_gold"),
        ("customer.subscription.updated__past_due", "past_due", "prod_gold"),
        ("customer.subscription.deleted__canceled", "canceled", "prod_gold"),
        ("customer.subscription.paused__paused", "paused", "prod_gold"),
        ("customer.subscription.resumed__active", "active", "prod_gold"),
        ("invoice.paid__renewal_basil", "active", "prod_gold"),
        ("invoice.payment_failed__renewal", "past_due", "prod_gold"),
        ("checkout.session.completed__subscription", "active", None),
    ],
)
def test_event_type_sets_subscription_state(
    app: Flask, client: FlaskClient, secret: str, fixture: str, status: str, product: str | None
) -> None:
    event = stripe_event(fixture)
    r = post_stripe(client, SLUG, secret, event)
    assert r.status_code == 202, r.json
    run_worker(app)
    stored = only_event()
    assert (stored.type, stored.status) == ("subscription.updated", "processed"), stored.reason
    assert stored.occurred_at.timestamp() == event["created"]
    assert stored.payload["stripe_type"] == event["type"]
    sub = only_subscription()
    assert (sub.provider, sub.subscription_id, sub.customer_id) == (
        "stripe",
        "sub_1QGoldA1b2C3d4E5",
        "cus_RgOld1234567",
    )
    assert (sub.status, sub.product) == (status, product)
    assert sub.final == (status == "canceled")


def test_first_invoice_failing_means_incomplete_not_past_due(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    event = stripe_event(
        "invoice.payment_failed__renewal", obj={"billing_reason": "subscription_create"}
    )
    post_stripe(client, SLUG, secret, event)
    run_worker(app)
    assert only_subscription().status == "incomplete"
    assert only_subscription().past_due_since is None


@pytest.mark.parametrize(
    ("fixture", "reason"),
    [
        (
            "customer.created__basic",
            "Stripe event type 'customer.created' is ignored: it does not change access",
        ),
        (
            "radar.early_fraud_warning.created__basic",
            "Stripe event type 'radar.early_fraud_warning.created' is not handled by Gatehouse",
        ),
        (
            "invoice.paid__one_off",
            "the invoice is not for a subscription; nothing to grant",
        ),
    ],
)
def test_event_without_access_effect_is_stored_skipped(
    app: Flask, client: FlaskClient, secret: str, fixture: str, reason: str
) -> None:
    event = stripe_event(fixture)
    r = post_stripe(client, SLUG, secret, event)
    assert r.status_code == 202, r.json
    stored = only_event()
    assert (stored.external_id, stored.type, stored.status) == (
        event["id"],
        event["type"],
        "skipped",
    )
    assert stored.reason == reason
    run_worker(app)
    assert db.session.execute(select(Subscription)).first() is None


HISTORY = [
    ("customer.subscription.created__active", 1000),
    ("invoice.payment_failed__renewal", 2000),
    ("customer.subscription.updated__past_due", 3000),
    ("invoice.paid__renewal_basil", 4000),
    ("invoice.payment_failed__renewal", 5000),
    ("customer.subscription.updated__past_due", 6000),
]


def _history_events(app: Flask, client: FlaskClient, secret: str) -> list[Event]:
    for i, (fixture, created) in enumerate(HISTORY):
        event = stripe_event(fixture, id=f"evt_history_{i}", created=1_800_000_000 + created)
        assert post_stripe(client, SLUG, secret, event).status_code == 202
    events = list(db.session.execute(select(Event).order_by(Event.external_id)).scalars())
    db.session.commit()  # SQLite: a reader holds BEGIN IMMEDIATE's lock until it ends
    return events


def _state() -> tuple[Any, ...]:
    sub = only_subscription()
    return (sub.status, sub.product, sub.past_due_since, sub.member_id)


def test_any_order_and_repeats_give_the_same_subscription(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    events = _history_events(app, client, secret)
    run_worker(app)
    expected = _state()
    # Past due again since the second failure run began, not since the first one.
    assert expected[0] == "past_due"
    assert expected[2] is not None and expected[2].timestamp() == 1_800_005_000
    orders = list(itertools.permutations(range(len(events))))[::37]
    for order in orders:
        db.session.execute(Subscription.__table__.delete())
        for i in order + order[:2]:
            apply_event(events[i])
        db.session.commit()
        assert _state() == expected, order
