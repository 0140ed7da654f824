"""Billing turns into access: linking, grace periods, order, unmatched customers, duplicates."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gatehouse.access import cache
from gatehouse.extensions import db, redis_client
from gatehouse.handlers.jobs import apply_event
from gatehouse.models import Event, Member, Subscription
from gatehouse.queue.grace import recompute_due
from tests.billing.stripe_helpers import (
    load_rules,
    make_member,
    post_stripe,
    stripe_event,
    stripe_link,
)
from tests.helpers import bearer, create_source, create_token, post_standard, run_worker

SLUG = "stripe"
CUSTOMER = "cus_RgOld1234567"
SUB = "sub_1QGoldA1b2C3d4E5"
DAY = 86400
GAP = 5  # seconds of grace left when the test starts: room for a slow, shared machine


@pytest.fixture
def secret(app: Flask) -> str:
    load_rules()
    return create_source(SLUG, "stripe", secret="whsec_test_billing_0123456789abcdef")


@pytest.fixture
def reader(app: Flask) -> dict[str, str]:
    return bearer(create_token("reader"))


def access(client: FlaskClient, reader: dict[str, str], member_id: str) -> dict[str, Any]:
    r = client.get(f"/api/members/{member_id}/access", headers=reader)
    assert r.status_code == 200, r.json
    return dict(r.json)


def subscription() -> Subscription:
    db.session.expire_all()
    return db.session.execute(
        select(Subscription).where(Subscription.subscription_id == SUB)
    ).scalar_one()


def statuses() -> dict[str, str]:
    db.session.expire_all()
    return {e.external_id: e.status for e in db.session.execute(select(Event)).scalars()}


def post(client: FlaskClient, secret: str, name: str, **changes: Any) -> None:
    r = post_stripe(client, SLUG, secret, stripe_event(name, **changes))
    assert r.status_code in (200, 202), r.json


def test_checkout_links_customer_by_email_and_grants_access(
    app: Flask, client: FlaskClient, secret: str, reader: dict[str, str]
) -> None:
    member_id = make_member("jane@example.com", keap_id="2729")
    post(client, secret, "checkout.session.completed__subscription")
    post(client, secret, "customer.subscription.created__active")
    run_worker(app)

    assert stripe_link(CUSTOMER) == member_id
    answer = access(client, reader, member_id)
    assert answer["groups"] == ["gold"]
    assert answer["permissions"] == ["course:gold", "page:public", "section:courses"]
    assert subscription().product == "prod_gold"
    assert set(statuses().values()) == {"processed"}


def test_metadata_member_id_links_without_email(
    app: Flask, client: FlaskClient, secret: str, reader: dict[str, str]
) -> None:
    member_id = make_member("someone-else@example.com")
    post(
        client,
        secret,
        "customer.subscription.created__basil_metadata_member",
        obj={"metadata": {"member_id": member_id}},
    )
    run_worker(app)
    assert stripe_link(CUSTOMER) == member_id
    assert access(client, reader, member_id)["groups"] == ["gold"]
    # Item-level current_period_end (API 2025-03-31) is read.
    assert int(subscription().current_period_end.timestamp()) == 1797592000  # type: ignore[union-attr]


def test_metadata_contact_id_names_a_crm_contact(
    app: Flask, client: FlaskClient, secret: str, reader: dict[str, str]
) -> None:
    member_id = make_member("jane@example.com", keap_id="2729")
    make_member("other@example.com", keap_id="3000")
    post(
        client,
        secret,
        "customer.subscription.created__active",
        obj={"metadata": {"contact_id": "keap:2729"}},
    )
    run_worker(app)
    assert stripe_link(CUSTOMER) == member_id
    assert access(client, reader, member_id)["groups"] == ["gold"]


def test_unknown_customer_is_unmatched_then_applied_when_checkout_links_it(
    app: Flask, client: FlaskClient, secret: str, reader: dict[str, str]
) -> None:
    post(client, secret, "customer.subscription.created__active")
    run_worker(app)
    assert statuses() == {"evt_1QSubCreated0001": "unmatched"}
    event = db.session.execute(select(Event)).scalar_one()
    assert "no member is linked to customer stripe:cus_RgOld1234567" in (event.reason or "")

    member_id = make_member("jane@example.com")
    post(client, secret, "checkout.session.completed__subscription")
    run_worker(app)

    assert statuses() == {"evt_1QSubCreated0001": "processed", "evt_1QCheckout0001": "processed"}
    assert subscription().member_id == member_id
    assert subscription().product == "prod_gold"
    assert access(client, reader, member_id)["groups"] == ["gold"]


def test_billing_events_before_the_genpass_are_applied_when_the_member_is_created(
    app: Flask, client: FlaskClient, secret: str, reader: dict[str, str]
) -> None:
    """Found by the chaos run: the member is created after its billing events were processed."""
    post(client, secret, "checkout.session.completed__subscription")
    post(client, secret, "customer.subscription.created__active")
    run_worker(app)
    assert set(statuses().values()) == {"unmatched"}

    keap = create_source("keap", "standard", crm="keap")
    r = post_standard(
        client,
        "keap",
        keap,
        {"type": "member.provision", "contact": {"id": "77", "email": "jane@example.com"}},
        "genpass-77",
    )
    assert r.status_code == 202
    run_worker(app)

    member_id = stripe_link(CUSTOMER)
    assert member_id is not None
    assert set(statuses().values()) == {"processed"}
    assert subscription().member_id == member_id
    assert access(client, reader, member_id)["groups"] == ["gold"]


def test_two_members_with_the_checkout_email_are_not_guessed(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    make_member("jane@example.com")
    make_member("JANE@example.com")
    post(client, secret, "checkout.session.completed__subscription")
    run_worker(app)
    event = db.session.execute(select(Event)).scalar_one()
    assert event.status == "unmatched"
    assert "2 members have the email jane@example.com" in (event.reason or "")
    assert stripe_link(CUSTOMER) is None


def test_deleted_delivered_before_created_ends_in_no_access(
    app: Flask, client: FlaskClient, secret: str, reader: dict[str, str]
) -> None:
    member_id = make_member("jane@example.com")
    post(client, secret, "checkout.session.completed__subscription")
    run_worker(app)
    assert stripe_link(CUSTOMER) == member_id
    post(client, secret, "customer.subscription.deleted__canceled")
    run_worker(app)
    post(client, secret, "customer.subscription.created__active")
    run_worker(app)

    assert subscription().status == "canceled"
    answer = access(client, reader, member_id)
    assert answer["groups"] == []
    assert answer["permissions"] == ["page:public"]


def test_past_due_keeps_access_through_grace_then_loses_it_without_an_event(
    app: Flask, client: FlaskClient, secret: str, reader: dict[str, str]
) -> None:
    member_id = make_member("jane@example.com")
    now = int(time.time())
    post(client, secret, "checkout.session.completed__subscription", created=now - 5 * DAY)
    post(client, secret, "customer.subscription.created__active", created=now - 5 * DAY)
    # Became past due 3 days (the rules' grace) minus a few seconds ago; a later retry
    # failing again does not restart the grace period.
    post(client, secret, "customer.subscription.updated__past_due", created=now - 3 * DAY + GAP)
    post(client, secret, "invoice.payment_failed__renewal", created=now - DAY)
    run_worker(app)

    sub = subscription()
    assert sub.status == "past_due"
    assert int(sub.past_due_since.timestamp()) == now - 3 * DAY + GAP  # type: ignore[union-attr]
    before = access(client, reader, member_id)
    assert before["groups"] == ["gold"]

    time.sleep(max(0.0, now + GAP + 0.2 - time.time()))
    run_worker(app)  # only its maintenance tick runs: no event is queued

    after = access(client, reader, member_id)
    assert after["groups"] == []
    assert after["version"] > before["version"]
    assert redis_client.get().zscore(cache.GRACE_KEY, member_id) is None


def test_grace_end_found_from_the_database_when_redis_lost_the_schedule(
    app: Flask, client: FlaskClient, secret: str, reader: dict[str, str]
) -> None:
    member_id = make_member("jane@example.com")
    now = int(time.time())
    post(
        client,
        secret,
        "customer.subscription.created__active",
        created=now - 5 * DAY,
        obj={"metadata": {"member_id": member_id}},
    )
    post(client, secret, "customer.subscription.updated__past_due", created=now - 3 * DAY + 60)
    run_worker(app)
    assert access(client, reader, member_id)["groups"] == ["gold"]

    client_ = redis_client.get()
    assert isinstance(client_, redis.Redis)
    client_.delete(cache.GRACE_KEY)  # as if Redis restarted from a snapshot without it
    assert recompute_due(app) == []  # its grace has a minute left

    since = subscription().past_due_since
    assert since is not None
    assert recompute_due(app, now=since + timedelta(days=3, seconds=1)) == [member_id]
    assert access(client, reader, member_id)["groups"] == []


def test_duplicates_and_replays_change_nothing(
    app: Flask, client: FlaskClient, secret: str, reader: dict[str, str]
) -> None:
    member_id = make_member("jane@example.com")
    post(client, secret, "checkout.session.completed__subscription")
    post(client, secret, "customer.subscription.created__active")
    run_worker(app)
    version = db.session.get(Member, member_id).access_version  # type: ignore[union-attr]
    answer = access(client, reader, member_id)

    again = post_stripe(client, SLUG, secret, stripe_event("customer.subscription.created__active"))
    assert again.status_code == 200
    assert again.json["status"] == "duplicate"
    for event in db.session.execute(select(Event)).scalars().all():
        apply_event(event)
    db.session.commit()
    run_worker(app)

    db.session.expire_all()
    assert db.session.get(Member, member_id).access_version == version  # type: ignore[union-attr]
    assert access(client, reader, member_id)["permissions"] == answer["permissions"]
    assert db.session.execute(select(Subscription)).scalars().all() == [subscription()]
