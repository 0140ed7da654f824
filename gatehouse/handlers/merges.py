"""`contact.merged`: merged-away contacts become aliases of the survivor; their members become one.

The result must not depend on when the merge is processed relative to the events about the
contacts it names. The rule that gives this: after a merge, the survivor holds exactly what
one contact would hold had every assertion about any of the merged contacts been made to it.

- Assertions processed *after* the merge already reach the survivor (`lock_contact` follows
  aliases), so only what was recorded on the aliases *before* it needs combining: per tag the
  latest assertion wins, the newest full snapshot wins, and the rows are re-established as at
  least as new as the survivor's snapshot (the invariant documented on `ContactTag`).
- A merge that arrives before anything else about an id still records that id as an alias, so
  a later event naming it (a genpass included) reaches the survivor and never creates a member.
- A merge that arrives before its survivor contact exists creates the survivor's row; the
  member of a merged-away contact moves to it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult

from gatehouse.extensions import db
from gatehouse.handlers.contacts import (
    _insert_contact,
    apply_contact_revocation,
    apply_profile,
    sync_member_profile,
)
from gatehouse.handlers.outcome import Assertion, Outcome, Skip
from gatehouse.models import Contact, ContactTag, Event, Member, Subscription, TagSnapshot

LOCK_ATTEMPTS = 5


def _target_id(contact_id: int, rows: dict[int, Contact]) -> int | None:
    """Where an id resolves through merge aliases, or None if a hop is not in `rows` yet."""
    seen = set()
    current = rows.get(contact_id)
    while current is not None:
        if current.state != "merged" or current.merged_into_id is None or current.id in seen:
            return current.id
        seen.add(current.id)
        current = rows.get(current.merged_into_id)
    return None


def lock_contacts(
    crm: str, contact_ids: list[str]
) -> tuple[dict[str, Contact], dict[int, Contact]]:
    """Create missing rows, then lock them and every alias target they resolve to, by row id.

    One order for every lock (ascending contact row id) keeps two merges over overlapping
    contacts from deadlocking on PostgreSQL. The alias closure is read unlocked first and
    checked again once locked, in case a concurrent merge changed it in between.
    """
    for contact_id in sorted(set(contact_ids)):
        _insert_contact(crm, contact_id)
    named = select(Contact.id, Contact.contact_id).where(
        Contact.crm == crm, Contact.contact_id.in_(contact_ids)
    )
    by_name = {cid: rid for rid, cid in db.session.execute(named)}
    wanted = set(by_name.values())
    for _ in range(LOCK_ATTEMPTS):
        rows = {
            c.id: c
            for c in db.session.execute(
                select(Contact)
                .where(Contact.id.in_(wanted))
                .order_by(Contact.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).scalars()
        }
        missing = {
            c.merged_into_id
            for c in rows.values()
            if c.state == "merged" and c.merged_into_id is not None
        } - set(rows)
        if not missing:
            return {cid: rows[rid] for cid, rid in by_name.items()}, rows
        # A hop outside the set (a chain, or a merge committed since the unlocked read): lock
        # the wider set again in id order; the locks already held are kept until commit.
        wanted |= missing
    raise RuntimeError(f"merge aliases of {crm}:{contact_ids} kept changing while locking")


def lock_members(member_ids: set[str]) -> dict[str, Member]:
    if not member_ids:
        return {}
    return {
        m.id: m
        for m in db.session.execute(
            select(Member)
            .where(Member.id.in_(member_ids))
            .order_by(Member.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).scalars()
    }


def _newer(a: tuple[datetime, str] | None, b: tuple[datetime, str] | None) -> bool:
    return b is None or (a is not None and a > b)


def combine_tags(into: Contact, alias: Contact) -> tuple[set[str], set[str]]:
    """Fold the alias's tag assertions into `into`, latest assertion per tag; (added, removed)."""
    snap_into = db.session.get(TagSnapshot, into.id)
    snap_alias = db.session.get(TagSnapshot, alias.id)
    newest = snap_into
    if snap_alias is not None and (
        snap_into is None
        or (snap_alias.asserted_at, snap_alias.assert_key)
        > (snap_into.asserted_at, snap_into.assert_key)
    ):
        if snap_into is None:
            snap_into = TagSnapshot(contact_id=into.id)
            db.session.add(snap_into)
        snap_into.asserted_at, snap_into.assert_key = snap_alias.asserted_at, snap_alias.assert_key
        snap_into.event_id, snap_into.tags = snap_alias.event_id, list(snap_alias.tags)
        newest = snap_into
    listed = set(newest.tags) if newest is not None else set()

    def rows_of(contact: Contact) -> dict[str, ContactTag]:
        query = select(ContactTag).where(ContactTag.contact_id == contact.id)
        return {r.tag: r for r in db.session.execute(query).scalars()}

    mine, theirs = rows_of(into), rows_of(alias)
    added: set[str] = set()
    removed: set[str] = set()
    for tag in sorted(set(mine) | set(theirs)):
        # Candidates: (order key, present, event id); the newest wins.
        candidates: list[tuple[tuple[datetime, str], bool, str | None]] = []
        for row in (mine.get(tag), theirs.get(tag)):
            if row is not None:
                candidates.append(((row.asserted_at, row.assert_key), row.present, row.event_id))
        if newest is not None:
            candidates.append(
                ((newest.asserted_at, newest.assert_key), tag in listed, newest.event_id)
            )
        (at, key), present, event_id = max(candidates, key=lambda c: c[0])
        row = mine.get(tag)
        before = row.present if row is not None else False
        if row is None:
            row = ContactTag(contact_id=into.id, tag=tag)
            db.session.add(row)
        elif (row.asserted_at, row.assert_key) == (at, key) and row.present == present:
            continue
        row.present, row.asserted_at, row.assert_key, row.event_id = present, at, key, event_id
        if present != before:
            (added if present else removed).add(tag)
    return added, removed


