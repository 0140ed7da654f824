"""Set-up done inside the bench process with the app's own code: sources, tokens, rules, members."""

from __future__ import annotations

import random
from typing import Any

from flask import Flask
from sqlalchemy import insert, select

from gatehouse import create_app
from gatehouse.access.rules import parse_rules_text
from gatehouse.crypto import hash_token, new_token
from gatehouse.extensions import db
from gatehouse.models import AccessRules, ApiToken, Contact, ContactTag, Member, utcnow
from gatehouse.models.base import new_id
from gatehouse.sources import add_source

RULES = """
sections: [community, courses, affiliate]
grace: {past_due_days: 3}
public: {grants: [page:public]}
groups:
  - name: gold
    tags: {any: ["keap:101", "keap:102"], none: ["keap:999"]}
    grants: [course:gold, section:courses, section:community]
  - name: silver
    tags: {all: ["keap:103", "keap:104"]}
    grants: [course:silver, section:courses]
  - name: affiliates
    tags: {any: ["keap:110"]}
    grants: [section:affiliate]
"""
# The chaos run's rules: the tag groups plus billing, so subscriptions decide access too.
CHAOS_RULES = (
    RULES
    + """  - name: subscribers
    subscriptions: {any: [prod_gold, "6601"]}
    grants: [course:members, section:community]
  - name: portal
    tags: {any: ["keap:hs_portal_user"]}
    subscriptions: {any: [prod_silver, "6602"]}
    grants: [section:affiliate]
"""
)
# A second version for the rules-change benchmark: different grants, same tags.
RULES_V2 = RULES.replace("course:silver", "course:silver-2026")
TAG_POOL = [str(t) for t in (*range(101, 116), 999)]
CRM = "keap"


def make_app(config: dict[str, Any]) -> Flask:
    return create_app(config)


def add_sources(
    app: Flask,
    kinds: dict[str, str],
    crms: dict[str, str] | None = None,
    public_keys: dict[str, str] | None = None,
) -> dict[str, str]:
    """Create one source per slug -> kind (crm `keap` unless `crms` names another for the
    slug; `public_keys` for kinds that verify with one, e.g. ghl); returns slug -> secret."""
    secrets = {}
    with app.app_context():
        for slug, kind in kinds.items():
            crm = (crms or {}).get(slug, CRM)
            _, secret = add_source(slug, kind, crm, None, (public_keys or {}).get(slug))
            secrets[slug] = secret
        db.session.commit()
    return secrets


def add_reader_token(app: Flask) -> str:
    token = new_token()
    with app.app_context():
        db.session.add(ApiToken(name="bench-reader", role="reader", token_hash=hash_token(token)))
        db.session.commit()
    return token


def load_rules(app: Flask, text: str = RULES) -> None:
    with app.app_context():
        db.session.add(AccessRules(source_text=text, rules=parse_rules_text(text)))
        db.session.commit()


def seed_members(app: Flask, count: int, first: int = 1, chunk: int = 5000) -> list[str]:
    """Members with a live keap contact `first..first+count-1` and 0-4 tags, by bulk insert."""
    rng = random.Random(first)
    member_ids: list[str] = []
    now = utcnow()
    with app.app_context():
        for start in range(first, first + count, chunk):
            numbers = range(start, min(first + count, start + chunk))
            members = []
            for n in numbers:
                mid = new_id()
                member_ids.append(mid)
                members.append(
                    {
                        "id": mid,
                        "email": f"member{n}@example.com",
                        "name": f"Member {n}",
                        "status": "active",
                        "status_key": "",
                        "all_access": False,
                        "password_nonce": 0,
                        "access_version": 1,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            db.session.execute(insert(Member), members)
            contacts = [
                {
                    "crm": CRM,
                    "contact_id": str(n),
                    "member_id": m["id"],
                    "state": "live",
                    "state_key": "",
                    "email": m["email"],
                    "profile_key": "",
                    "revoked_key": "",
                    "created_at": now,
                }
                for n, m in zip(numbers, members, strict=True)
            ]
            db.session.execute(insert(Contact), contacts)
            ids = dict(
                db.session.execute(
                    select(Contact.contact_id, Contact.id).where(
                        Contact.crm == CRM,
                        Contact.contact_id.in_([str(n) for n in numbers]),
                    )
                ).all()
            )
            tags = [
                {
                    "contact_id": ids[str(n)],
                    "tag": tag,
                    "present": True,
                    "asserted_at": now,
                    "assert_key": "seed",
                    "event_id": None,
                }
                for n in numbers
                for tag in rng.sample(TAG_POOL[:-1], rng.randint(0, 4))
            ]
            if tags:
                db.session.execute(insert(ContactTag), tags)
            db.session.commit()
    return member_ids
