"""HighLevel: Ed25519 signatures made with `cryptography`, tag snapshots, 429 when unavailable.

HighLevel signs no timestamp, so there is no stale-timestamp case; redeliveries are caught
by the dedupe key instead. Key rotation is a key file holding both keys.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gatehouse.extensions import db
from gatehouse.models import Member, Source
from gatehouse.sources import add_source
from gatehouse.webhooks.source_cache import forget_sources
from tests.helpers import refusing_inserts, run_worker
from tests.webhooks.senders.support import (
    event_count,
    fixture_bytes,
    member_by_contact,
    provision_member,
    stored_events,
)

SLUG = "ghl"
URL = f"/hooks/{SLUG}"
CONTACT = "nmFmQEsNgz6AVpgLVUJ0"


def pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        .decode()
        .strip()
    )


def raw_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def create_ghl_source(public_key: str) -> None:
    add_source(SLUG, "ghl", None, None, public_key)
    db.session.commit()


def post(client: FlaskClient, key: Ed25519PrivateKey, body: bytes, **headers: str) -> Any:
    signature = base64.b64encode(key.sign(body)).decode()
    return client.post(
        URL,
        data=body,
        headers={"Content-Type": "application/json", "X-GHL-Signature": signature, **headers},
    )


@pytest.fixture
def key(app: Flask) -> Ed25519PrivateKey:
    private = Ed25519PrivateKey.generate()
    create_ghl_source(pem(private))
    return private


# --- signatures -------------------------------------------------------------------------


def test_signature_checked_with_a_pem_public_key_is_accepted(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey
) -> None:
    r = post(client, key, fixture_bytes("ghl", "ContactCreate__with_tags"))
    assert r.status_code == 202, r.json
    assert event_count() == 1


def test_signature_checked_with_a_base64_raw_public_key_is_accepted(
    app: Flask, client: FlaskClient
) -> None:
    private = Ed25519PrivateKey.generate()
    create_ghl_source(raw_b64(private))
    assert post(client, private, fixture_bytes("ghl", "ContactDelete__single")).status_code == 202


def test_missing_signature_header_is_401_and_stores_nothing(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey
) -> None:
    body = fixture_bytes("ghl", "ContactDelete__single")
    r = client.post(URL, data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    assert r.json["error"] == "invalid_signature"
    assert event_count() == 0


def test_signature_by_another_key_is_401(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey
) -> None:
    other = Ed25519PrivateKey.generate()
    assert post(client, other, fixture_bytes("ghl", "ContactDelete__single")).status_code == 401
    assert event_count() == 0


def test_tampered_body_is_401(app: Flask, client: FlaskClient, key: Ed25519PrivateKey) -> None:
    body = fixture_bytes("ghl", "ContactTagUpdate__gold_added")
    signature = base64.b64encode(key.sign(body)).decode()
    tampered = body.replace(b'"gold", ', b"")
    r = client.post(
        URL,
        data=tampered,
        headers={"Content-Type": "application/json", "X-GHL-Signature": signature},
    )
    assert r.status_code == 401
    assert event_count() == 0


def test_signature_that_is_not_base64_is_401(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey
) -> None:
    body = fixture_bytes("ghl", "ContactDelete__single")
    r = client.post(
        URL, data=body, headers={"Content-Type": "application/json", "X-GHL-Signature": "%%%"}
    )
    assert r.status_code == 401


def test_old_key_keeps_working_while_both_keys_are_configured(
    app: Flask, client: FlaskClient
) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    create_ghl_source(f"{pem(new)}\n{pem(old)}")
    assert post(client, old, fixture_bytes("ghl", "ContactDelete__single")).status_code == 202
    assert post(client, new, fixture_bytes("ghl", "ContactUpdate__tags_changed")).status_code == 202


def test_unreadable_configured_key_is_401_saying_how_to_fix_it(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey
) -> None:
    source = db.session.execute(select(Source).where(Source.slug == SLUG)).scalar_one()
    source.public_key = "not a key"
    db.session.commit()
    forget_sources()
    r = post(client, key, fixture_bytes("ghl", "ContactDelete__single"))
    assert r.status_code == 401
    assert "--public-key" in r.json["detail"]


def test_store_failure_answers_429_with_retry_after(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey
) -> None:
    with refusing_inserts("events"):
        r = post(client, key, fixture_bytes("ghl", "ContactDelete__single"))
    assert r.status_code == 429
    assert r.json["error"] == "unavailable"
    assert r.headers["Retry-After"]


# --- translation ------------------------------------------------------------------------


def test_contact_create_is_a_contact_update_with_a_tag_snapshot(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey
) -> None:
    post(client, key, fixture_bytes("ghl", "ContactCreate__with_tags"))
    (event,) = stored_events()
    assert event.type == "contact.updated"
    assert event.external_id == "0f6a4c2e-2b1b-4bd5-9a53-7d1e1c2b0001"
    assert event.payload["tags"] == ["gold", "newsletter"]
    assert event.payload["contact"]["email"] == "grace@example.com"
    assert event.occurred_at.isoformat().startswith("2026-11-22T09:00:00.412")


def test_tag_update_without_webhook_id_is_keyed_by_id_type_and_date(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey
) -> None:
    body = fixture_bytes("ghl", "ContactTagUpdate__legacy_no_webhook_id")
    assert post(client, key, body).status_code == 202
    assert post(client, key, body).status_code == 200
    (event,) = stored_events()
    assert event.type == "contact.tags_set"
    assert event.external_id == f"{CONTACT}:ContactTagUpdate:2026-11-22T12:00:00.000Z"
    assert event.deliveries == 2


def test_contact_delete_is_contact_deleted(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey
) -> None:
    post(client, key, fixture_bytes("ghl", "ContactDelete__single"))
    (event,) = stored_events()
    assert (event.type, event.payload["contact"]["id"]) == ("contact.deleted", CONTACT)


@pytest.mark.parametrize(
    ("fixture", "reason"),
    [
        ("ContactDndUpdate__sms_off", "HighLevel ContactDndUpdate is ignored"),
        ("AppointmentCreate__unknown_type", "'ghl.AppointmentCreate' is not handled"),
    ],
)
def test_ignored_and_unknown_types_are_stored_skipped_with_a_reason(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey, fixture: str, reason: str
) -> None:
    assert post(client, key, fixture_bytes("ghl", fixture)).status_code == 202
    (event,) = stored_events()
    assert event.status == "skipped"
    assert reason in (event.reason or "")


def test_event_without_type_is_422(app: Flask, client: FlaskClient, key: Ed25519PrivateKey) -> None:
    data = json.loads(fixture_bytes("ghl", "ContactDelete__single"))
    del data["type"]
    r = post(client, key, json.dumps(data).encode())
    assert r.status_code == 422
    assert r.json["detail"] == {"type": ["required"]}


def test_tags_that_are_not_a_list_of_names_are_422(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey
) -> None:
    data = json.loads(fixture_bytes("ghl", "ContactUpdate__tags_changed"))
    data["tags"] = "gold"
    r = post(client, key, json.dumps(data).encode())
    assert r.status_code == 422
    assert "tags" in r.json["detail"]


# --- processing -------------------------------------------------------------------------


def test_contact_create_for_an_unknown_contact_creates_no_member(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey
) -> None:
    post(client, key, fixture_bytes("ghl", "ContactCreate__with_tags"))
    run_worker(app)
    (event,) = stored_events()
    assert event.status == "skipped"
    assert "no member is linked" in (event.reason or "")
    assert db.session.execute(select(Member)).first() is None


def test_end_to_end_snapshots_decide_the_members_tags_in_any_order(
    app: Flask, client: FlaskClient, key: Ed25519PrivateKey
) -> None:
    provision_member(client, "ghl", CONTACT, "grace@example.com")
    # Newest first: the older snapshot arriving late must change nothing.
    post(client, key, fixture_bytes("ghl", "ContactTagUpdate__gold_added"))  # 11:00
    post(client, key, fixture_bytes("ghl", "ContactUpdate__tags_changed"))  # 10:00
    post(client, key, fixture_bytes("ghl", "ContactCreate__with_tags"))  # 09:00
    run_worker(app)
    member = member_by_contact(client, "ghl", CONTACT)
    assert member["tags"] == ["ghl:gold", "ghl:newsletter"]
    assert member["name"] == "Grace Hopper"

    post(client, key, fixture_bytes("ghl", "ContactTagUpdate__legacy_no_webhook_id"))  # 12:00
    run_worker(app)
    assert member_by_contact(client, "ghl", CONTACT)["tags"] == ["ghl:gold"]


def test_sources_add_reads_the_public_key_file_and_prints_the_url(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    private = Ed25519PrivateKey.generate()
    key_file = tmp_path / "ghl-public-key.pem"
    key_file.write_text(pem(private) + "\n")
    result = app.test_cli_runner().invoke(
        args=["sources", "add", SLUG, "--kind", "ghl", "--public-key", str(key_file)]
    )
    assert result.exit_code == 0, result.output
    assert f"http://127.0.0.1:8000/hooks/{SLUG}" in result.output
    assert "Secret" not in result.output
    assert post(client, private, fixture_bytes("ghl", "ContactDelete__single")).status_code == 202
