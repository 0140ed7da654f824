"""GET /api/events[/<id>], replays (one, bulk, dry run) and the audit log, through the API."""

from __future__ import annotations

import json

import redis
from flask import Flask
from flask.testing import FlaskClient

from gatehouse.extensions import db, redis_client
from gatehouse.models import Event, EventAttempt, Member
from tests.conftest import table_counts
from tests.helpers import bearer, create_token, run_worker
from tests.ops.scenario import failed_tag_event, post_tag, setup_member

TABLES = ("events", "members", "contacts", "contact_tags", "event_attempts", "replays")


def redis_dump(client: redis.Redis) -> dict[bytes, bytes | None]:
    return {key: client.dump(key) for key in sorted(client.keys("gatehouse:access*"))}


def access(client: FlaskClient, token: str) -> dict:
    r = client.get("/api/access?contact=keap:2729", headers=bearer(token))
    assert r.status_code == 200, r.json
    return dict(r.json)


def test_list_filters_by_status_source_type_and_contact(app: Flask, client: FlaskClient) -> None:
    secrets = setup_member(app, client)
    admin = create_token("admin")
    failed = failed_tag_event(app, client, secrets["std_secret"], "205", "m1")
    other = post_tag(client, secrets["std_secret"], "300", "m2", contact="9999")
    run_worker(app)

    def ids(query: str) -> list[str]:
        r = client.get(f"/api/events?{query}", headers=bearer(admin))
        assert r.status_code == 200, r.json
        return [e["id"] for e in r.json["events"]]

    assert ids("status=failed") == [failed]
    assert ids("source=bridge") == [other, failed]
    assert len(ids("source=keap")) == 1
    assert ids("type=contact.tag_added&contact=keap:9999") == [other]
    assert ids("contact=keap:2729&type=contact.tag_added") == [failed]
    assert ids("since=2999-01-01T00:00:00Z") == []
    assert len(ids("until=2999-01-01T00:00:00Z")) == 3


def test_cursor_pages_cover_every_event_once(app: Flask, client: FlaskClient) -> None:
    secrets = setup_member(app, client)
    admin = create_token("admin")
    posted = {post_tag(client, secrets["std_secret"], str(t), f"m{t}") for t in range(7)}
    seen: list[str] = []
    cursor = ""
    while True:
        r = client.get(f"/api/events?source=bridge&limit=3&cursor={cursor}", headers=bearer(admin))
        assert r.status_code == 200, r.json
        seen += [e["id"] for e in r.json["events"]]
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 and set(seen) == posted
    assert seen == sorted(seen, reverse=True)


def test_bad_filters_answer_400_with_the_reason(app: Flask, client: FlaskClient) -> None:
    admin = create_token("admin")
    for query, word in [
        ("status=broken", "status"),
        ("since=yesterday", "since"),
        ("contact=2729", "contact"),
        ("limit=0", "limit"),
        ("cursor=%%%%", "cursor"),
    ]:
        r = client.get(f"/api/events?{query}", headers=bearer(admin))
        assert r.status_code == 400, query
        assert r.json["error"] == "bad_request" and word in r.json["detail"], r.json


def test_events_api_refuses_missing_reader_and_unknown_tokens(
    app: Flask, client: FlaskClient
) -> None:
    reader = create_token("reader")
    for method, path in [
        ("get", "/api/events"),
        ("get", "/api/events/x"),
        ("post", "/api/events/x/replay"),
        ("post", "/api/events/replay"),
        ("get", "/api/replays/x"),
        ("get", "/api/audit"),
    ]:
        call = getattr(client, method)
        assert call(path).json["error"] == "missing_token"
        r = call(path, headers=bearer(reader))
        assert (r.status_code, r.json["error"]) == (403, "forbidden")
        r = call(path, headers=bearer("gh_not_a_real_token"))
        assert (r.status_code, r.json["error"]) == (401, "invalid_token")


def test_event_detail_has_payload_headers_without_secrets_and_every_attempt(
    app: Flask, client: FlaskClient
) -> None:
    secrets = setup_member(app, client)
    admin = create_token("admin")
    event_id = failed_tag_event(app, client, secrets["std_secret"], "205", "m1")

    r = client.get(f"/api/events/{event_id}", headers=bearer(admin))
    assert r.status_code == 200
    e = r.json
    assert e["status"] == "failed" and e["source"] == "bridge" and e["external_id"] == "m1"
    assert e["payload"]["tag"] == "205" and e["contact"] == "keap:2729"
    assert "HandlerBug: tag table out of date" in e["last_error"]
    assert e["attempts"] == 1 and e["deliveries"] == 1
    [attempt] = e["attempt_log"]
    assert attempt["number"] == 1 and "HandlerBug" in attempt["error"]
    headers = {k.lower() for k in e["headers"]}
    assert "webhook-id" in headers
    assert not any("signature" in h or "authorization" in h for h in headers)
    assert secrets["std_secret"] not in json.dumps(e)
    assert client.get("/api/events/nope", headers=bearer(admin)).status_code == 404


def test_replaying_a_failed_event_after_the_fix_processes_it_and_grants_access(
    app: Flask, client: FlaskClient
) -> None:
    secrets = setup_member(app, client)
    admin, reader = create_token("admin", "alice"), create_token("reader")
    event_id = failed_tag_event(app, client, secrets["std_secret"], "205", "m1")
    assert "section:community" not in access(client, reader)["permissions"]

    r = client.post(f"/api/events/{event_id}/replay", headers=bearer(admin))
    assert r.status_code == 202, r.json
    assert r.json["id"] == event_id and r.json["status"] == "queued"
    run_worker(app)

    e = client.get(f"/api/events/{event_id}", headers=bearer(admin)).json
    assert e["status"] == "processed" and e["last_error"] is None
    assert [(a["number"], a["error"] is None) for a in e["attempt_log"]] == [(1, False), (2, True)]
    assert "section:community" in access(client, reader)["permissions"]
    entries = client.get("/api/audit", headers=bearer(admin)).json["entries"]
    assert [(x["token"], x["action"], x["target"], x["result"]) for x in entries] == [
        ("alice", "event.replay", event_id, "ok")
    ]


