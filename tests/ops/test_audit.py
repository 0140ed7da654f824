"""The audit log records admin actions other packages add, without their help: member revoke."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from gatehouse.extensions import db
from gatehouse.models import Member
from tests.helpers import bearer, create_token
from tests.ops.scenario import setup_member


def test_member_revoke_and_a_refused_action_are_in_the_audit_log(
    app: Flask, client: FlaskClient
) -> None:
    setup_member(app, client)
    admin, reader = create_token("admin", "support-1"), create_token("reader", "site")
    member_id = db.session.query(Member.id).scalar()
    db.session.rollback()

    assert client.post(f"/api/members/{member_id}/revoke", headers=bearer(admin)).status_code == 200
    assert client.post("/api/members/nope/restore", headers=bearer(admin)).status_code == 404
    refused = client.post(f"/api/members/{member_id}/restore", headers=bearer(reader))
    assert refused.status_code == 403

    entries = client.get("/api/audit", headers=bearer(admin)).json["entries"]
    assert [(e["token"], e["action"], e["target"], e["result"]) for e in entries] == [
        ("support-1", "POST /api/members/<member_id>/restore", "nope", "not_found"),
        ("support-1", "member.revoke", member_id, "ok"),
    ]
    assert entries[0]["at"].endswith("Z")
