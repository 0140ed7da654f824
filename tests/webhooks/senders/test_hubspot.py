"""HubSpot: signatures made by `hubspot-api-client`'s Signature, batched arrays, translation."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hubspot.utils.signature import Signature

from tests.helpers import create_source, run_worker
from tests.webhooks.senders.support import (
    event_count,
    fixture_bytes,
    member_by_contact,
    provision_member,
    rotate,
    stored_events,
)

SLUG = "hubspot"
URL = f"/hooks/{SLUG}"
TEST_URI = f"http://localhost{URL}"  # what Flask's test client calls
V1_VECTOR_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
V1_VECTOR_BODY = (
    '[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,'
    '"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,'
    '"changeSource":"CRM","changeFlag":"NEW","appId":54321}]'
)
V1_VECTOR_SIGNATURE = "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"


def v3_headers(
    secret: str, body: bytes, uri: str = TEST_URI, timestamp_ms: int | None = None
) -> dict[str, str]:
    timestamp = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
    signature = Signature.get_signature(
        secret, body.decode(), "v3", http_uri=uri, http_method="POST", timestamp=timestamp
    )
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": signature,
        "X-HubSpot-Request-Timestamp": timestamp,
    }


def post_v3(client: FlaskClient, secret: str, body: bytes, **kw: Any) -> Any:
    return client.post(URL, data=body, headers=v3_headers(secret, body, **kw))


@pytest.fixture
def secret(app: Flask) -> str:
    return create_source(SLUG, "hubspot")


# --- signatures -------------------------------------------------------------------------


def test_v1_test_vector_from_providers_md_is_accepted(app: Flask, client: FlaskClient) -> None:
    assert Signature.get_signature(V1_VECTOR_SECRET, V1_VECTOR_BODY, "v1") == V1_VECTOR_SIGNATURE
    create_source(SLUG, "hubspot", secret=V1_VECTOR_SECRET)
    r = client.post(
        URL,
        data=V1_VECTOR_BODY,
        headers={
            "Content-Type": "application/json",
            "X-HubSpot-Signature": V1_VECTOR_SIGNATURE,
            "X-HubSpot-Signature-Version": "v1",
        },
    )
    assert r.status_code == 202, r.json
    (event,) = stored_events()
    assert event.external_id == "62515:1"


def test_v2_signature_over_method_uri_and_body_is_accepted(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    body = fixture_bytes("hubspot", "contact.deletion__single")
    signature = Signature.get_signature(secret, body.decode(), "v2", http_uri=TEST_URI)
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature": signature,
        "X-HubSpot-Signature-Version": "v2",
    }
    assert client.post(URL, data=body, headers=headers).status_code == 202


def test_v3_signature_is_accepted_and_checked_by_the_library_too(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    body = fixture_bytes("hubspot", "contact.deletion__single")
    headers = v3_headers(secret, body)
    assert Signature.is_valid(
        headers["X-HubSpot-Signature-v3"],
        secret,
        body.decode(),
        http_uri=TEST_URI,
        signature_version="v3",
        timestamp=headers["X-HubSpot-Request-Timestamp"],
    )
    r = client.post(URL, data=body, headers=headers)
    assert r.status_code == 202, r.json
    assert r.json["status"] == "accepted"


def test_v3_uses_the_public_url_when_configured(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    app.config["GATEHOUSE_PUBLIC_URL"] = "https://members.example.com"
    body = fixture_bytes("hubspot", "contact.deletion__single")
    r = post_v3(client, secret, body, uri=TEST_URI)
    assert r.status_code == 401
    r = post_v3(client, secret, body, uri=f"https://members.example.com{URL}")
    assert r.status_code == 202, r.json


def test_missing_signature_header_is_401_and_stores_nothing(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    body = fixture_bytes("hubspot", "contact.deletion__single")
    r = client.post(URL, data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    assert r.json["error"] == "invalid_signature"
    assert event_count() == 0


def test_wrong_secret_is_401(app: Flask, client: FlaskClient, secret: str) -> None:
    body = fixture_bytes("hubspot", "contact.deletion__single")
    assert post_v3(client, "not-the-secret", body).status_code == 401
    assert event_count() == 0


def test_stale_v3_timestamp_is_401_even_when_correctly_signed(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    body = fixture_bytes("hubspot", "contact.deletion__single")
    stale = int((time.time() - 301) * 1000)
    r = post_v3(client, secret, body, timestamp_ms=stale)
    assert r.status_code == 401
    assert "tolerance" in r.json["detail"]
    assert event_count() == 0


def test_tampered_body_is_401(app: Flask, client: FlaskClient, secret: str) -> None:
    body = fixture_bytes("hubspot", "contact.deletion__single")
    headers = v3_headers(secret, body)
    tampered = body.replace(b"5101", b"5102")
    assert client.post(URL, data=tampered, headers=headers).status_code == 401
    assert event_count() == 0


def test_wrong_v1_signature_is_401(app: Flask, client: FlaskClient) -> None:
    create_source(SLUG, "hubspot", secret=V1_VECTOR_SECRET)
    r = client.post(
        URL,
        data=V1_VECTOR_BODY.replace('"objectId":123', '"objectId":124'),
        headers={
            "Content-Type": "application/json",
            "X-HubSpot-Signature": V1_VECTOR_SIGNATURE,
            "X-HubSpot-Signature-Version": "v1",
        },
    )
    assert r.status_code == 401
    assert event_count() == 0


def test_rotated_out_secret_works_during_its_grace_period(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    rotate(SLUG, "the-new-client-secret")
    body = fixture_bytes("hubspot", "contact.deletion__single")
    assert post_v3(client, secret, body).status_code == 202
    assert post_v3(client, "the-new-client-secret", body).status_code == 200  # duplicate


def test_rotated_out_secret_fails_after_its_grace_period(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    rotate(SLUG, "the-new-client-secret", grace_hours=0)
    body = fixture_bytes("hubspot", "contact.deletion__single")
    assert post_v3(client, secret, body).status_code == 401


# --- translation ------------------------------------------------------------------------


def test_batch_becomes_one_event_each_keyed_by_portal_and_event_id(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    r = post_v3(client, secret, fixture_bytes("hubspot", "contact.creation__batch"))
    assert r.status_code == 202, r.json
    assert len(r.json["events"]) == 3
    events = stored_events()
    assert [(e.external_id, e.type) for e in events] == [
        ("62515:1001", "contact.updated"),
        ("62515:1002", "contact.updated"),
        ("62515:1003", "contact.tag_added"),
    ]
    assert events[0].occurred_at.isoformat().startswith("2026-11-22T10:00:00")
    contact = events[1].payload["contact"]
    assert (contact["crm"], contact["id"], contact["email"]) == (
        "hubspot",
        "5101",
        "ada@example.com",
    )
    assert events[2].payload["tag"] == "hs_portal_user"
    assert {e.contact_key for e in events} == {"hubspot:5101"}


def test_redelivered_batch_is_a_duplicate(app: Flask, client: FlaskClient, secret: str) -> None:
    body = fixture_bytes("hubspot", "contact.creation__batch")
    first = post_v3(client, secret, body)
    again = post_v3(client, secret, body)
    assert again.status_code == 200
    assert again.json == {"status": "duplicate", "events": first.json["events"]}
    assert [e.deliveries for e in stored_events()] == [2, 2, 2]


def test_gatehouse_tag_property_becomes_a_tag_named_after_it(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    post_v3(client, secret, fixture_bytes("hubspot", "contact.propertyChange__gatehouse_tag"))
    (event,) = stored_events()
    assert (event.type, event.payload["tag"]) == ("contact.tag_added", "gold")


def test_portal_user_false_removes_the_tag(app: Flask, client: FlaskClient, secret: str) -> None:
    post_v3(client, secret, fixture_bytes("hubspot", "contact.propertyChange__portal_user_false"))
    (event,) = stored_events()
    assert (event.type, event.payload["tag"]) == ("contact.tag_removed", "hs_portal_user")


def test_privacy_deletion_becomes_contact_deleted(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    post_v3(client, secret, fixture_bytes("hubspot", "contact.privacyDeletion__gdpr"))
    (event,) = stored_events()
    assert event.type == "contact.deleted"
    assert event.payload["contact"]["id"] == "5101"


def test_merge_names_the_primary_as_survivor(app: Flask, client: FlaskClient, secret: str) -> None:
    post_v3(client, secret, fixture_bytes("hubspot", "contact.merge__two_contacts"))
    (event,) = stored_events()
    assert event.type == "contact.merged"
    assert event.payload["contact"]["id"] == "5101"
    assert event.payload["merged_ids"] == ["5102"]


@pytest.mark.parametrize(
    ("fixture", "reason"),
    [
        ("contact.restore__single", "HubSpot contact.restore is ignored"),
        ("contact.associationChange__company", "HubSpot contact.associationChange is ignored"),
        ("contact.propertyChange__unused_property", "property lifecyclestage is not used"),
        ("deal.creation__unknown_type", "'hubspot.deal.creation' is not handled"),
    ],
)
def test_ignored_and_unknown_events_are_stored_skipped_with_a_reason(
    app: Flask, client: FlaskClient, secret: str, fixture: str, reason: str
) -> None:
    r = post_v3(client, secret, fixture_bytes("hubspot", fixture))
    assert r.status_code == 202, r.json
    (event,) = stored_events()
    assert event.status == "skipped"
    assert reason in (event.reason or "")


def test_an_object_instead_of_an_array_is_422(app: Flask, client: FlaskClient, secret: str) -> None:
    body = json.dumps(json.loads(fixture_bytes("hubspot", "contact.deletion__single"))[0]).encode()
    r = post_v3(client, secret, body)
    assert r.status_code == 422
    assert r.json["error"] == "invalid_event"


def test_event_without_event_id_is_422_naming_its_index(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    items = json.loads(fixture_bytes("hubspot", "contact.creation__batch"))
    del items[1]["eventId"]
    r = post_v3(client, secret, json.dumps(items).encode())
    assert r.status_code == 422
    assert r.json["detail"] == {"1.eventId": ["required"]}
    assert event_count() == 0


def test_invalid_email_in_a_batch_is_422_naming_its_index(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    items = json.loads(fixture_bytes("hubspot", "contact.creation__batch"))
    items[1]["propertyValue"] = "not an email"
    r = post_v3(client, secret, json.dumps(items).encode())
    assert r.status_code == 422
    assert list(r.json["detail"]) == ["1.contact"]


def test_malformed_json_is_400(app: Flask, client: FlaskClient, secret: str) -> None:
    r = post_v3(client, secret, b"[{not json")
    assert r.status_code == 400
    assert r.json["error"] == "malformed_body"


# --- end to end -------------------------------------------------------------------------


def test_end_to_end_portal_user_tag_and_profile_reach_the_member(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    provision_member(client, "hubspot", "5101", "old@example.com")
    assert post_v3(client, secret, fixture_bytes("hubspot", "contact.creation__batch")).status_code
    assert post_v3(client, secret, fixture_bytes("hubspot", "contact.propertyChange__names"))
    run_worker(app)
    member = member_by_contact(client, "hubspot", "5101")
    assert member["tags"] == ["hubspot:hs_portal_user"]
    assert member["email"] == "ada@example.com"
    assert member["name"] == "Ada Lovelace"

    post_v3(client, secret, fixture_bytes("hubspot", "contact.propertyChange__portal_user_false"))
    run_worker(app)
    assert member_by_contact(client, "hubspot", "5101")["tags"] == []


def test_end_to_end_deletion_marks_the_contact_deleted_and_keeps_the_member(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    provision_member(client, "hubspot", "5101", "ada@example.com", tags=["hs_portal_user"])
    post_v3(client, secret, fixture_bytes("hubspot", "contact.deletion__single"))
    run_worker(app)
    member = member_by_contact(client, "hubspot", "5101")
    assert member["contacts"] == [{"crm": "hubspot", "contact_id": "5101", "state": "deleted"}]
    assert member["tags"] == []
    assert member["status"] == "active"
