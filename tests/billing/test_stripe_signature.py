"""Stripe-Signature: what is accepted and what answers 401 leaving no row and no job."""

from __future__ import annotations

import json
import time

import pytest
import stripe
from flask import Flask
from flask.testing import FlaskClient

from gatehouse.extensions import db
from gatehouse.queue import get_queue
from gatehouse.sources import rotate_source
from gatehouse.webhooks.source_cache import forget_sources
from tests.billing.stripe_helpers import post_stripe, sign, stripe_event
from tests.conftest import table_counts
from tests.helpers import create_source

SECRET = "whsec_test_5WbX5kEWLlfzsGNjH64I8lOOqUB6e8FH"
SLUG = "stripe"


@pytest.fixture
def secret(app: Flask) -> str:
    return create_source(SLUG, "stripe", secret=SECRET)


def assert_rejected(response: object, app: Flask) -> None:
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert response.json["error"] == "invalid_signature"  # type: ignore[attr-defined]
    assert table_counts("events") == {"events": 0}
    assert get_queue(app).count == 0


def test_signed_by_stripe_library_is_accepted(client: FlaskClient, secret: str) -> None:
    r = post_stripe(client, SLUG, secret, stripe_event("customer.subscription.created__active"))
    assert r.status_code == 202, r.json
    assert r.json["status"] == "accepted"
    assert table_counts("events") == {"events": 1}


def test_missing_header_is_401(app: Flask, client: FlaskClient, secret: str) -> None:
    body = json.dumps(stripe_event("customer.subscription.created__active"))
    r = client.post(f"/hooks/{SLUG}", data=body, content_type="application/json")
    assert_rejected(r, app)


def test_wrong_secret_is_401(app: Flask, client: FlaskClient, secret: str) -> None:
    event = stripe_event("customer.subscription.created__active")
    payload = json.dumps(event)
    header = sign(payload, "whsec_someone_elses_secret")
    r = post_stripe(client, SLUG, secret, event, header=header)
    assert_rejected(r, app)


def test_stale_timestamp_is_401(app: Flask, client: FlaskClient, secret: str) -> None:
    event = stripe_event("customer.subscription.created__active")
    payload = json.dumps(event)
    header = sign(payload, secret, timestamp=int(time.time()) - 301)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, secret, tolerance=300)
    r = post_stripe(client, SLUG, secret, event, header=header)
    assert_rejected(r, app)


def test_tampered_body_is_401(app: Flask, client: FlaskClient, secret: str) -> None:
    event = stripe_event("customer.subscription.created__active")
    header = sign(json.dumps(event), secret)
    event["data"]["object"]["status"] = "trialing"
    r = post_stripe(client, SLUG, secret, event, header=header)
    assert_rejected(r, app)


def test_only_v0_signature_is_401(app: Flask, client: FlaskClient, secret: str) -> None:
    event = stripe_event("customer.subscription.created__active")
    payload = json.dumps(event)
    header = sign(payload, secret).replace("v1=", "v0=")
    r = post_stripe(client, SLUG, secret, event, header=header)
    assert_rejected(r, app)


def test_any_v1_of_several_matching_is_accepted(client: FlaskClient, secret: str) -> None:
    event = stripe_event("customer.subscription.created__active")
    payload = json.dumps(event)
    now = int(time.time())
    other = sign(payload, "whsec_rolled_new_secret", timestamp=now).split(",")[1]
    ours = sign(payload, secret, timestamp=now).split(",")[1]
    header = f"t={now},{other},v0=deadbeef,{ours}"
    assert stripe.Webhook.construct_event(payload, header, secret)["id"] == event["id"]
    r = post_stripe(client, SLUG, secret, event, header=header)
    assert r.status_code == 202, r.json


def test_rotated_secret_works_during_its_grace_period(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    new_secret = "whsec_test_new_0123456789abcdefghijklmnop"
    rotate_source(SLUG, new_secret, grace_hours=1)
    db.session.commit()
    forget_sources(app)
    old = post_stripe(client, SLUG, secret, stripe_event("customer.subscription.created__active"))
    assert old.status_code == 202, old.json
    new = post_stripe(
        client, SLUG, new_secret, stripe_event("customer.subscription.updated__past_due")
    )
    assert new.status_code == 202, new.json


def test_rotated_secret_past_its_grace_period_is_401(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    rotate_source(SLUG, "whsec_test_new_0123456789abcdefghijklmnop", grace_hours=0)
    db.session.commit()
    forget_sources(app)
    r = post_stripe(client, SLUG, secret, stripe_event("customer.subscription.created__active"))
    assert_rejected(r, app)


def test_body_that_is_not_json_is_400(client: FlaskClient, secret: str) -> None:
    body = "{not json"
    r = client.post(
        f"/hooks/{SLUG}",
        data=body,
        headers={"Stripe-Signature": sign(body, secret), "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json["error"] == "malformed_body"


def test_event_without_created_is_422(client: FlaskClient, secret: str) -> None:
    event = stripe_event("customer.subscription.created__active")
    del event["created"]
    r = post_stripe(client, SLUG, secret, event)
    assert r.status_code == 422
    assert r.json == {
        "error": "invalid_event",
        "detail": {"created": ["a unix timestamp is required"]},
    }
