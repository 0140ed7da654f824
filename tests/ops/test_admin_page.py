"""/admin with the Flask test client: login, logout, CSRF, and the pages an admin uses."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from gatehouse.extensions import db
from gatehouse.models import ApiToken, AuditEntry, Event
from tests.helpers import create_token, run_worker
from tests.ops.scenario import failed_tag_event, setup_member


def csrf(client: FlaskClient) -> str:
    client.get("/admin/login")
    with client.session_transaction() as s:
        return str(s["csrf"])


def login(client: FlaskClient, token: str) -> None:
    r = client.post("/admin/login", data={"token": token, "csrf_token": csrf(client)})
    assert r.status_code == 302, r.get_data(as_text=True)


def test_pages_need_a_login(app: Flask, client: FlaskClient) -> None:
    for path in ("/admin/events", "/admin/members", "/admin/audit", "/admin/events/x"):
        r = client.get(path)
        assert r.status_code == 302 and "/admin/login" in r.headers["Location"]


def test_login_refuses_unknown_and_reader_tokens(app: Flask, client: FlaskClient) -> None:
    reader = create_token("reader")
    for token, message in [("nope-123", "not known"), (reader, "not an admin token")]:
        r = client.post("/admin/login", data={"token": token, "csrf_token": csrf(client)})
        assert r.status_code == 401 and message in r.get_data(as_text=True)
        assert client.get("/admin/events").status_code == 302


def test_login_then_logout(app: Flask, client: FlaskClient) -> None:
    admin = create_token("admin", "ops")
    login(client, admin)
    page = client.get("/admin/events")
    assert page.status_code == 200 and "signed in as ops" in page.get_data(as_text=True)
    with client.session_transaction() as s:
        assert admin not in str(dict(s))  # the cookie holds the name and hash, never the token
    r = client.post("/admin/logout", data={"csrf_token": csrf(client)})
    assert r.status_code == 302
    assert client.get("/admin/events").status_code == 302
    actions = [a for (a,) in db.session.query(AuditEntry.action).order_by(AuditEntry.id)]
    assert actions == ["admin.login", "admin.logout"]


def test_forms_without_the_csrf_token_are_refused(app: Flask, client: FlaskClient) -> None:
    secrets = setup_member(app, client)
    admin = create_token("admin")
    event_id = failed_tag_event(app, client, secrets["std_secret"], "205", "m1")
    assert client.post("/admin/login", data={"token": admin}).status_code == 400
    login(client, admin)
    for path, data in [
        (f"/admin/events/{event_id}/replay", {}),
        (f"/admin/events/{event_id}/replay", {"csrf_token": "forged"}),
        ("/admin/events/replay", {"status": "failed"}),
        ("/admin/logout", {}),
    ]:
        r = client.post(path, data=data)
        assert r.status_code == 400, path
    db.session.expire_all()
    assert db.session.get(Event, event_id).status == "failed"  # type: ignore[union-attr]
    assert client.get("/admin/events").status_code == 200  # still logged in


def test_removing_the_token_ends_its_sessions(app: Flask, client: FlaskClient) -> None:
    login(client, create_token("admin", "temp"))
    assert client.get("/admin/events").status_code == 200
    db.session.query(ApiToken).filter_by(name="temp").delete()
    db.session.commit()
    assert client.get("/admin/events").status_code == 302


def test_find_preview_and_replay_a_failed_event_from_the_page(
    app: Flask, client: FlaskClient
) -> None:
    secrets = setup_member(app, client)
    admin = create_token("admin", "ops")
    event_id = failed_tag_event(app, client, secrets["std_secret"], "205", "m1")
    login(client, admin)

    listing = client.get("/admin/events?status=failed&contact=keap:2729").get_data(as_text=True)
    assert event_id in listing and "HandlerBug" in listing
    token = csrf(client)
    preview = client.post(f"/admin/events/{event_id}/preview", data={"csrf_token": token})
    text = preview.get_data(as_text=True)
    assert preview.status_code == 200 and "section:community" in text and "Replay now" in text
    db.session.expire_all()
    assert db.session.get(Event, event_id).status == "failed"  # type: ignore[union-attr]

    r = client.post(f"/admin/events/{event_id}/replay", data={"csrf_token": token})
    assert r.status_code == 302
    run_worker(app)
    detail = client.get(f"/admin/events/{event_id}").get_data(as_text=True)
    assert 'id="event-status">processed' in detail
    member = client.get("/admin/members?q=keap:2729").get_data(as_text=True)
    assert "section:community" in member and "jane@example.com" in member
    by_email = client.get("/admin/members?q=JANE@example.com").get_data(as_text=True)
    assert "section:community" in by_email  # found whatever the case typed
    audit = client.get("/admin/audit").get_data(as_text=True)
    assert "event.replay.preview" in audit and "event.replay" in audit and "ops" in audit


def test_bulk_replay_from_the_page_shows_progress(app: Flask, client: FlaskClient) -> None:
    secrets = setup_member(app, client)
    login(client, create_token("admin"))
    failed_tag_event(app, client, secrets["std_secret"], "205", "m1")
    failed_tag_event(app, client, secrets["std_secret"], "300", "m2")
    token = csrf(client)
    preview = client.post(
        "/admin/events/replay-preview", data={"status": "failed", "csrf_token": token}
    ).get_data(as_text=True)
    assert "2 event(s) would be replayed" in preview
    r = client.post("/admin/events/replay", data={"status": "failed", "csrf_token": token})
    assert r.status_code == 302 and "/admin/replays/" in r.headers["Location"]
    run_worker(app)
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert 'id="replay-status">finished' in page and "<dd>2</dd>" in page


def test_revoke_and_restore_a_member_from_the_page(app: Flask, client: FlaskClient) -> None:
    from gatehouse.access import cache
    from gatehouse.models import Member

    setup_member(app, client)
    login(client, create_token("admin", "ops"))
    page = client.get("/admin/members?q=keap:2729").get_data(as_text=True)
    assert "Revoke all access" in page and "Restore access" not in page
    member_id = db.session.query(Member.id).scalar()
    token = csrf(client)

    r = client.post(
        f"/admin/members/{member_id}/action",
        data={"action": "revoke", "q": "keap:2729", "csrf_token": token},
    )
    assert r.status_code == 302 and "q=keap" in r.headers["Location"]
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "Revoke: done, member is revoked." in page and "Restore access" in page
    assert json_of(cache.read(member_id))["permissions"] == []  # the cache says so at once

    client.post(
        f"/admin/members/{member_id}/action",
        data={"action": "restore", "q": "keap:2729", "csrf_token": token},
    )
    assert json_of(cache.read(member_id))["status"] == "active"
    actions = [e.action for e in db.session.query(AuditEntry).order_by(AuditEntry.id)]
    assert actions[-2:] == ["member.revoke", "member.restore"]

    unknown = client.post(
        f"/admin/members/{member_id}/action", data={"action": "delete", "csrf_token": token}
    )
    page = client.get(unknown.headers["Location"]).get_data(as_text=True)
    assert "Unknown action" in page
    stale = client.post(f"/admin/members/{member_id}/action", data={"action": "revoke"})
    assert stale.status_code == 400  # no CSRF token: refused, nothing done
    db.session.expire_all()
    assert db.session.get(Member, member_id).status == "active"  # type: ignore[union-attr]


def json_of(body: bytes | None) -> dict[str, object]:
    import json

    assert body is not None
    return dict(json.loads(body))


def test_hand_out_a_set_password_token_from_the_page(app: Flask, client: FlaskClient) -> None:
    import re

    from gatehouse.models import Member
    from gatehouse.passwords import read_set_password_token

    setup_member(app, client)
    login(client, create_token("admin", "ops"))
    member = db.session.query(Member).one()
    r = client.post(
        f"/admin/members/{member.id}/password-token",
        data={"q": "keap:2729", "csrf_token": csrf(client)},
    )
    assert r.status_code == 200
    found = re.search(r'<pre id="password-token">([^<]+)</pre>', r.get_data(as_text=True))
    assert found is not None
    token = found.group(1)
    assert read_set_password_token(app.config["SECRET_KEY"], token) == (
        member.id,
        member.password_nonce,
    )
    with client.session_transaction() as s:
        assert token not in str(dict(s))  # shown on the page only, never in the cookie
    again = client.get("/admin/members?q=keap:2729").get_data(as_text=True)
    assert token not in again  # shown once
    entries = db.session.query(AuditEntry).filter_by(action="member.password_token").all()
    assert [(e.token_name, e.target) for e in entries] == [("ops", member.id)]
