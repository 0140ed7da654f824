"""contact.merged: aliases, combined tags, one member, late events reaching the survivor."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from gatehouse.extensions import db
from gatehouse.handlers.jobs import process_event
from gatehouse.models import Event, Member, Subscription
from tests.conftest import table_counts
from tests.helpers import create_source, post_standard, run_worker
from tests.identity.common import (
    T0,
    Crm,
    access,
    contact,
    live_members,
    load_rules,
    member_of,
    merge,
    provision,
    tag,
    tags_set,
)


def add_subscription(member_id: str, sub_id: str = "sub_1", status: str = "active") -> None:
    db.session.add(
        Subscription(
            provider="stripe",
            subscription_id=sub_id,
            customer_id="cus_1",
            member_id=member_id,
            product="prod_gold",
            status=status,
            asserted_at=T0,
            assert_key="evt_1",
        )
    )
    db.session.commit()


def member_count() -> int:
    return int(db.session.execute(select(func.count()).select_from(Member)).scalar_one())


def test_two_members_become_one_with_union_of_tags_and_moved_subscription(
    app: Flask, client: FlaskClient
) -> None:
    load_rules()
    crm = Crm(app, client)
    crm.post(provision("2729", 0, "jane@example.com"))
    crm.post(provision("2877", 1, "jane.doe@example.com"))
    crm.post(tag("2729", "101", 2))
    crm.post(tag("2877", "205", 3))
    crm.run()
    keep, other = member_of("hubspot", "2729"), member_of("hubspot", "2877")
    assert keep is not None and other is not None and keep.id != other.id
    add_subscription(other.id)
    keep_id, other_id = keep.id, other.id

    crm.post(merge("2729", ["2877"], 10))
    crm.run()

    survivor, merged = db.session.get(Member, keep_id), db.session.get(Member, other_id)
    assert survivor is not None and merged is not None
    assert survivor.status == "active"
    assert (merged.status, merged.merged_into_id) == ("merged", keep_id)
    assert member_of("hubspot", "2877") is not None
    assert member_of("hubspot", "2877").id == keep_id  # type: ignore[union-attr]
    alias = contact("hubspot", "2877")
    assert (alias.state, alias.merged_into_id) == ("merged", contact("hubspot", "2729").id)
    sub = db.session.execute(select(Subscription)).scalar_one()
    assert sub.member_id == keep_id
    answer = access(keep_id)
    assert answer["groups"] == ["gold", "community", "paying"]
    # The newest profile wins: the merged-away contact's email was stated later.
    assert survivor.email == "jane.doe@example.com"
    assert access(other_id)["permissions"] == []
    assert access(other_id)["status"] == "merged"


def test_latest_assertion_per_tag_wins_across_the_merged_contacts(
    app: Flask, client: FlaskClient
) -> None:
    load_rules()
    crm = Crm(app, client)
    crm.post(provision("1", 0, tags=["101", "205"]))
    crm.post(provision("2", 0.5))
    # Contact 2 saw tag 101 removed after contact 1 got it: the removal is the latest word.
    crm.post(tag("2", "101", 5, present=False))
    crm.post(tags_set("2", ["205", "300"], 6))
    crm.post(merge("1", ["2"], 10))
    crm.run()
    member = member_of("hubspot", "1")
    assert member is not None
    assert access(member.id)["groups"] == ["community"]
    from gatehouse.handlers.tags import present_tags

    assert present_tags(contact("hubspot", "1")) == ["205", "300"]


def test_merge_processed_before_tag_events_for_the_old_id_sends_them_to_the_survivor(
    app: Flask, client: FlaskClient
) -> None:
    load_rules()
    crm = Crm(app, client)
    crm.post(provision("2729", 0))
    crm.run()
    crm.post(merge("2729", ["2877"], 10))
    crm.run()
    # In flight from before the merge, processed after it.
    crm.post(tag("2877", "101", 5))
    crm.run()
    member = member_of("hubspot", "2729")
    assert member is not None
    assert access(member.id)["groups"] == ["gold"]
    assert member_count() == 1
    statuses = {e.type: e.status for e in db.session.query(Event)}
    assert statuses["contact.tag_added"] == "processed"


def test_merge_before_the_survivor_contact_exists_moves_the_member_to_it(
    app: Flask, client: FlaskClient
) -> None:
    load_rules()
    crm = Crm(app, client)
    crm.post(provision("2877", 0, tags=["101"]))
    crm.run()
    only = member_of("hubspot", "2877")
    assert only is not None
    only_id = only.id
    crm.post(merge("2729", ["2877"], 10))
    crm.run()
    survivor = contact("hubspot", "2729")
    assert (survivor.state, survivor.member_id) == ("live", only_id)
    crm.post(provision("2729", 11))
    crm.run()
    assert member_count() == 1
    assert access(only_id)["groups"] == ["gold"]


def test_genpass_for_a_merged_away_id_creates_no_member(app: Flask, client: FlaskClient) -> None:
    crm = Crm(app, client)
    crm.post(provision("2729", 0))
    crm.post(merge("2729", ["2877"], 10))
    crm.run()
    crm.post(provision("2877", 20, email="late@example.com"))
    crm.run()
    assert member_count() == 1
    member = member_of("hubspot", "2729")
    assert member is not None
    event = db.session.execute(
        select(Event).where(Event.type == "member.provision", Event.contact_key == "hubspot:2877")
    ).scalar_one()
    assert event.status == "processed"
    assert event.effects is not None and event.effects["members"] == [member.id]


def test_keap_style_merge_keeps_the_lower_id(app: Flask, client: FlaskClient) -> None:
    """Keap keeps the lower id; a canonical merge naming it needs nothing special."""
    load_rules("groups:\n  - {name: gold, tags: {any: ['keap:101']}, grants: [course:gold]}\n")
    crm = Crm(app, client, slug="keap-bridge", crm="keap")
    crm.post(provision("2729", 0))
    crm.post(provision("2877", 1, tags=["101"]))
    crm.post(merge("2729", ["2877"], 10))
    crm.run()
    assert [m.id for m in live_members()] == [member_of("keap", "2729").id]  # type: ignore[union-attr]
    assert access(live_members()[0].id)["groups"] == ["gold"]


def test_survivor_status_is_the_latest_assertion_of_either_member(
    app: Flask, client: FlaskClient
) -> None:
    load_rules()
    crm = Crm(app, client)
    crm.post(provision("1", 0, tags=["101"]))
    crm.post(provision("2", 1))
    crm.post(
        {"type": "member.revoked", "occurred_at": "2026-11-22T10:05:00Z", "contact": {"id": "2"}}
    )
    crm.post(merge("1", ["2"], 10))
    crm.run()
    member = member_of("hubspot", "1")
    assert member is not None and member.status == "revoked"
    assert access(member.id)["permissions"] == []


def test_replaying_a_merge_changes_nothing(app: Flask, client: FlaskClient) -> None:
    load_rules()
    crm = Crm(app, client)
    crm.post(provision("1", 0, tags=["101"]))
    crm.post(provision("2", 1, tags=["205"]))
    merge_id = crm.post(merge("1", ["2"], 10))
    crm.run()
    before = {m.id: (m.status, m.access_version) for m in db.session.query(Member)}
    counts = table_counts("members", "contacts", "contact_tags", "tag_snapshots")
    result = process_event(merge_id)
    assert result["status"] == "processed"
    db.session.expire_all()
    assert {m.id: (m.status, m.access_version) for m in db.session.query(Member)} == before
    assert table_counts("members", "contacts", "contact_tags", "tag_snapshots") == counts


def test_merge_naming_no_known_member_keeps_the_aliases(app: Flask, client: FlaskClient) -> None:
    crm = Crm(app, client)
    crm.post(tag("2", "101", 1))
    crm.post(merge("1", ["2"], 10))
    crm.run()
    event = db.session.execute(select(Event).where(Event.type == "contact.merged")).scalar_one()
    assert event.status == "skipped"
    assert "no member" in (event.reason or "")
    assert contact("hubspot", "2").state == "merged"
    from gatehouse.handlers.tags import present_tags

    assert present_tags(contact("hubspot", "1")) == ["101"]


def test_late_deletion_of_a_merged_away_id_leaves_the_survivor_live(
    app: Flask, client: FlaskClient
) -> None:
    """Keap deletes the merged-away contact after a merge; that delete must not hit the survivor."""
    from gatehouse.models import Contact

    secret = create_source("crm", "standard", crm="keap")
    post_standard(
        client,
        "crm",
        secret,
        {
            "type": "member.provision",
            "occurred_at": "2026-11-22T10:00:00Z",
            "contact": {"id": "1", "email": "ann@example.com"},
            "tags": ["101"],
        },
        "p1",
    )
    post_standard(
        client,
        "crm",
        secret,
        {
            "type": "contact.merged",
            "occurred_at": "2026-11-22T10:01:00Z",
            "contact": {"id": "1"},
            "merged_ids": ["2"],
        },
        "m1",
    )
    run_worker(app)  # the merge is done before the deletion arrives, as in Keap
    post_standard(
        client,
        "crm",
        secret,
        {"type": "contact.deleted", "occurred_at": "2026-11-22T10:02:00Z", "contact": {"id": "2"}},
        "d1",
    )
    run_worker(app)
    states = {c.contact_id: c.state for c in db.session.query(Contact)}
    assert states == {"1": "live", "2": "merged"}
    deletion = db.session.query(Event).filter_by(external_id="d1").one()
    assert deletion.status == "skipped" and "merged away" in (deletion.reason or "")