def _combine_contact_facts(into: Contact, alias: Contact) -> bool:
    """Profile and revoke assertions recorded on the alias: the newest wins. True if changed."""
    changed = False
    if alias.profile_at is not None and _newer(
        (alias.profile_at, alias.profile_key),
        (into.profile_at, into.profile_key) if into.profile_at else None,
    ):
        for name in ("email", "first_name", "last_name"):
            value = getattr(alias, name)
            if value and getattr(into, name) != value:
                setattr(into, name, value)
                changed = True
        into.profile_at, into.profile_key = alias.profile_at, alias.profile_key
    if alias.revoked_at is not None and _newer(
        (alias.revoked_at, alias.revoked_key),
        (into.revoked_at, into.revoked_key) if into.revoked_at else None,
    ):
        into.revoked_at, into.revoked_key = alias.revoked_at, alias.revoked_key
        changed = True
    return changed


def _moved(statement: Any) -> int:
    result = cast(CursorResult[Any], db.session.execute(statement))
    return int(result.rowcount)


def merge_members(survivor: Member, other: Member, outcome: Outcome) -> None:
    """`other` joins `survivor`: links and subscriptions move, `other` is kept as history."""
    moved_contacts = _moved(
        update(Contact).where(Contact.member_id == other.id).values(member_id=survivor.id)
    )
    moved_subs = _moved(
        update(Subscription).where(Subscription.member_id == other.id).values(member_id=survivor.id)
    )
    # The surviving account's status is the latest assertion about either (a revoke, a restore).
    if other.status in ("active", "revoked") and other.status_at is not None:
        mine = (survivor.status_at, survivor.status_key) if survivor.status_at else None
        if _newer((other.status_at, other.status_key), mine):
            survivor.status = other.status
            survivor.status_at, survivor.status_key = other.status_at, other.status_key
    # An admin's testing flag is kept if either account had it.
    survivor.all_access = survivor.all_access or other.all_access
    other.status = "merged"
    other.merged_into_id = survivor.id
    # Members merged into `other` earlier now point at the survivor directly; billing metadata
    # that still names `other` follows merged_into (billing._survivor).
    db.session.execute(
        update(Member).where(Member.merged_into_id == other.id).values(merged_into_id=survivor.id)
    )
    survivor.touch()
    other.touch()
    outcome.note(
        survivor.id,
        "members merged",
        merged_member=other.id,
        contacts_moved=moved_contacts,
        subscriptions_moved=moved_subs,
    )
    outcome.note(other.id, "merged into", member=survivor.id)


