"""Read members' state (tags, subscriptions, flags) from the database, many at a time."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import select

from gatehouse.access.rules import EMPTY_RULES, MemberState, Rules, SubscriptionState
from gatehouse.extensions import db
from gatehouse.models import AccessRules, Contact, ContactTag, Member, Subscription
from gatehouse.models.in_list import in_list

_NEWEST_RULES = select(AccessRules.id).order_by(AccessRules.id.desc()).limit(1)


def active_rules() -> Rules:
    """The newest rules version; parsed once per version per process."""
    row = db.session.execute(_NEWEST_RULES).scalar_one_or_none()
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


# Built once, with lists bound by name (`in_list`): building the clauses each call cost about as
# much as running them (a worker refreshes its batch's members after every batch). On the
# tables, not the ORM entities: the same rows, without the ORM's compile and loading steps
# for each statement (about a seventh of the reads' CPU: docs/benchmarks.md).
_m: Any = Member.__table__.c
_c: Any = Contact.__table__.c
_t: Any = ContactTag.__table__.c
_s: Any = Subscription.__table__.c
_MEMBERS = select(_m.id, _m.access_version, _m.status, _m.all_access).where(in_list(_m.id, "ids"))
_CONTACTS = select(_c.id, _c.member_id, _c.crm).where(
    in_list(_c.member_id, "ids"), _c.state == "live"
)
_PRESENT_TAGS = select(_t.contact_id, _t.tag).where(
    in_list(_t.contact_id, "ids"), _t.present.is_(True)
)
_SUBSCRIPTIONS = select(_s.member_id, _s.product, _s.status, _s.past_due_since).where(
    in_list(_s.member_id, "ids")
)


def load_states(member_ids: Sequence[str]) -> list[LoadedMember]:
    """Versions are read first: whatever is read after is at least as new as the version."""
    if not member_ids:
        return []
    ids = {"ids": list(member_ids)}
    members = db.session.execute(_MEMBERS, ids).all()
    contacts = db.session.execute(_CONTACTS, ids).all()
    crm_of: dict[int, tuple[str, str]] = {cid: (str(mid), crm) for cid, mid, crm in contacts}
    tags: dict[str, set[str]] = defaultdict(set)
    if crm_of:
        for contact_id, tag in db.session.execute(_PRESENT_TAGS, {"ids": list(crm_of)}):
            owner, crm = crm_of[contact_id]
            tags[owner].add(f"{crm}:{tag}")
    subs: dict[str, list[SubscriptionState]] = defaultdict(list)
    for mid, product, status, since in db.session.execute(_SUBSCRIPTIONS, ids):
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
