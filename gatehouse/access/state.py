"""Read members' state (tags, subscriptions, flags) from the database, many at a time."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import select

from gatehouse.access.rules import EMPTY_RULES, MemberState, Rules, SubscriptionState
from gatehouse.extensions import db
from gatehouse.models import AccessRules, Contact, ContactTag, Member, Subscription


def active_rules() -> Rules:
    """The newest rules version; parsed once per version per process."""
    row = db.session.execute(
        select(AccessRules.id).order_by(AccessRules.id.desc()).limit(1)
    ).scalar_one_or_none()
    if row is None:
        return EMPTY_RULES
    # Per app, not per module: each app (each test's database) numbers its rules from 1.
    cache: dict[int, Rules] = current_app.extensions.setdefault("gatehouse.rules", {})
    cached = cache.get(row)
    if cached is None:
        data = db.session.execute(
            select(AccessRules.rules).where(AccessRules.id == row)
        ).scalar_one()
        cached = Rules.from_dict(data, version=row)
        cache.clear()
        cache[row] = cached
    return cached


@dataclass(frozen=True)
class LoadedMember:
    id: str
    version: int
    state: MemberState


def load_states(member_ids: Sequence[str]) -> list[LoadedMember]:
    """Versions are read first: whatever is read after is at least as new as the version."""
    if not member_ids:
        return []
    members = db.session.execute(
        select(Member.id, Member.access_version, Member.status, Member.all_access).where(
            Member.id.in_(member_ids)
        )
    ).all()
    contacts = db.session.execute(
        select(Contact.id, Contact.member_id, Contact.crm).where(
            Contact.member_id.in_(member_ids), Contact.state == "live"
        )
    ).all()
    crm_of: dict[int, tuple[str, str]] = {cid: (str(mid), crm) for cid, mid, crm in contacts}
    tags: dict[str, set[str]] = defaultdict(set)
    if crm_of:
        for contact_id, tag in db.session.execute(
            select(ContactTag.contact_id, ContactTag.tag).where(
                ContactTag.contact_id.in_(list(crm_of)), ContactTag.present.is_(True)
            )
        ):
            owner, crm = crm_of[contact_id]
            tags[owner].add(f"{crm}:{tag}")
    subs: dict[str, list[SubscriptionState]] = defaultdict(list)
    for mid, product, status, since in db.session.execute(
        select(
            Subscription.member_id,
            Subscription.product,
            Subscription.status,
            Subscription.past_due_since,
        ).where(Subscription.member_id.in_(member_ids))
    ):
        subs[str(mid)].append(
            SubscriptionState(product=product, status=status, past_due_since=since)
        )
    return [
        LoadedMember(
            id=mid,
            version=version,
            state=MemberState(
                status=status,
                all_access=bool(all_access),
                tags=frozenset(tags.get(mid, ())),
                subscriptions=tuple(subs.get(mid, ())),
            ),
        )
        for mid, version, status, all_access in members
    ]
