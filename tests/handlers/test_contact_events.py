"""Contact and member events, posted and run through the real worker."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gatehouse.access.rules import parse_rules_text
from gatehouse.extensions import db
from gatehouse.handlers.jobs import process_event
from gatehouse.models import AccessRules, Contact, ContactTag, Event, Member, new_id
from tests.helpers import (
    bearer,
    create_source,
    create_token,
    keap_url,
    load_fixture,
    post_standard,
    repo_python,
    run_worker,
)

RULES = """
public: {grants: [page:public]}
groups:
  - name: gold
    tags: {any: ["keap:101"]}
    grants: [course:gold]
"""


@pytest.fixture
def keap(app: Flask) -> str:
    db.session.add(AccessRules(source_text=RULES, rules=parse_rules_text(RULES)))
    db.session.commit()
    return create_source("keap", "keap-http-post", crm="keap")


@pytest.fixture
def bridge(app: Flask) -> str:
    return create_source("bridge", "standard", crm="keap")


def post_keap(client: FlaskClient, secret: str, command: str, **fields: str) -> str:
    params = {"tag": fields.pop("tag")} if "tag" in fields else {}
    r = client.post(keap_url("keap", secret, command, **params), data=fields)
    assert r.status_code == 202, r.json
    return str(r.json["events"][0])


def genpass(client: FlaskClient, secret: str, **extra: str) -> str:
    fields = dict(load_fixture("keap-http-post", "genpass__groups"))
    fields.update(extra)
    return post_keap(client, secret, "genpass", **fields)


def member() -> Member:
    db.session.rollback()
    return db.session.execute(select(Member)).scalar_one()


def event(event_id: str) -> Event:
    db.session.rollback()
    found = db.session.get(Event, event_id, populate_existing=True)
    assert found is not None
    return found


def access(client: FlaskClient, contact: str = "keap:2729") -> Any:
    token = create_token("reader", f"reader-{new_id()}")
    r = client.get(f"/api/access?contact={contact}", headers=bearer(token))
    assert r.status_code == 200, r.json
    return r.json


def test_genpass_creates_a_member_with_a_password_hash_and_its_tags(
    app: Flask, client: FlaskClient, keap: str
) -> None:
    event_id = genpass(client, keap)
    run_worker(app)

    created = member()
    assert (created.email, created.name, created.status) == (
        "jane@example.com",
        "Jane Doe",
        "active",
    )
    assert created.password_hash is not None and created.password_hash.startswith("$argon2")
    assert event(event_id).status == "processed"
    assert access(client)["permissions"] == ["course:gold", "page:public"]


def test_genpass_never_resets_an_existing_members_password(
    app: Flask, client: FlaskClient, keap: str
) -> None:
    genpass(client, keap)
    run_worker(app)
    first = member()
    hash_before, nonce_before = first.password_hash, first.password_nonce

    again = genpass(client, keap)
    run_worker(app)
    replayed = process_event(again)

    after = member()
    assert (after.password_hash, after.password_nonce) == (hash_before, nonce_before)
    assert replayed["status"] == "processed"
    changes = event(again).effects or {}
    assert {"what": "already a member", "contact": "keap:2729", "member_id": after.id} in (
        changes["changes"]
    )


def test_genpass_without_an_email_is_skipped_with_the_reason(
    app: Flask, client: FlaskClient, keap: str
) -> None:
    event_id = post_keap(client, keap, "genpass", contactId="4000", FirstName="NoMail")
    run_worker(app)

    skipped = event(event_id)
    assert skipped.status == "skipped"
    assert skipped.reason is not None and "without an email" in skipped.reason
    assert db.session.execute(select(Member)).first() is None


def test_updateuser_for_an_unknown_contact_is_skipped(
    app: Flask, client: FlaskClient, keap: str
) -> None:
    event_id = post_keap(
        client, keap, "updateuser", **load_fixture("keap-http-post", "updateuser__groups")
    )
    run_worker(app)

    skipped = event(event_id)
    assert skipped.status == "skipped"
    assert skipped.reason is not None and "keap:2729" in skipped.reason
    assert db.session.execute(select(Member)).first() is None


def test_updateuser_for_a_member_updates_profile_and_makes_tags_exactly_the_list(
    app: Flask, client: FlaskClient, keap: str
) -> None:
    genpass(client, keap, Groups="101,205")
    run_worker(app)

    event_id = post_keap(
        client, keap, "updateuser", contactId="2729", Email="jane@new.example", Groups="205"
    )
    run_worker(app)

    assert event(event_id).status == "processed"
    assert member().email == "jane@new.example"
    answer = access(client)
    assert answer["groups"] == []
    assert answer["permissions"] == ["page:public"]


def test_revoke_takes_every_permission_and_keeps_the_history(
    app: Flask, client: FlaskClient, keap: str
) -> None:
    genpass(client, keap)
    run_worker(app)
    version_before = access(client)["version"]

    event_id = post_keap(client, keap, "revoke", contactId="2729")
    run_worker(app)

    revoked = member()
    assert revoked.status == "revoked"
    answer = access(client)
    assert answer["status"] == "revoked"
    assert (answer["groups"], answer["permissions"], answer["sections"]) == ([], [], [])
    assert answer["landing"] is None
    assert answer["version"] > version_before
    assert event(event_id).status == "processed"
    # History kept: the member, its contact link, its tags and every event remain.
    tags = db.session.execute(select(ContactTag.tag).where(ContactTag.present)).scalars().all()
    assert tags == ["101", "205"]
    assert db.session.execute(select(Contact.member_id)).scalar_one() == revoked.id
    assert len(db.session.execute(select(Event)).all()) == 2


def test_revoke_that_arrives_before_the_genpass_still_revokes(
    app: Flask, client: FlaskClient, keap: str, bridge: str
) -> None:
    post_standard(
        client,
        "bridge",
        bridge,
        {
            "type": "member.revoked",
            "occurred_at": "2030-01-01T00:00:00Z",
            "contact": {"id": "2729"},
        },
        "msg_revoke",
    )
    run_worker(app)
    genpass(client, keap)
    run_worker(app)

    assert member().status == "revoked"
    assert access(client)["permissions"] == []


def test_a_tag_added_later_grants_access(
    app: Flask, client: FlaskClient, keap: str, bridge: str
) -> None:
    genpass(client, keap, Groups="205")
    run_worker(app)
    assert access(client)["groups"] == []

    r = post_standard(
        client,
        "bridge",
        bridge,
        {"type": "contact.tag_added", "contact": {"id": "2729"}, "tag": "101"},
        "msg_add",
    )
    assert r.status_code == 202
    run_worker(app)

    assert access(client)["groups"] == ["gold"]


def test_older_profile_arriving_late_does_not_overwrite_a_newer_one(
    app: Flask, client: FlaskClient, keap: str, bridge: str
) -> None:
    genpass(client, keap)
    run_worker(app)

    def updated(email: str, when: str, msg_id: str) -> None:
        post_standard(
            client,
            "bridge",
            bridge,
            {
                "type": "contact.updated",
                "occurred_at": when,
                "contact": {"id": "2729", "email": email},
            },
            msg_id,
        )

    updated("newest@example.com", "2030-01-02T00:00:00Z", "msg_new")
    run_worker(app)
    updated("older@example.com", "2030-01-01T00:00:00Z", "msg_old")
    run_worker(app)

    assert member().email == "newest@example.com"


def test_deleted_contact_stops_its_tags_counting_but_keeps_the_member(
    app: Flask, client: FlaskClient, keap: str, bridge: str
) -> None:
    genpass(client, keap)
    run_worker(app)

    r = post_standard(
        client, "bridge", bridge, {"type": "contact.deleted", "contact": {"id": "2729"}}, "msg_del"
    )
    assert r.status_code == 202
    run_worker(app)

    kept = member()
    assert kept.status == "active"
    answer = client.get(
        f"/api/members/{kept.id}/access", headers=bearer(create_token("reader", "r2"))
    ).json
    assert answer["groups"] == []
    assert answer["permissions"] == ["page:public"]


def _processed_in_reverse(app: Flask) -> None:
    """Deliver the queued jobs last-first: the worker sees them out of order."""
    from gatehouse.queue import get_queue
    from gatehouse.queue.relay import relay_all

    relay_all(app)
    queue = get_queue(app)
    ids = list(queue.job_ids)
    queue.empty()
    for event_id in reversed(ids):
        process_event(event_id)


def test_genpass_snapshot_and_standard_tag_added_converge_despite_duplicates_and_reordering(
    app: Flask, client: FlaskClient, keap: str, bridge: str
) -> None:
    genpass(client, keap, Groups="205")
    tag_added = {"type": "contact.tag_added", "contact": {"id": "2729"}, "tag": "101"}
    first = post_standard(client, "bridge", bridge, tag_added, "msg_tag")
    again = post_standard(client, "bridge", bridge, tag_added, "msg_tag")
    assert (first.status_code, again.status_code) == (202, 200)

    _processed_in_reverse(app)
    settled = access(client)
    # A late duplicate of the genpass snapshot (an older assertion) changes nothing either.
    process_event(db.session.execute(select(Event.id).order_by(Event.id)).scalars().first() or "")
    run_worker(app)

    assert settled["groups"] == ["gold"]
    assert settled["permissions"] == ["course:gold", "page:public"]
    after = access(client)
    assert {k: after[k] for k in ("groups", "permissions")} == {
        k: settled[k] for k in ("groups", "permissions")
    }


WORKER = """
import sys
from tests.conftest import make_app
from gatehouse.queue.worker import GatehouseWorker
app = make_app(sys.argv[1], sys.argv[2])
GatehouseWorker(app).work(with_scheduler=False, logging_level="WARNING")
"""


def test_a_running_worker_answers_within_a_second_of_the_posts(
    app: Flask, client: FlaskClient, keap: str, bridge: str, database_url: str, redis_server: Any
) -> None:
    import time

    from rq import Worker

    proc = repo_python("-c", WORKER, database_url, redis_server.url, quiet=False)
    try:
        from gatehouse.extensions import redis_client

        deadline = time.monotonic() + 30
        while not Worker.all(connection=redis_client.get(app)):
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)
        reader = bearer(create_token("reader", "live"))

        started = time.monotonic()
        genpass(client, keap, Groups="205")
        tag_added = {"type": "contact.tag_added", "contact": {"id": "2729"}, "tag": "101"}
        assert post_standard(client, "bridge", bridge, tag_added, "msg_live").status_code == 202
        answer: Any = None
        while time.monotonic() - started < 5:
            r = client.get("/api/access?contact=keap:2729", headers=reader)
            db.session.rollback()
            if r.status_code == 200 and r.json["groups"] == ["gold"]:
                answer = r.json
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(10)

    assert answer is not None, "access never became right"
    print(f"post genpass + tag_added -> right /api/access answer in {elapsed:.3f}s")
    assert elapsed < 1.0
