"""Shared by the identity tests: one standard-kind CRM source posting canonical events."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gatehouse.access import cache
from gatehouse.access.rules import parse_rules_text
from gatehouse.extensions import db
from gatehouse.models import AccessRules, Contact, Member
from tests.helpers import create_source, post_standard, run_worker

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

RULES = """
sections: [community, courses]
public: {grants: [page:public]}
groups:
  - name: gold
    tags: {any: ["hubspot:101"], none: ["hubspot:999"]}
    grants: [course:gold, section:courses]
  - name: community
    tags: {all: ["hubspot:205"]}
    grants: [section:community]
  - name: paying
    subscriptions: {any: ["prod_gold"]}
    grants: [course:paid]
"""


def load_rules(text: str = RULES) -> None:
    db.session.add(AccessRules(source_text=text, rules=parse_rules_text(text)))
    db.session.commit()


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


@dataclass
class Crm:
    """A standard-kind source whose contacts and tags live in one CRM namespace."""

    app: Flask
    client: FlaskClient
    slug: str = "crm"
    crm: str = "hubspot"
    secret: str = ""
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.secret = create_source(self.slug, "standard", crm=self.crm)

    def post(self, event: dict[str, Any], msg_id: str | None = None) -> str:
        msg_id = msg_id or f"msg_{self.slug}_{next(self.ids)}"
        r = post_standard(self.client, self.slug, self.secret, event, msg_id)
        assert r.status_code in (200, 202), r.json
        return str(r.json["events"][0])

    def run(self) -> None:
        run_worker(self.app)
        db.session.expire_all()


def provision(
    cid: str, minute: float, email: str | None = None, tags: list[str] | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "member.provision",
        "occurred_at": at(minute),
        "contact": {"id": cid, "email": email or f"{cid}@example.com"},
    }
    if tags is not None:
        event["tags"] = tags
    return event


def tag(cid: str, name: str, minute: float, present: bool = True) -> dict[str, Any]:
    return {
        "type": "contact.tag_added" if present else "contact.tag_removed",
        "occurred_at": at(minute),
        "contact": {"id": cid},
        "tag": name,
    }


def tags_set(cid: str, names: list[str], minute: float) -> dict[str, Any]:
    return {
        "type": "contact.tags_set",
        "occurred_at": at(minute),
        "contact": {"id": cid},
        "tags": names,
    }


def merge(survivor: str, away: list[str], minute: float) -> dict[str, Any]:
    return {
        "type": "contact.merged",
        "occurred_at": at(minute),
        "contact": {"id": survivor},
        "merged_ids": away,
    }


def member_of(crm: str, contact_id: str) -> Member | None:
    from gatehouse.api.members import member_for_contact

    return member_for_contact(crm, contact_id)


def live_members() -> list[Member]:
    return list(
        db.session.execute(
            select(Member).where(Member.status != "merged").order_by(Member.id)
        ).scalars()
    )


def contact(crm: str, contact_id: str) -> Contact:
    return db.session.execute(
        select(Contact).where(Contact.crm == crm, Contact.contact_id == contact_id)
    ).scalar_one()


def access(member_id: str) -> dict[str, Any]:
    """The cached answer the membership site reads (not recomputed here)."""
    import json

    body = cache.read(member_id)
    assert body is not None, f"no cached answer for {member_id}"
    answer: dict[str, Any] = json.loads(body)
    return answer
