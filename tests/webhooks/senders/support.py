"""Shared by the sender tests: fixtures, stored rows, and a member provisioned the standard way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from gatehouse.extensions import db
from gatehouse.models import Event, new_id
from gatehouse.sources import rotate_source
from gatehouse.webhooks.source_cache import forget_sources
from tests.helpers import bearer, create_source, create_token, post_standard

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
EARLY = "2026-11-01T00:00:00Z"  # before every fixture's own time


def fixture_bytes(provider: str, name: str) -> bytes:
    return (FIXTURES / provider / f"{name}.json").read_bytes()


def fixture_json(provider: str, name: str) -> Any:
    return json.loads(fixture_bytes(provider, name))


def stored_events() -> list[Event]:
    db.session.expire_all()
    return list(db.session.execute(select(Event).order_by(Event.external_id)).scalars())


def event_count() -> int:
    return int(db.session.execute(select(func.count()).select_from(Event)).scalar_one())


def provision_member(
    client: FlaskClient, crm: str, contact_id: str, email: str, tags: list[str] | None = None
) -> None:
    """A member for this contact, created by a standard `member.provision` in the same crm."""
    slug = f"bridge-{crm}"
    secret = create_source(slug, "standard", crm=crm)
    event: dict[str, Any] = {
        "type": "member.provision",
        "occurred_at": EARLY,
        "contact": {"id": contact_id, "email": email},
    }
    if tags is not None:
        event["tags"] = tags
    r = post_standard(client, slug, secret, event, f"provision-{crm}-{contact_id}")
    assert r.status_code == 202, r.json


def member_by_contact(client: FlaskClient, crm: str, contact_id: str) -> dict[str, Any]:
    token = create_token("reader", name=f"reader-{new_id()}")
    r = client.get(f"/api/members?contact={crm}:{contact_id}", headers=bearer(token))
    assert r.status_code == 200, r.json
    members: list[dict[str, Any]] = r.json["members"]
    assert len(members) == 1, members
    return members[0]


def rotate(slug: str, new_secret: str, grace_hours: float = 24) -> None:
    rotate_source(slug, new_secret, grace_hours)
    db.session.commit()
    forget_sources()