def merged(event: Event, when: Assertion, outcome: Outcome) -> None:
    payload: dict[str, Any] = event.payload
    data: dict[str, Any] = payload["contact"]
    crm, survivor_id = data["crm"], data["id"]
    away_ids = [i for i in dict.fromkeys(payload.get("merged_ids") or []) if i != survivor_id]
    named, rows = lock_contacts(crm, [survivor_id, *away_ids])

    target_row_id = _target_id(named[survivor_id].id, rows)
    assert target_row_id is not None
    target = rows[target_row_id]
    if target.state == "merged":
        raise Skip(f"{target.key} is a merge alias in a cycle; not merging")
    if apply_profile(target, data, when):
        outcome.note(None, "profile", contact=target.key)

    # Every contact that becomes (or already is) one with the survivor, in row-id order.
    aliases: list[Contact] = []
    for away_id in away_ids:
        row = named[away_id]
        resolved = _target_id(row.id, rows)
        if resolved == target.id and row.state == "merged":
            continue  # already an alias of the survivor: a repeat or a replay
        if row.state == "merged" and resolved != target.id:
            outcome.note(
                None,
                "already merged elsewhere",
                contact=row.key,
                into=rows[resolved].key if resolved is not None else None,
            )
            continue
        aliases.append(row)
    aliases.sort(key=lambda c: c.id)

    member_ids = {c.member_id for c in (target, *aliases) if c.member_id is not None}
    members = lock_members(member_ids)
    # The member holding the survivor keeps the account; with none, the oldest account does.
    if target.member_id is not None:
        survivor_member: Member | None = members[target.member_id]
    elif members:
        survivor_member = members[min(members)]
    else:
        survivor_member = None

    access_changed = False
    for alias in aliases:
        added, removed = combine_tags(target, alias)
        access_changed |= bool(added or removed)
        access_changed |= _combine_contact_facts(target, alias)
        alias.state = "merged"
        alias.merged_into_id = target.id
        alias.state_at, alias.state_key = when.at, when.key
        outcome.note(
            None,
            "contact merged",
            contact=alias.key,
            into=target.key,
            tags_added=[f"{crm}:{t}" for t in sorted(added)],
            tags_removed=[f"{crm}:{t}" for t in sorted(removed)],
        )

    if survivor_member is None:
        raise Skip(
            f"no member is linked to {target.key} or the contacts merged into it; "
            "the aliases are kept for when one is"
        )
    if target.member_id != survivor_member.id:
        target.member_id = survivor_member.id
        access_changed = True
        outcome.note(survivor_member.id, "linked", contact=target.key)
    for alias in aliases:
        if alias.member_id is None:
            alias.member_id = survivor_member.id  # kept linked as history of the account
    for member_id in sorted(members):
        if member_id != survivor_member.id and members[member_id].status != "merged":
            merge_members(survivor_member, members[member_id], outcome)
    db.session.flush()
    db.session.refresh(survivor_member, ["contacts"])
    sync_member_profile(survivor_member)
    if access_changed:
        survivor_member.touch()
        outcome.note(survivor_member.id, "merge changed access inputs", contact=target.key)
    apply_contact_revocation(target, survivor_member, outcome)
