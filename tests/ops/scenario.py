"""A member whose tag event failed: the story admins replay (shared by the ops tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from gatehouse.access.rules import parse_rules_text
from gatehouse.extensions import db
from gatehouse.handlers import dispatch
from gatehouse.models import AccessRules, Event
from tests.helpers import create_source, keap_url, post_standard, run_worker

RULES = """
sections: [community, courses]
groups:
  - name: gold
    tags: {any: ["keap:101"]}
    grants: [course:gold, section:courses]
  - name: community
    tags: {all: ["keap:205"]}
    grants: [section:community]
"""


class HandlerBug(RuntimeError):
    pass


@contextmanager
def broken(event_type: str) -> Iterator[None]:
    """A handler with a bug (as before a fix is deployed): it raises, the event fails."""
    original = dispatch.HANDLERS[event_type]

    def buggy(*_args: Any) -> None:
        raise HandlerBug("tag table out of date, deploy the fix")

    dispatch.HANDLERS[event_type] = buggy
    try:
        yield
    finally:
        dispatch.HANDLERS[event_type] = original


def setup_member(app: Flask, client: FlaskClient) -> dict[str, str]:
    db.session.add(AccessRules(source_text=RULES, rules=parse_rules_text(RULES)))
    db.session.commit()
    keap_secret = create_source("keap", "keap-http-post")
    std_secret = create_source("bridge", "standard", crm="keap")
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
    run_worker(app)
    return {"keap_secret": keap_secret, "std_secret": std_secret}


def post_tag(client: FlaskClient, secret: str, tag: str, msg_id: str, contact: str = "2729") -> str:
    r = post_standard(
        client,
        "bridge",
        secret,
        # Its own clock, after the genpass: a webhook-timestamp is whole seconds, and a tag
        # signed in the same second as the genpass snapshot could sort before it.
        {
            "type": "contact.tag_added",
            "occurred_at": datetime.now(UTC).isoformat(),
            "contact": {"id": contact},
            "tag": tag,
        },
        msg_id,
    )
    assert r.status_code == 202, r.json
    return str(r.json["events"][0])


def failed_tag_event(app: Flask, client: FlaskClient, secret: str, tag: str, msg_id: str) -> str:
    event_id = post_tag(client, secret, tag, msg_id)
    with broken("contact.tag_added"):
        run_worker(app)
    db.session.expire_all()
    event = db.session.get(Event, event_id)
    assert event is not None and event.status == "failed", event and event.status
    return event_id
