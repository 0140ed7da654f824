"""One signed event travels the whole way: post -> store -> queue -> worker -> access cache."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from gatehouse.access.rules import parse_rules_text
from gatehouse.extensions import db
from gatehouse.models import AccessRules, Event
from tests.helpers import bearer, create_source, create_token, keap_url, post_standard, run_worker

RULES = """
sections: [community, courses]
public: {grants: [page:public]}
groups:
  - name: gold
    tags: {any: ["keap:101"], none: ["keap:999"]}
    grants: [course:gold, section:courses]
  - name: community
    tags: {all: ["keap:205"]}
    grants: [section:community]
"""


def load_rules(text: str = RULES) -> None:
    db.session.add(AccessRules(source_text=text, rules=parse_rules_text(text)))
    db.session.commit()


def test_genpass_snapshot_then_standard_tag_added_gives_access(
    app: Flask, client: FlaskClient
) -> None:
    load_rules()
    keap_secret = create_source("keap", "keap-http-post")
    std_secret = create_source("crm-bridge", "standard", crm="keap")
    reader = create_token("reader")

    r = client.post(
        keap_url("keap", keap_secret, "genpass"),
        data={
            "contactId": "2729",
            "Email": "jane@example.com",
            "FirstName": "Jane",
            "Groups": "101",
        },
    )
    assert r.status_code == 202, r.json
    r = post_standard(
        client,
        "crm-bridge",
        std_secret,
        {"type": "contact.tag_added", "contact": {"id": "2729"}, "tag": "205"},
        "msg_1",
    )
    assert r.status_code == 202, r.json
    run_worker(app)

    r = client.get("/api/access?contact=keap:2729", headers=bearer(reader))
    assert r.status_code == 200, r.json
    answer = r.json
    assert answer["groups"] == ["gold", "community"]
    assert answer["permissions"] == [
        "course:gold",
        "page:public",
        "section:community",
        "section:courses",
    ]
    assert answer["sections"] == ["community", "courses"]
    assert answer["landing"] == "community"
    statuses = {e.type: e.status for e in db.session.query(Event)}
    assert statuses == {"member.provision": "processed", "contact.tag_added": "processed"}

    member = client.get("/api/members?contact=keap:2729", headers=bearer(reader)).json["members"][0]
    assert member["email"] == "jane@example.com"
    assert member["name"] == "Jane"
    assert member["tags"] == ["keap:101", "keap:205"]
    by_id = client.get(f"/api/members/{member['id']}/access", headers=bearer(reader))
    assert by_id.json == answer
