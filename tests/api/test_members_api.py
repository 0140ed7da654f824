"""/api/members and /api/access with reader and admin bearer tokens."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient
from sqlalchemy import select

from gatehouse.api.auth import require
from gatehouse.extensions import db
from gatehouse.models import ApiToken
from tests.helpers import bearer, create_source, create_token, keap_url, run_worker


@pytest.fixture
def jane(app: Flask, client: FlaskClient) -> str:
    """A member made the real way: a genpass post and the worker."""
    secret = create_source("keap", "keap-http-post")
    r = client.post(
        keap_url("keap", secret, "genpass"),
        data={
            "contactId": "2729",
            "Email": "jane@example.com",
            "FirstName": "Jane",
            "Groups": "101",
        },
    )
    assert r.status_code == 202
    run_worker(app)
    reader = create_token("reader", "setup")
    found = client.get("/api/members?contact=keap:2729", headers=bearer(reader)).json
    return str(found["members"][0]["id"])


def test_without_a_token_answers_401(app: Flask, client: FlaskClient) -> None:
    r = client.get("/api/access?contact=keap:2729")

    assert r.status_code == 401
    assert r.json["error"] == "missing_token"
    assert r.headers["WWW-Authenticate"] == "Bearer"


def test_with_a_non_bearer_scheme_answers_401(app: Flask, client: FlaskClient) -> None:
    token = create_token("reader")

    r = client.get("/api/access?contact=keap:1", headers={"Authorization": f"Basic {token}"})

    assert r.status_code == 401
    assert r.json["error"] == "missing_token"


def test_with_an_unknown_token_answers_401(app: Flask, client: FlaskClient) -> None:
    r = client.get("/api/access?contact=keap:2729", headers=bearer("gh_not-a-real-token"))

    assert r.status_code == 401
    assert r.json["error"] == "invalid_token"


def admin_only_route(app: Flask) -> None:
    @require("admin")
    def admin_only() -> Any:
        return jsonify({"ok": True})

    app.add_url_rule("/api/test-admin-only", "test_admin_only", admin_only)


def test_reader_token_on_an_admin_endpoint_answers_403(app: Flask) -> None:
    admin_only_route(app)
    reader = create_token("reader")

    r = app.test_client().get("/api/test-admin-only", headers=bearer(reader))

    assert r.status_code == 403
    assert r.json["error"] == "forbidden"


def test_admin_token_on_an_admin_endpoint_is_allowed(app: Flask) -> None:
    admin_only_route(app)
    admin = create_token("admin")

    r = app.test_client().get("/api/test-admin-only", headers=bearer(admin))

    assert r.status_code == 200
    assert r.json == {"ok": True}


def test_admin_token_may_read_what_a_reader_may(app: Flask, client: FlaskClient, jane: str) -> None:
    admin = create_token("admin")

    r = client.get(f"/api/members/{jane}/access", headers=bearer(admin))

    assert r.status_code == 200
    assert r.json["member_id"] == jane


def test_tokens_are_stored_only_as_hashes(app: Flask) -> None:
    token = create_token("reader")

    stored = db.session.execute(select(ApiToken.token_hash)).scalars().all()

    assert token not in stored
    assert len(stored) == 1 and len(stored[0]) == 64


def test_member_by_contact_has_the_contract_shape(
    app: Flask, client: FlaskClient, jane: str
) -> None:
    r = client.get("/api/members?contact=keap:2729", headers=bearer(create_token("reader")))

    assert r.status_code == 200
    [found] = r.json["members"]
    assert found["id"] == jane
    assert found["email"] == "jane@example.com"
    assert found["name"] == "Jane"
    assert found["status"] == "active"
    assert found["all_access"] is False
    assert found["contacts"] == [{"crm": "keap", "contact_id": "2729", "state": "live"}]
    assert found["tags"] == ["keap:101"]
    assert found["subscriptions"] == []


def test_member_by_email(app: Flask, client: FlaskClient, jane: str) -> None:
    r = client.get("/api/members?email=jane@example.com", headers=bearer(create_token("reader")))

    assert [m["id"] for m in r.json["members"]] == [jane]


def test_member_by_email_ignores_case(app: Flask, client: FlaskClient, jane: str) -> None:
    """A support agent types the address as the member spelled it on the phone."""
    r = client.get("/api/members?email=%20Jane@Example.COM", headers=bearer(create_token("reader")))

    assert [m["id"] for m in r.json["members"]] == [jane]


def test_member_list_with_no_match_is_empty(app: Flask, client: FlaskClient) -> None:
    r = client.get("/api/members?email=nobody@example.com", headers=bearer(create_token("reader")))

    assert r.status_code == 200
    assert r.json == {"members": []}


def test_member_list_without_a_filter_answers_400(app: Flask, client: FlaskClient) -> None:
    r = client.get("/api/members", headers=bearer(create_token("reader")))

    assert r.status_code == 400
    assert r.json["error"] == "bad_request"


@pytest.mark.parametrize("contact", ["2729", "keap:", ":2729", ""])
def test_malformed_contact_answers_400(app: Flask, client: FlaskClient, contact: str) -> None:
    r = client.get(f"/api/access?contact={contact}", headers=bearer(create_token("reader")))

    assert r.status_code == 400
    assert "crm" in r.json["detail"]


def test_member_by_id(app: Flask, client: FlaskClient, jane: str) -> None:
    r = client.get(f"/api/members/{jane}", headers=bearer(create_token("reader")))

    assert r.status_code == 200
    assert r.json["id"] == jane


def test_unknown_member_answers_404(app: Flask, client: FlaskClient) -> None:
    reader = bearer(create_token("reader"))

    assert client.get("/api/members/nope", headers=reader).json == {"error": "not_found"}
    r = client.get("/api/members/nope/access", headers=reader)
    assert r.status_code == 404
    assert r.json == {"error": "not_found"}


def test_unknown_contact_answers_404(app: Flask, client: FlaskClient) -> None:
    r = client.get("/api/access?contact=keap:404", headers=bearer(create_token("reader")))

    assert r.status_code == 404
    assert r.json == {"error": "not_found"}


def test_access_by_contact_and_by_member_id_are_the_same_answer(
    app: Flask, client: FlaskClient, jane: str
) -> None:
    reader = bearer(create_token("reader"))

    by_contact = client.get("/api/access?contact=keap:2729", headers=reader)
    by_id = client.get(f"/api/members/{jane}/access", headers=reader)

    assert by_contact.status_code == by_id.status_code == 200
    assert by_contact.json == by_id.json
    assert set(by_id.json) == {
        "member_id",
        "status",
        "groups",
        "permissions",
        "sections",
        "landing",
        "version",
        "computed_at",
    }
    assert by_id.json["computed_at"].endswith("Z")
