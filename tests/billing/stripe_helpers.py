"""Stripe test helpers: real-shaped fixtures, signed by the `stripe` package itself."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import stripe
from flask.testing import FlaskClient
from sqlalchemy import select

from gatehouse.access.rules import parse_rules_text
from gatehouse.extensions import db
from gatehouse.models import AccessRules, Contact, Member

FIXTURES = Path(__file__).parent.parent / "fixtures" / "stripe"

RULES = """
sections: [courses]
grace: {past_due_days: 3}
public: {grants: [page:public]}
groups:
  - name: gold
    subscriptions: {any: [prod_gold]}
    grants: [course:gold, section:courses]
"""


def load_rules(text: str = RULES) -> None:
    db.session.add(AccessRules(source_text=text, rules=parse_rules_text(text)))
    db.session.commit()


def stripe_event(name: str, **changes: Any) -> dict[str, Any]:
    """A fixture with top-level fields (`id`, `created`) and `obj` fields replaced."""
    event: dict[str, Any] = copy.deepcopy(json.loads((FIXTURES / f"{name}.json").read_text()))
    obj = changes.pop("obj", {})
    event.update(changes)
    event["data"]["object"].update(obj)
    return event


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    return str(
        stripe.WebhookSignature.generate_signature_header(
            payload, secret, timestamp=timestamp or int(time.time())
        )
    )


def post_stripe(
    client: FlaskClient,
    slug: str,
    secret: str,
    event: dict[str, Any],
    *,
    header: str | None = None,
    body: str | None = None,
) -> Any:
    payload = body if body is not None else json.dumps(event)
    if header is None:
        header = sign(payload, secret)
        # The independent reference accepts what we are about to send.
        assert stripe.Webhook.construct_event(payload, header, secret)["id"] == event["id"]
    return client.post(
        f"/hooks/{slug}",
        data=payload.encode(),
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


def make_member(email: str, keap_id: str | None = None) -> str:
    member = Member(email=email, status="active", access_version=1)
    db.session.add(member)
    db.session.flush()
    if keap_id is not None:
        db.session.add(Contact(crm="keap", contact_id=keap_id, member_id=member.id, email=email))
    db.session.commit()
    return member.id


def stripe_link(customer: str, crm: str = "stripe") -> str | None:
    return db.session.execute(
        select(Contact.member_id).where(Contact.crm == crm, Contact.contact_id == customer)
    ).scalar_one_or_none()


def link_customer(member_id: str, customer: str, crm: str = "stripe") -> None:
    db.session.add(Contact(crm=crm, contact_id=customer, member_id=member_id))
    db.session.commit()
