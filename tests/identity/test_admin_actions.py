"""Revoke, restore, all-access and refresh: API and CLI over identity.admin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient

from gatehouse.extensions import db
from gatehouse.models import Member
from tests.helpers import bearer, create_token
from tests.identity.common import Crm, access, load_rules, member_of, merge, provision


def minutes_ago(n: float) -> str:
    when = datetime.now(UTC) - timedelta(minutes=n)
    return when.isoformat().replace("+00:00", "Z")


def member_with_gold(app: Flask, client: FlaskClient) -> tuple[Crm, str]:
    load_rules()
    crm = Crm(app, client)
    crm.post(provision("1", 0, tags=["101"]))
    crm.run()
    member = member_of("hubspot", "1")
    assert member is not None
    return crm, member.id


def test_revoke_takes_every_permission_and_restore_gives_them_back(
    app: Flask, client: FlaskClient
) -> None:
    _, member_id = member_with_gold(app, client)
    admin = create_token("admin")
    version = access(member_id)["version"]
    r = client.post(f"/api/members/{member_id}/revoke", headers=bearer(admin))
    assert r.status_code == 200, r.json
    assert (r.json["status"], r.json["changed"]) == ("revoked", True)
    answer = access(member_id)
    assert (answer["status"], answer["permissions"]) == ("revoked", [])
    assert answer["version"] > version
    r = client.post(f"/api/members/{member_id}/restore", headers=bearer(admin))
    assert r.status_code == 200, r.json
    assert access(member_id)["groups"] == ["gold"]


def test_an_older_revoke_processed_after_a_restore_does_not_revoke_again(
    app: Flask, client: FlaskClient
) -> None:
    crm, member_id = member_with_gold(app, client)
    admin = create_token("admin")
    client.post(f"/api/members/{member_id}/revoke", headers=bearer(admin))
    client.post(f"/api/members/{member_id}/restore", headers=bearer(admin))
    # The CRM's revoke happened (occurred_at) before the restore; it arrives late.
    crm.post({"type": "member.revoked", "occurred_at": minutes_ago(5), "contact": {"id": "1"}})
    crm.run()
    member = db.session.get(Member, member_id)
    assert member is not None and member.status == "active"
    assert access(member_id)["groups"] == ["gold"]


def test_a_revoke_newer_than_the_restore_still_revokes(app: Flask, client: FlaskClient) -> None:
    crm, member_id = member_with_gold(app, client)
    admin = create_token("admin")
    client.post(f"/api/members/{member_id}/restore", headers=bearer(admin))
    crm.post({"type": "member.revoked", "occurred_at": minutes_ago(-5), "contact": {"id": "1"}})
    crm.run()
    assert access(member_id)["status"] == "revoked"


def test_all_access_grants_everything_any_group_grants_and_off_takes_it_back(
    app: Flask, client: FlaskClient
) -> None:
    _, member_id = member_with_gold(app, client)
    admin = create_token("admin")
    r = client.post(
        f"/api/members/{member_id}/all-access", json={"enabled": True}, headers=bearer(admin)
    )
    assert r.status_code == 200, r.json
    assert access(member_id)["groups"] == ["gold", "community", "paying"]
    assert "course:paid" in access(member_id)["permissions"]
    client.post(
        f"/api/members/{member_id}/all-access", json={"enabled": False}, headers=bearer(admin)
    )
    assert access(member_id)["groups"] == ["gold"]


def test_all_access_needs_a_boolean_body(app: Flask, client: FlaskClient) -> None:
    _, member_id = member_with_gold(app, client)
    admin = create_token("admin")
    for body in ({"enabled": "yes"}, {}, None):
        r = client.post(f"/api/members/{member_id}/all-access", json=body, headers=bearer(admin))
        assert r.status_code == 400
        assert r.json["error"] == "bad_request"


def test_refresh_rewrites_a_lost_cache_entry(app: Flask, client: FlaskClient) -> None:
    from gatehouse.access.cache import KEY
    from gatehouse.extensions import redis_client

    _, member_id = member_with_gold(app, client)
    redis_client.get().delete(KEY.format(member_id))
    admin = create_token("admin")
    r = client.post(f"/api/members/{member_id}/refresh", headers=bearer(admin))
    assert r.status_code == 200, r.json
    assert access(member_id)["groups"] == ["gold"]


def test_admin_actions_need_an_admin_token(app: Flask, client: FlaskClient) -> None:
    _, member_id = member_with_gold(app, client)
    reader = create_token("reader")
    r = client.post(f"/api/members/{member_id}/revoke", headers=bearer(reader))
    assert r.status_code == 403 and r.json["error"] == "forbidden"
    assert access(member_id)["status"] == "active"


def test_unknown_member_is_404(app: Flask, client: FlaskClient) -> None:
    admin = create_token("admin")
    r = client.post("/api/members/nope/revoke", headers=bearer(admin))
    assert r.status_code == 404 and r.json["error"] == "not_found"


def test_acting_on_a_merged_away_member_is_409_and_names_the_survivor(
    app: Flask, client: FlaskClient
) -> None:
    crm, survivor_id = member_with_gold(app, client)
    crm.post(provision("2", 1))
    crm.run()
    other = member_of("hubspot", "2")
    assert other is not None
    other_id = other.id
    crm.post(merge("1", ["2"], 10))
    crm.run()
    admin = create_token("admin")
    r = client.post(f"/api/members/{other_id}/restore", headers=bearer(admin))
    assert r.status_code == 409 and r.json["error"] == "member_merged"
    assert survivor_id in r.json["detail"]


def test_cli_revoke_restore_and_all_access(app: Flask, client: FlaskClient) -> None:
    _, member_id = member_with_gold(app, client)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["members", "revoke", member_id])
    assert result.exit_code == 0, result.output
    assert "status=revoked" in result.output
    assert access(member_id)["permissions"] == []
    result = runner.invoke(args=["members", "restore", member_id])
    assert result.exit_code == 0 and "status=active" in result.output
    result = runner.invoke(args=["members", "all-access", member_id])
    assert result.exit_code == 0 and "all_access=True" in result.output
    result = runner.invoke(args=["members", "all-access", member_id, "--off"])
    assert result.exit_code == 0 and "all_access=False" in result.output
    assert access(member_id)["groups"] == ["gold"]


def test_cli_unknown_member_says_so_and_exits_non_zero(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["members", "revoke", "nope"])
    assert result.exit_code != 0
    assert "no member 'nope'" in result.output
