"""Why a member has (or lacks) one permission: groups, criteria, and the events behind them.

For every group that grants the permission: whether it matches, which of its criteria hold
or fail, and for each tag and subscription those criteria name, the event (id, source,
occurred_at) that last asserted its present state. Evaluation itself stays in
`access.rules` (pure); this module only gathers the evidence around it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from gatehouse.access.rules import (
    Group,
    MemberState,
    Rules,
    SubscriptionState,
    evaluate,
    group_matches,
    in_good_standing,
)
from gatehouse.access.state import active_rules, load_states
from gatehouse.extensions import db
from gatehouse.models import (
    Contact,
    ContactTag,
    Event,
    Member,
    Source,
    Subscription,
    TagSnapshot,
    utcnow,
)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat().replace("+00:00", "Z") if when else None


@dataclass(frozen=True)
class TagEvidence:
    present: bool
    contact: str | None
    asserted_at: datetime | None
    event_id: str | None
    how: str  # "tag" (explicit or listed) | "snapshot" (absent: not in the newest full list)


def _tag_evidence(member_id: str) -> dict[str, TagEvidence]:
    """Per "crm:tag", the newest word about it among the member's live contacts."""
    contacts = {
        c.id: c
        for c in db.session.execute(
            select(Contact).where(Contact.member_id == member_id, Contact.state == "live")
        ).scalars()
    }
    if not contacts:
        return {}
    best: dict[str, tuple[tuple[bool, datetime, str], TagEvidence]] = {}
    for row in db.session.execute(
        select(ContactTag).where(ContactTag.contact_id.in_(list(contacts)))
    ).scalars():
        contact = contacts[row.contact_id]
        name = f"{contact.crm}:{row.tag}"
        # A tag counts when any live contact has it: a present row outranks any absent one.
        rank = (row.present, row.asserted_at, row.assert_key)
        if name not in best or rank > best[name][0]:
            best[name] = (
                rank,
                TagEvidence(row.present, contact.key, row.asserted_at, row.event_id, "tag"),
            )
    snapshots: dict[str, list[tuple[TagSnapshot, Contact]]] = defaultdict(list)
    for snap in db.session.execute(
        select(TagSnapshot).where(TagSnapshot.contact_id.in_(list(contacts)))
    ).scalars():
        snapshots[contacts[snap.contact_id].crm].append((snap, contacts[snap.contact_id]))
    out = {name: evidence for name, (_, evidence) in best.items()}
    for crm, snaps in snapshots.items():
        snap, contact = max(snaps, key=lambda s: (s[0].asserted_at, s[0].assert_key))
        out[f"{crm}:*"] = TagEvidence(
            False, contact.key, snap.asserted_at, snap.event_id, "snapshot"
        )
    return out


def _events(ids: set[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    rows = db.session.execute(
        select(Event.id, Event.type, Event.occurred_at, Source.slug)
        .join(Source, Source.id == Event.source_id)
        .where(Event.id.in_(ids))
    ).all()
    return {
        eid: {"id": eid, "source": slug, "type": kind, "occurred_at": _iso(at)}
        for eid, kind, at, slug in rows
    }


def _describe_tag(
    name: str, evidence: dict[str, TagEvidence], events: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    found = evidence.get(name)
    if found is None:
        crm = name.split(":", 1)[0]
        found = evidence.get(f"{crm}:*")  # absent by the newest full tag list
    if found is None:
        return {"tag": name, "present": False, "contact": None, "asserted_by": None}
    return {
        "tag": name,
        "present": found.present,
        "contact": found.contact,
        "how": "not in the newest full tag list" if found.how == "snapshot" else "tag assertion",
        "asserted_by": events.get(found.event_id) if found.event_id else None,
    }


def _explain_group(
    group: Group,
    state: MemberState,
    good: frozenset[str],
    evidence: dict[str, TagEvidence],
    subs: list[Subscription],
    rules: Rules,
    now: datetime,
    events: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    criteria: list[dict[str, Any]] = []
    checks = (
        ("tags.any", group.tags_any, lambda t: bool(t & state.tags)),
        ("tags.all", group.tags_all, lambda t: t <= state.tags),
        ("tags.none", group.tags_none, lambda t: not (t & state.tags)),
    )
    for label, tags, holds in checks:
        if tags:
            criteria.append(
                {
                    "criterion": label,
                    "holds": holds(tags),
                    "tags": [_describe_tag(t, evidence, events) for t in sorted(tags)],
                }
            )
    if group.products_any is not None:
        named = [s for s in subs if s.product in group.products_any]
        criteria.append(
            {
                "criterion": "subscriptions.any",
                "holds": bool(group.products_any & good),
                "products": sorted(group.products_any),
                "subscriptions": [
                    {
                        "provider": s.provider,
                        "id": s.subscription_id,
                        "product": s.product,
                        "status": s.status,
                        "in_good_standing": in_good_standing(
                            SubscriptionState(s.product, s.status, s.past_due_since), rules, now
                        ),
                        "asserted_by": events.get(s.event_id) if s.event_id else None,
                    }
                    for s in named
                ],
            }
        )
    return {
        "name": group.name,
        "matches": group_matches(group, state, good),
        "criteria": criteria,
    }


def explain(member_id: str, permission: str, now: datetime | None = None) -> dict[str, Any] | None:
    """The evidence for one permission of one member, or None if there is no such member."""
    now = now or utcnow()
    member = db.session.get(Member, member_id)
    loaded = load_states([member_id])
    if member is None or not loaded:
        return None
    state = loaded[0].state
    rules = active_rules()
    access = evaluate(rules, state, now)
    subs = list(
        db.session.execute(
            select(Subscription)
            .where(Subscription.member_id == member_id)
            .order_by(Subscription.id)
        ).scalars()
    )
    good = frozenset(
        s.product for s in state.subscriptions if s.product and in_good_standing(s, rules, now)
    )
    granting = [g for g in rules.groups if permission in g.grants]
    evidence = _tag_evidence(member_id)
    wanted = {e.event_id for e in evidence.values() if e.event_id}
    wanted |= {s.event_id for s in subs if s.event_id}
    events = _events(wanted)
    groups = [_explain_group(g, state, good, evidence, subs, rules, now, events) for g in granting]
    granted = permission in access.permissions
    public = permission in rules.public_grants
    if state.status != "active":
        decided = f"member is {state.status}: no permissions at all"
    elif state.all_access and granted:
        decided = "all_access: every permission any group grants"
    elif granted and any(g["matches"] for g in groups):
        names = ", ".join(g["name"] for g in groups if g["matches"])
        decided = f"granted by matching group(s): {names}"
    elif granted and public:
        decided = "a public grant: every active member has it"
    elif granting:
        decided = "no group that grants it matches"
    else:
        decided = "no group grants it and it is not public"
    return {
        "member_id": member_id,
        "permission": permission,
        "granted": granted,
        "decided_by": decided,
        "status": state.status,
        "all_access": state.all_access,
        "merged_into": member.merged_into_id,
        "public": public,
        "rules_version": rules.version,
        "groups": groups,
        "computed_at": _iso(now),
    }
