"""ClickFunnels 2.0: contacts, applied tags and subscriptions.

ClickFunnels publishes no library to sign with, so the tests compute the HMAC by hand,
exactly as providers.md describes it: hex(HMAC-SHA256(secret, f"{timestamp}.{body}")).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import create_source, run_worker
from tests.webhooks.senders.support import (
    event_count,
    fixture_bytes,
    member_by_contact,
    provision_member,
    rotate,
    stored_events,
)

SLUG = "clickfunnels"
URL = f"/hooks/{SLUG}"
CONTACT = "190341"


def cf_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = str(timestamp if timestamp is not None else int(time.time()))
    signature = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Webhook-ClickFunnels-Signature": signature,
        "X-Webhook-ClickFunnels-Timestamp": ts,
    }


def post(client: FlaskClient, secret: str, body: bytes, **kw: Any) -> Any:
    return client.post(URL, data=body, headers=cf_headers(secret, body, **kw))


@pytest.fixture
def secret(app: Flask) -> str:
    return create_source(SLUG, "clickfunnels")


# --- signatures -------------------------------------------------------------------------


def test_signed_event_is_accepted(app: Flask, client: FlaskClient, secret: str) -> None:
    r = post(client, secret, fixture_bytes("clickfunnels", "contact.created__with_tags"))
    assert r.status_code == 202, r.json
    assert event_count() == 1


def test_millisecond_timestamp_is_accepted(app: Flask, client: FlaskClient, secret: str) -> None:
    body = fixture_bytes("clickfunnels", "contact.deleted__single")
    assert post(client, secret, body, timestamp=int(time.time() * 1000)).status_code == 202


def test_missing_signature_header_is_401_and_stores_nothing(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    body = fixture_bytes("clickfunnels", "contact.deleted__single")
    headers = cf_headers(secret, body)
    del headers["X-Webhook-ClickFunnels-Signature"]
    r = client.post(URL, data=body, headers=headers)
    assert r.status_code == 401
    assert r.json["error"] == "invalid_signature"
    assert event_count() == 0


def test_missing_timestamp_header_is_401(app: Flask, client: FlaskClient, secret: str) -> None:
    body = fixture_bytes("clickfunnels", "contact.deleted__single")
    headers = cf_headers(secret, body)
    del headers["X-Webhook-ClickFunnels-Timestamp"]
    assert client.post(URL, data=body, headers=headers).status_code == 401


def test_wrong_secret_is_401(app: Flask, client: FlaskClient, secret: str) -> None:
    body = fixture_bytes("clickfunnels", "contact.deleted__single")
    assert post(client, "not-the-secret", body).status_code == 401
    assert event_count() == 0


def test_stale_timestamp_is_401_even_when_correctly_signed(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    body = fixture_bytes("clickfunnels", "contact.deleted__single")
    r = post(client, secret, body, timestamp=int(time.time()) - 301)
    assert r.status_code == 401
    assert "tolerance" in r.json["detail"]
    assert event_count() == 0


def test_tampered_body_is_401(app: Flask, client: FlaskClient, secret: str) -> None:
    body = fixture_bytes("clickfunnels", "contact.deleted__single")
    headers = cf_headers(secret, body)
    r = client.post(URL, data=body.replace(b"190341", b"190342"), headers=headers)
    assert r.status_code == 401
    assert event_count() == 0


def test_rotated_out_secret_works_during_its_grace_period(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    rotate(SLUG, "new-clickfunnels-secret")
    body = fixture_bytes("clickfunnels", "contact.deleted__single")
    assert post(client, secret, body).status_code == 202
    assert post(client, "new-clickfunnels-secret", body).status_code == 200  # duplicate


# --- translation ------------------------------------------------------------------------


def test_contact_created_is_an_update_with_a_snapshot_of_tag_ids(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    post(client, secret, fixture_bytes("clickfunnels", "contact.created__with_tags"))
    (event,) = stored_events()
    assert event.type == "contact.updated"
    assert event.external_id == "a1f0c8a2-3f6e-4d7a-9b8e-2f1c0d9e0001"
    assert event.payload["tags"] == ["8801"]
    assert event.payload["contact"]["email"] == "linus@example.com"
    assert event.contact_key == "clickfunnels:190341"


def test_contact_identified_without_tags_asserts_no_tags(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    post(client, secret, fixture_bytes("clickfunnels", "contact.identified__no_tags"))
    (event,) = stored_events()
    assert event.type == "contact.updated"
    assert "tags" not in event.payload


def test_applied_tag_created_and_deleted_become_tag_added_and_removed(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    post(client, secret, fixture_bytes("clickfunnels", "contact_applied_tag.created__gold"))
    post(client, secret, fixture_bytes("clickfunnels", "contact_applied_tag.deleted__gold"))
    added, removed = stored_events()
    assert (added.type, added.payload["tag"]) == ("contact.tag_added", "8801")
    assert (removed.type, removed.payload["tag"]) == ("contact.tag_removed", "8801")
    assert added.payload["contact"]["id"] == CONTACT


def test_subscription_activated_is_an_active_subscription_update(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    post(client, secret, fixture_bytes("clickfunnels", "subscription.activated__monthly"))
    (event,) = stored_events()
    assert event.type == "subscription.updated"
    subscription = event.payload["subscription"]
    assert {k: v for k, v in subscription.items() if v is not None} == {
        "id": "77120",
        "product": "6601",
        "status": "active",
        "customer": CONTACT,
        "email": "linus@example.com",
        "provider": "clickfunnels",
        "current_period_end": "2026-12-22T09:05:00+00:00",
    }
    assert event.payload["contact"]["id"] == CONTACT


def test_subscription_churned_is_canceled(app: Flask, client: FlaskClient, secret: str) -> None:
    post(client, secret, fixture_bytes("clickfunnels", "subscription.churned__monthly"))
    (event,) = stored_events()
    assert event.payload["subscription"]["status"] == "canceled"
    assert event.payload["subscription"]["final"] is True


def test_other_subscription_types_take_the_status_from_the_data(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    post(client, secret, fixture_bytes("clickfunnels", "subscription.downgraded__status_in_data"))
    (event,) = stored_events()
    assert event.payload["subscription"]["status"] == "past_due"
    assert event.payload["subscription"]["product"] == "6602"


def test_subscription_without_a_known_status_is_422(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    data = json.loads(fixture_bytes("clickfunnels", "subscription.downgraded__status_in_data"))
    data["data"]["service_status"] = "mysterious"
    r = post(client, secret, json.dumps(data).encode())
    assert r.status_code == 422
    assert "data.service_status" in r.json["detail"]


@pytest.mark.parametrize(
    ("fixture", "reason"),
    [
        ("order.completed__one_time", "ClickFunnels order.completed is ignored"),
        (
            "courses_enrollment.created__unknown_type",
            "'clickfunnels.courses/enrollment.created' is not handled",
        ),
    ],
)
def test_ignored_and_unknown_types_are_stored_skipped_with_a_reason(
    app: Flask, client: FlaskClient, secret: str, fixture: str, reason: str
) -> None:
    assert post(client, secret, fixture_bytes("clickfunnels", fixture)).status_code == 202
    (event,) = stored_events()
    assert event.status == "skipped"
    assert reason in (event.reason or "")


def test_event_without_event_id_is_422(app: Flask, client: FlaskClient, secret: str) -> None:
    data = json.loads(fixture_bytes("clickfunnels", "contact.deleted__single"))
    del data["event_id"]
    r = post(client, secret, json.dumps(data).encode())
    assert r.status_code == 422
    assert r.json["detail"] == {"event_id": ["required"]}


# --- end to end -------------------------------------------------------------------------


def test_end_to_end_tags_follow_the_latest_assertion(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    provision_member(client, "clickfunnels", CONTACT, "linus@example.com")
    post(client, secret, fixture_bytes("clickfunnels", "contact.created__with_tags"))  # 09:00
    run_worker(app)
    assert member_by_contact(client, "clickfunnels", CONTACT)["tags"] == ["clickfunnels:8801"]

    # Removed at 12:00, then a 10:00 snapshot without the tag and an 11:00 add arrive late.
    for name in (
        "contact_applied_tag.deleted__gold",
        "contact.updated__tags_cleared",
        "contact_applied_tag.created__gold",
    ):
        post(client, secret, fixture_bytes("clickfunnels", name))
    run_worker(app)
    member = member_by_contact(client, "clickfunnels", CONTACT)
    assert member["tags"] == []
    assert member["name"] == "Linus Torvalds"


def test_end_to_end_contact_deleted_keeps_the_member(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    provision_member(client, "clickfunnels", CONTACT, "linus@example.com", tags=["8801"])
    post(client, secret, fixture_bytes("clickfunnels", "contact.deleted__single"))
    run_worker(app)
    member = member_by_contact(client, "clickfunnels", CONTACT)
    assert member["contacts"][0]["state"] == "deleted"
    assert member["status"] == "active"


def test_end_to_end_subscription_is_kept_on_the_member_by_latest_event(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    provision_member(client, "clickfunnels", CONTACT, "linus@example.com")
    post(client, secret, fixture_bytes("clickfunnels", "subscription.churned__monthly"))
    post(client, secret, fixture_bytes("clickfunnels", "subscription.activated__monthly"))
    run_worker(app)
    member = member_by_contact(client, "clickfunnels", CONTACT)
    assert [(s["product"], s["status"]) for s in member["subscriptions"]] == [("6601", "canceled")]
