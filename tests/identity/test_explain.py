"""Explain: which groups grant a permission, which criteria hold, which events decided them."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from gatehouse.extensions import db
from gatehouse.models import Event, Source, Subscription
from tests.helpers import bearer, create_source, create_token
from tests.identity.common import T0, Crm, load_rules, member_of, provision, tag, tags_set
from tests.identity.test_merges import add_subscription


def explain(client: FlaskClient, member_id: str, permission: str) -> Any:
    reader = create_token("reader", name=f"reader-{permission}")
    r = client.get(
        f"/api/members/{member_id}/access/explain?permission={permission}", headers=bearer(reader)
    )
    assert r.status_code == 200, r.json
    return r.json


def setup(app: Flask, client: FlaskClient) -> tuple[Crm, str, dict[str, str]]:
    load_rules()
    crm = Crm(app, client)
    ids = {
        "provision": crm.post(provision("1", 0, tags=["101"])),
        "revoke_tag": crm.post(tag("1", "999", 5)),
    }
    crm.run()
    member = member_of("hubspot", "1")
    assert member is not None
    return crm, member.id, ids


def test_a_failing_none_criterion_names_the_event_that_added_the_revoke_tag(
    app: Flask, client: FlaskClient
) -> None:
    _, member_id, ids = setup(app, client)
    answer = explain(client, member_id, "course:gold")
    assert answer["granted"] is False
    assert answer["decided_by"] == "no group that grants it matches"
    (gold,) = answer["groups"]
    assert gold["name"] == "gold" and gold["matches"] is False
    holds = {c["criterion"]: c["holds"] for c in gold["criteria"]}
    assert holds == {"tags.any": True, "tags.none": False}
    (revoke_tag,) = gold["criteria"][1]["tags"]
    assert revoke_tag["tag"] == "hubspot:999" and revoke_tag["present"] is True
    assert revoke_tag["asserted_by"]["id"] == ids["revoke_tag"]
    assert revoke_tag["asserted_by"]["source"] == "crm"
    (granting_tag,) = gold["criteria"][0]["tags"]
    assert granting_tag["asserted_by"]["id"] == ids["provision"]


def test_a_tag_absent_by_the_newest_full_list_names_that_list(
    app: Flask, client: FlaskClient
) -> None:
    crm, member_id, _ = setup(app, client)
    snapshot = crm.post(tags_set("1", ["101"], 10))
    crm.run()
    answer = explain(client, member_id, "section:community")
    (community,) = answer["groups"]
    (needed,) = community["criteria"][0]["tags"]
    assert needed["tag"] == "hubspot:205" and needed["present"] is False
    assert needed["asserted_by"]["id"] == snapshot
    assert explain(client, member_id, "course:gold")["granted"] is True


def test_subscription_criterion_names_the_subscription_and_its_event(
    app: Flask, client: FlaskClient
) -> None:
    _, member_id, _ = setup(app, client)
    add_subscription(member_id, status="canceled")
    # The billing handler is someone else's: the row and its event are written directly.
    create_source("billing", "standard", crm="stripe")
    source_id = db.session.execute(select(Source.id).where(Source.slug == "billing")).scalar_one()
    event = Event(
        source_id=source_id,
        external_id="evt_canceled",
        type="subscription.updated",
        occurred_at=T0,
        status="processed",
        payload={},
    )
    db.session.add(event)
    db.session.flush()
    db.session.execute(update(Subscription).values(event_id=event.id))
    db.session.commit()
    answer = explain(client, member_id, "course:paid")
    assert answer["granted"] is False
    (paying,) = answer["groups"]
    (crit,) = paying["criteria"]
    assert crit["criterion"] == "subscriptions.any" and crit["holds"] is False
    (sub,) = crit["subscriptions"]
    assert (sub["id"], sub["status"], sub["in_good_standing"]) == ("sub_1", "canceled", False)
    assert sub["asserted_by"] == {
        "id": event.id,
        "source": "billing",
        "type": "subscription.updated",
        "occurred_at": "2026-11-22T10:00:00Z",
    }


def test_public_permission_is_explained_as_public(app: Flask, client: FlaskClient) -> None:
    _, member_id, _ = setup(app, client)
    answer = explain(client, member_id, "page:public")
    assert answer["granted"] is True and answer["public"] is True
    assert answer["groups"] == []
    assert answer["decided_by"] == "a public grant: every active member has it"


def test_revoked_member_is_explained_by_its_status(app: Flask, client: FlaskClient) -> None:
    _, member_id, _ = setup(app, client)
    admin = create_token("admin")
    client.post(f"/api/members/{member_id}/revoke", headers=bearer(admin))
    answer = explain(client, member_id, "page:public")
    assert answer["granted"] is False
    assert answer["decided_by"] == "member is revoked: no permissions at all"


def test_explain_needs_a_permission_and_a_known_member(app: Flask, client: FlaskClient) -> None:
    _, member_id, _ = setup(app, client)
    reader = create_token("reader")
    r = client.get(f"/api/members/{member_id}/access/explain", headers=bearer(reader))
    assert r.status_code == 400 and r.json["error"] == "bad_request"
    r = client.get("/api/members/nope/access/explain?permission=x", headers=bearer(reader))
    assert r.status_code == 404 and r.json["error"] == "not_found"
    r = client.get(f"/api/members/{member_id}/access/explain?permission=x")
    assert r.status_code == 401


def test_cli_explain_prints_groups_criteria_and_events(app: Flask, client: FlaskClient) -> None:
    _, member_id, ids = setup(app, client)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["members", "explain", member_id, "--permission", "course:gold"])
    assert result.exit_code == 0, result.output
    assert "course:gold: NOT granted" in result.output
    assert "group gold: does not match" in result.output
    assert "tags.none: fails" in result.output
    assert f"hubspot:999 present (event {ids['revoke_tag']} from crm at" in result.output
    result = runner.invoke(args=["members", "explain", "nope", "-p", "course:gold"])
    assert result.exit_code != 0 and "no member 'nope'" in result.output
