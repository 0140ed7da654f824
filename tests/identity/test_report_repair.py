"""Deletions, the hygiene report (tables and --json) and repair by email."""

from __future__ import annotations

import json

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gatehouse.extensions import db
from gatehouse.identity.repair import repair_by_email
from gatehouse.identity.report import build_report
from gatehouse.models import Contact, Event, Member, Source, Subscription, utcnow
from tests.helpers import create_source
from tests.identity.common import Crm, access, contact, load_rules, member_of, merge, provision
from tests.identity.test_merges import add_subscription


def deleted(cid: str, minute: float = 30) -> dict[str, object]:
    return {
        "type": "contact.deleted",
        "occurred_at": f"2026-11-22T10:{minute:02.0f}:00Z",
        "contact": {"id": cid},
    }


def live_contact(cid: str, email: str, minute: int = 40) -> dict[str, object]:
    """A contact the CRM created (no genpass): its profile and tags, no member."""
    return {
        "type": "contact.tags_set",
        "occurred_at": f"2026-11-22T10:{minute}:00Z",
        "contact": {"id": cid, "email": email},
        "tags": ["101"],
    }


def member_then_deleted(
    app: Flask, client: FlaskClient, email: str = "pat@example.com"
) -> tuple[Crm, str]:
    load_rules()
    crm = Crm(app, client)
    crm.post(provision("1", 0, email, tags=["101"]))
    crm.run()
    member = member_of("hubspot", "1")
    assert member is not None
    crm.post(deleted("1"))
    crm.run()
    return crm, member.id


def test_deleted_contact_keeps_member_and_subscription_but_its_tags_stop_counting(
    app: Flask, client: FlaskClient
) -> None:
    load_rules()
    crm = Crm(app, client)
    crm.post(provision("1", 0, tags=["101"]))
    crm.run()
    member = member_of("hubspot", "1")
    assert member is not None
    member_id = member.id
    add_subscription(member_id)
    crm.post(deleted("1"))
    crm.run()
    db.session.expire_all()
    kept = db.session.get(Member, member_id)
    assert kept is not None and kept.status == "active"
    assert db.session.execute(select(Subscription.member_id)).scalar_one() == member_id
    assert contact("hubspot", "1").state == "deleted"
    assert access(member_id)["groups"] == ["paying"]


