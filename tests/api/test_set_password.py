"""A set-password token handed out by the admin API and spent once by the site's backend."""

from __future__ import annotations

from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

from gatehouse.extensions import db
from gatehouse.models import AuditEntry, Member
from tests.helpers import bearer, create_source, create_token, keap_url, run_worker


@pytest.fixture
def jane(app: Flask, client: FlaskClient) -> str:
    secret = create_source("keap", "keap-http-post")
    r = client.post(
        keap_url("keap", secret, "genpass"), data={"contactId": "2729", "Email": "jane@ex.com"}
    )
    assert r.status_code == 202
    run_worker(app)
    found = client.get("/api/members?contact=keap:2729", headers=bearer(create_token("reader")))
    return str(found.json["members"][0]["id"])


def hand_out(client: FlaskClient, member_id: str, admin: str) -> str:
    r = client.post(f"/api/members/{member_id}/password-token", headers=bearer(admin))
    assert r.status_code == 200, r.json
    assert r.json["member_id"] == member_id and r.json["expires_in"] == 7 * 24 * 3600
    return str(r.json["token"])


def spend(client: FlaskClient, reader: str, token: str, password: str) -> Any:
    return client.post(
        "/api/members/password", json={"token": token, "password": password}, headers=bearer(reader)
    )


def test_the_token_sets_the_password_once(app: Flask, client: FlaskClient, jane: str) -> None:
    admin, reader = create_token("admin", "ops"), create_token("reader", "site")
    token = hand_out(client, jane, admin)

    r = spend(client, reader, token, "correct horse battery")
    assert r.status_code == 200, r.json
    assert r.json == {"member_id": jane, "status": "password_set"}
    member = db.session.get(Member, jane)
    assert member is not None and member.password_hash is not None
    assert PasswordHasher().verify(member.password_hash, "correct horse battery")

    again = spend(client, reader, token, "another password")
    assert again.status_code == 409 and again.json["error"] == "token_used"
    db.session.expire_all()
    kept = db.session.get(Member, jane)
    assert kept is not None and kept.password_hash is not None
    assert PasswordHasher().verify(kept.password_hash, "correct horse battery")


def test_setting_a_password_spends_every_older_token(
    app: Flask, client: FlaskClient, jane: str
) -> None:
    admin, reader = create_token("admin", "ops"), create_token("reader", "site")
    first, second = hand_out(client, jane, admin), hand_out(client, jane, admin)
    assert spend(client, reader, second, "password number two").status_code == 200
    assert spend(client, reader, first, "password number one").json["error"] == "token_used"
    # And a token handed out after it works.
    assert spend(client, reader, hand_out(client, jane, admin), "third one!").status_code == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"token": "not-a-token", "password": "long enough"}, "invalid_token"),
        ({"token": "x", "password": "short"}, "bad_password"),
        ({"token": "x"}, "bad_request"),
        ("just a string", "bad_request"),
    ],
    ids=["forged-token", "short-password", "no-password", "not-an-object"],
)
def test_bad_requests_say_what_is_wrong(
    app: Flask, client: FlaskClient, jane: str, body: Any, code: str
) -> None:
    reader = create_token("reader", "site")
    r = client.post("/api/members/password", json=body, headers=bearer(reader))
    assert r.status_code == 400 and r.json["error"] == code
    assert r.json["detail"]


def test_a_token_signed_with_another_key_is_not_genuine(
    app: Flask, client: FlaskClient, jane: str
) -> None:
    from gatehouse.passwords import set_password_token

    forged = set_password_token("another-secret-key-0123456789abcdef", jane, 0)
    r = spend(client, create_token("reader", "site"), forged, "long enough")
    assert r.status_code == 400 and r.json["error"] == "invalid_token"


def test_handing_out_needs_an_admin_and_is_audited(
    app: Flask, client: FlaskClient, jane: str
) -> None:
    reader = create_token("reader", "site")
    r = client.post(f"/api/members/{jane}/password-token", headers=bearer(reader))
    assert r.status_code == 403

    admin = create_token("admin", "ops")
    token = hand_out(client, jane, admin)
    missing = client.post("/api/members/nope/password-token", headers=bearer(admin))
    assert missing.status_code == 404 and missing.json["error"] == "not_found"

    entries = db.session.query(AuditEntry).filter_by(action="member.password_token").all()
    assert [(e.token_name, e.target) for e in entries] == [("ops", jane)]
    assert all(token not in str(e.__dict__) for e in entries)  # the token is not kept
