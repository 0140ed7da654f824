"""Find (or record) the contact an event names, following merge aliases, under a row lock."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from gatehouse.extensions import db
from gatehouse.handlers import preload
from gatehouse.handlers.outcome import Assertion, Outcome
from gatehouse.models import Contact, Member


def _insert_contact(crm: str, contact_id: str) -> None:
    dialect = db.engine.dialect.name
    values = {
        "crm": crm,
        "contact_id": contact_id,
        "state": "live",
        "state_key": "",
        "profile_key": "",
        "revoked_key": "",
    }
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(Contact).values(values).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(Contact).values(values).on_conflict_do_nothing()
    db.session.execute(stmt)


def lock_contact(
    crm: str, contact_id: str, *, create: bool = True, follow_aliases: bool = True
) -> Contact | None:
    """The contact row, locked for this transaction; a merged-away id resolves to its survivor
    (unless `follow_aliases` is off: then the named row itself).

    Locking the contact (and then its member) serializes all work on one member: two
    workers never interleave updates to it.
    """
    pre = preload.current()
    # Locked already by this batch's transaction (preload): no second statement.
    contact = pre.contacts.get((crm, contact_id)) if pre is not None else None
    if contact is None:
        query = select(Contact).where(Contact.crm == crm, Contact.contact_id == contact_id)
        contact = db.session.execute(query.with_for_update()).scalar_one_or_none()
        if contact is None:
            if not create:
                return None
            _insert_contact(crm, contact_id)
            contact = db.session.execute(
                query.with_for_update().execution_options(populate_existing=True)
            ).scalar_one()
            if pre is not None:
                pre.add_new_contact(crm, contact_id, contact)
    seen = {contact.id}
    while follow_aliases and contact.state == "merged" and contact.merged_into_id is not None:
        survivor = db.session.execute(
            select(Contact).where(Contact.id == contact.merged_into_id).with_for_update()
        ).scalar_one()
        if survivor.id in seen:
            break  # a cycle would be a bug elsewhere; stop rather than spin
        seen.add(survivor.id)
        contact = survivor
    return contact


def lock_member(member_id: str | None) -> Member | None:
    if member_id is None:
        return None
    pre = preload.current()
    if pre is not None and member_id in pre.members:
        return pre.members[member_id]  # locked already by this batch's transaction
    return db.session.execute(
        select(Member).where(Member.id == member_id).with_for_update()
    ).scalar_one_or_none()


# What an event may state of a contact's profile (`handlers.tag_batch` leaves events that do
# to the handlers).
PROFILE_FIELDS = ("email", "first_name", "last_name")


def apply_profile(contact: Contact, data: dict[str, Any], when: Assertion) -> bool:
    """Email and name follow the newest event that states them."""
    fields = {k: data.get(k) for k in PROFILE_FIELDS if data.get(k)}
    if not fields or not when.newer_than(contact.profile_at, contact.profile_key):
        return False
    changed = any(getattr(contact, k) != v for k, v in fields.items())
    for name, value in fields.items():
        setattr(contact, name, value)
    contact.profile_at, contact.profile_key = when.at, when.key
    return changed


def sync_member_profile(member: Member) -> None:
    """A member's email and name come from its contact with the newest profile."""
    live = [c for c in member.contacts if c.profile_at is not None]
    if not live:
        return
    newest = max(live, key=lambda c: (c.profile_at, c.profile_key))
    if newest.email:
        member.email = newest.email
    name = " ".join(p for p in (newest.first_name, newest.last_name) if p)
    if name:
        member.name = name


def apply_contact_revocation(contact: Contact, member: Member, outcome: Outcome) -> None:
    """A revoke asserted on the contact applies to its member unless something newer restored it."""
    if contact.revoked_at is None:
        return
    when = Assertion(at=contact.revoked_at, key=contact.revoked_key, event_id=None)
    if when.newer_than(member.status_at, member.status_key) and member.status == "active":
        member.status = "revoked"
        member.status_at, member.status_key = when.at, when.key
        member.touch()
        outcome.note(member.id, "revoked")