def test_report_lists_invalid_ids_and_unmatched_events_as_table_and_json(
    app: Flask, client: FlaskClient
) -> None:
    _, member_id = member_then_deleted(app, client)
    create_source("stripe-like", "standard", crm="stripe")
    src = db.session.execute(select(Source).where(Source.slug == "stripe-like")).scalar_one()
    unmatched = Event(
        source_id=src.id,
        external_id="evt_unmatched",
        type="subscription.updated",
        occurred_at=utcnow(),
        status="unmatched",
        reason="no member is linked to customer cus_9",
        payload={},
    )
    db.session.add(unmatched)
    db.session.commit()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["members", "report"])
    assert result.exit_code == 0, result.output
    assert "Invalid contact ids" in result.output
    assert f"{member_id}  pat@example.com  hubspot  1 deleted" in result.output
    assert unmatched.id in result.output
    assert "no member is linked to customer cus_9" in result.output
    result = runner.invoke(args=["members", "report", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["counts"] == {
        "invalid_contact_ids": 1,
        "duplicate_emails": 0,
        "subscribers_without_live_contact": 0,
        "unmatched_billing_events": 1,
    }
    assert data["invalid_contact_ids"][0]["contacts"] == [
        {"contact_id": "1", "state": "deleted", "merged_into": None}
    ]
    assert data["unmatched_billing_events"][0]["source"] == "stripe-like"


def test_report_lists_duplicate_emails_of_members_and_of_live_contacts(
    app: Flask, client: FlaskClient
) -> None:
    crm = Crm(app, client)
    crm.post(provision("1", 0, "Twin@example.com"))
    crm.post(provision("2", 1, "twin@example.com"))
    crm.post(live_contact("3", "solo@example.com"))
    crm.post(live_contact("4", "solo@example.com", minute=41))
    crm.run()
    dupes = {d.email: d for d in build_report().duplicate_emails}
    assert sorted(dupes) == ["solo@example.com", "twin@example.com"]
    assert len(dupes["twin@example.com"].members) == 2
    assert dupes["solo@example.com"].members == []
    assert dupes["solo@example.com"].contacts == ["hubspot:3", "hubspot:4"]


def test_merged_link_whose_survivor_is_live_is_not_invalid(app: Flask, client: FlaskClient) -> None:
    crm = Crm(app, client)
    crm.post(provision("2", 0))
    crm.post(merge("1", ["2"], 10))
    crm.run()
    assert build_report().invalid_contact_ids == []


def test_repair_dry_run_changes_nothing(app: Flask, client: FlaskClient) -> None:
    crm, member_id = member_then_deleted(app, client)
    crm.post(live_contact("9", "pat@example.com"))
    crm.run()
    result = app.test_cli_runner().invoke(args=["members", "repair", "--by-email", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"Would relink member {member_id} (pat@example.com) to hubspot:9" in result.output
    assert "nothing changed" in result.output
    db.session.expire_all()
    assert contact("hubspot", "9").member_id is None
    assert access(member_id)["groups"] == []


def test_repair_relinks_bumps_the_version_and_the_recorded_tags_count(
    app: Flask, client: FlaskClient
) -> None:
    crm, member_id = member_then_deleted(app, client)
    crm.post(live_contact("9", "PAT@example.com"))
    crm.run()
    version = access(member_id)["version"]
    result = repair_by_email()
    assert [(r.member_id, r.contact) for r in result.relinked] == [(member_id, "hubspot:9")]
    answer = access(member_id)
    assert answer["version"] > version
    assert answer["groups"] == ["gold"]
    assert repair_by_email().relinked == []  # nothing left to do


def test_repair_skips_when_no_live_contact_has_the_email(app: Flask, client: FlaskClient) -> None:
    member_then_deleted(app, client)
    result = repair_by_email()
    assert result.relinked == []
    assert [s.reason for s in result.skipped] == [
        "no live hubspot contact has the email pat@example.com"
    ]


def test_repair_skips_when_several_live_contacts_have_the_email(
    app: Flask, client: FlaskClient
) -> None:
    crm, _ = member_then_deleted(app, client)
    crm.post(live_contact("8", "pat@example.com"))
    crm.post(live_contact("9", "pat@example.com", minute=41))
    crm.run()
    result = repair_by_email()
    assert result.relinked == []
    (skip,) = result.skipped
    assert "2 live hubspot contacts have this email (hubspot:8, hubspot:9)" in skip.reason
    assert contact("hubspot", "8").member_id is None


def test_repair_never_takes_a_contact_linked_to_another_member(
    app: Flask, client: FlaskClient
) -> None:
    crm, _ = member_then_deleted(app, client)
    crm.post(provision("9", 50, "pat@example.com"))
    crm.run()
    other = member_of("hubspot", "9")
    assert other is not None
    result = repair_by_email()
    assert result.relinked == []
    (skip,) = result.skipped
    assert f"hubspot:9 has the email but is linked to member {other.id}" == skip.reason


def test_repair_gives_a_contact_to_neither_of_two_accounts_with_its_email(
    app: Flask, client: FlaskClient
) -> None:
    load_rules()
    crm = Crm(app, client)
    crm.post(provision("1", 0, "pat@example.com"))
    crm.post(provision("2", 1, "pat@example.com"))
    crm.post(deleted("1"))
    crm.post(deleted("2"))
    crm.post(live_contact("9", "pat@example.com"))
    crm.run()
    result = repair_by_email()
    assert result.relinked == []
    assert len(result.skipped) == 2
    assert all("duplicate accounts" in s.reason for s in result.skipped)
    assert (
        db.session.execute(select(Contact.member_id).where(Contact.contact_id == "9")).scalar_one()
        is None
    )


def test_repair_needs_a_method(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["members", "repair"])
    assert result.exit_code != 0
    assert "--by-email" in result.output