def test_replaying_processed_events_changes_nothing(app: Flask, client: FlaskClient) -> None:
    secrets = setup_member(app, client)
    admin, reader = create_token("admin"), create_token("reader")
    post_tag(client, secrets["std_secret"], "205", "m1")
    run_worker(app)
    before_access = access(client, reader)
    member = db.session.query(Member).one()
    version, tags_before = member.access_version, table_counts("contact_tags")
    db.session.rollback()

    r = client.post("/api/events/replay", json={"status": "processed"}, headers=bearer(admin))
    assert r.status_code == 202 and r.json["matched"] == 2
    run_worker(app)

    progress = client.get(f"/api/replays/{r.json['replay_id']}", headers=bearer(admin)).json
    assert (progress["status"], progress["done"], progress["failed"]) == ("finished", 2, 0)
    db.session.expire_all()
    assert db.session.query(Member).one().access_version == version
    assert table_counts("contact_tags") == tags_before
    after = access(client, reader)
    assert after["permissions"] == before_access["permissions"]
    assert after["version"] == before_access["version"]


def test_dry_run_reports_permission_changes_and_writes_nothing(
    app: Flask, client: FlaskClient
) -> None:
    secrets = setup_member(app, client)
    admin, reader = create_token("admin"), create_token("reader")
    event_id = failed_tag_event(app, client, secrets["std_secret"], "205", "m1")
    access(client, reader)  # fills the cache, as the membership site would
    rows = db.session.query(Event).filter_by(id=event_id).one()
    snapshot = (rows.status, rows.attempts, rows.last_error)
    counts = table_counts(*TABLES)
    db.session.rollback()
    cached = redis_dump(redis_client.get())
    member_id = db.session.query(Member.id).scalar()
    db.session.rollback()

    r = client.post(
        "/api/events/replay", json={"status": "failed", "dry_run": True}, headers=bearer(admin)
    )
    assert r.status_code == 200, r.json
    assert r.json == {
        "dry_run": True,
        "matched": 1,
        "changes": [
            {
                "member_id": member_id,
                "new_member": False,
                "added": ["section:community"],
                "removed": [],
            }
        ],
        "errors": [],
    }
    one = client.post(
        f"/api/events/{event_id}/replay", json={"dry_run": True}, headers=bearer(admin)
    )
    assert one.json["changes"] == r.json["changes"]

    db.session.expire_all()
    event = db.session.get(Event, event_id)
    assert event is not None and (event.status, event.attempts, event.last_error) == snapshot
    assert table_counts(*TABLES) == counts
    assert redis_dump(redis_client.get()) == cached
    assert get_queue_length(app) == 0


def get_queue_length(app: Flask) -> int:
    from gatehouse.queue import get_queue

    return int(get_queue(app).count)


def test_bulk_replay_covers_every_matching_event_and_reports_progress(
    app: Flask, client: FlaskClient
) -> None:
    secrets = setup_member(app, client)
    admin = create_token("admin", "night-shift")
    failed = {
        failed_tag_event(app, client, secrets["std_secret"], str(t), f"m{t}") for t in range(5)
    }

    r = client.post(
        "/api/events/replay", json={"status": "failed", "source": "bridge"}, headers=bearer(admin)
    )
    assert r.status_code == 202 and r.json["matched"] == 5
    replay_id = r.json["replay_id"]
    pending = client.get(f"/api/replays/{replay_id}", headers=bearer(admin)).json
    assert (pending["done"], pending["failed"], pending["remaining"]) == (0, 0, 5)
    run_worker(app)

    done = client.get(f"/api/replays/{replay_id}", headers=bearer(admin)).json
    assert (done["status"], done["done"], done["failed"], done["remaining"]) == (
        "finished",
        5,
        0,
        0,
    )
    db.session.expire_all()
    statuses = {e.id: e.status for e in db.session.query(Event).filter(Event.id.in_(failed))}
    assert set(statuses.values()) == {"processed"}
    assert db.session.query(EventAttempt).filter(EventAttempt.event_id.in_(failed)).count() == 10
    [entry] = client.get("/api/audit", headers=bearer(admin)).json["entries"]
    assert (entry["token"], entry["action"], entry["target"]) == (
        "night-shift",
        "events.replay",
        replay_id,
    )
    assert entry["detail"]["matched"] == 5


def test_bulk_replay_counts_events_that_fail_again(app: Flask, client: FlaskClient) -> None:
    from tests.ops.scenario import broken

    secrets = setup_member(app, client)
    admin = create_token("admin")
    failed_tag_event(app, client, secrets["std_secret"], "205", "m1")
    r = client.post("/api/events/replay", json={"status": "failed"}, headers=bearer(admin))
    with broken("contact.tag_added"):
        run_worker(app)
    done = client.get(f"/api/replays/{r.json['replay_id']}", headers=bearer(admin)).json
    assert (done["status"], done["done"], done["failed"]) == ("finished", 0, 1)
    event = client.get("/api/events?status=failed", headers=bearer(admin)).json["events"][0]
    assert event["attempts"] == 2 and "HandlerBug" in event["last_error"]
