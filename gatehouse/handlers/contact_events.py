"""Handlers for contact and member events: one function per canonical type."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gatehouse.extensions import db
from gatehouse.handlers.billing import requeue_unmatched_for
from gatehouse.handlers.contacts import (
    apply_contact_revocation,
    apply_profile,
    lock_contact,
    lock_member,
    sync_member_profile,
)
from gatehouse.handlers.outcome import Assertion, Outcome, Skip
from gatehouse.handlers.tags import apply_snapshot, apply_tag
from gatehouse.models import Contact, Event, Member
from gatehouse.passwords import random_password_hash


def _open(event: Event, when: Assertion) -> tuple[Contact, Member | None]:
    data: dict[str, Any] = event.payload["contact"]
    contact = lock_contact(data["crm"], data["id"])
    assert contact is not None
    member = lock_member(contact.member_id)
    if apply_profile(contact, data, when) and member is not None:
        sync_member_profile(member)
    return contact, member


def _tags_changed(
    contact: Contact, member: Member | None, added: set[str], removed: set[str], outcome: Outcome
) -> None:
    if member is None or not (added or removed) or contact.state != "live":
        return
    member.touch()
    note_tags(outcome, member.id, contact.crm, contact.key, added, removed)


def note_tags(
    outcome: Outcome,
    member_id: str,
    crm: str,
    contact_key: str,
    added: Iterable[str],
    removed: Iterable[str],
) -> None:
    """The admin's summary of a tag change (also written by `handlers.tag_batch`)."""
    outcome.note(
        member_id,
        "tags",
        contact=contact_key,
        added=[f"{crm}:{t}" for t in sorted(added)],
        removed=[f"{crm}:{t}" for t in sorted(removed)],
    )


def no_member_reason(contact_key: str) -> str:
    return f"no member is linked to contact {contact_key}; its state is kept for when one is"


def _no_member(contact: Contact) -> Skip:
    return Skip(no_member_reason(contact.key))


def _apply_payload_tags(
    event: Event, contact: Contact, member: Member | None, when: Assertion, outcome: Outcome
) -> None:
    payload = event.payload
    if payload.get("tags") is not None and event.type in (
        "member.provision",
        "contact.updated",
        "contact.tags_set",
    ):
        added, removed = apply_snapshot(contact, payload["tags"], when)
        _tags_changed(contact, member, added, removed, outcome)


def provision(event: Event, when: Assertion, outcome: Outcome) -> None:
    contact, member = _open(event, when)
    _apply_payload_tags(event, contact, member, when, outcome)
    if member is not None:
        outcome.note(member.id, "already a member", contact=contact.key)
        return
    if not contact.email:
        raise Skip(f"cannot create a member for {contact.key} without an email")
    member = Member(
        email=contact.email,
        status="active",
        password_hash=random_password_hash(),
        access_version=1,
    )
    db.session.add(member)
    db.session.flush()
    contact.member_id = member.id
    db.session.flush()
    db.session.refresh(member, ["contacts"])
    sync_member_profile(member)
    outcome.note(member.id, "created", contact=contact.key)
    requeued = requeue_unmatched_for(member, contact)
    if requeued:
        outcome.note(member.id, "billing events re-run", events=requeued)
    apply_contact_revocation(contact, member, outcome)


def contact_updated(event: Event, when: Assertion, outcome: Outcome) -> None:
    contact, member = _open(event, when)
    _apply_payload_tags(event, contact, member, when, outcome)
    if member is None:
        raise _no_member(contact)


def tags_set(event: Event, when: Assertion, outcome: Outcome) -> None:
    contact_updated(event, when, outcome)


def _explicit(event: Event, when: Assertion, outcome: Outcome, present: bool) -> None:
    contact, member = _open(event, when)
    payload = event.payload
    tags = payload.get("tags") or [payload["tag"]]
    changed = {t for t in dict.fromkeys(tags) if apply_tag(contact, t, present, when)}
    if present:
        _tags_changed(contact, member, changed, set(), outcome)
    else:
        _tags_changed(contact, member, set(), changed, outcome)
    if member is None:
        raise _no_member(contact)


def tag_added(event: Event, when: Assertion, outcome: Outcome) -> None:
    _explicit(event, when, outcome, True)


def tag_removed(event: Event, when: Assertion, outcome: Outcome) -> None:
    _explicit(event, when, outcome, False)


# The single-tag handlers: `handlers.tag_batch` applies a batch of their events without the
# ORM, exactly as they would, while the dispatch maps their types to them.
SINGLE_TAG_HANDLERS = {"contact.tag_added": tag_added, "contact.tag_removed": tag_removed}


def named_tags(event_type: str, payload: Any) -> list[str] | None:
    """The tags a single-tag event names (as `_explicit` reads them), or None when it is not
    one, or names them in a shape `_explicit` would fail on."""
    if event_type not in SINGLE_TAG_HANDLERS or not isinstance(payload, dict):
        return None
    tags = payload.get("tags") or [payload.get("tag")]
    if isinstance(tags, list) and tags and all(isinstance(t, str) for t in tags):
        return tags
    return None


def revoked(event: Event, when: Assertion, outcome: Outcome) -> None:
    contact, member = _open(event, when)
    if when.newer_than(contact.revoked_at, contact.revoked_key):
        contact.revoked_at, contact.revoked_key = when.at, when.key
    if member is None:
        raise _no_member(contact)
    apply_contact_revocation(contact, member, outcome)


def deleted(event: Event, when: Assertion, outcome: Outcome) -> None:
    data: dict[str, Any] = event.payload["contact"]
    named = lock_contact(data["crm"], data["id"], follow_aliases=False)
    if named is not None and named.state == "merged":
        # The CRM deletes the merged-away record as part of a merge (Keap does): that
        # deletion is about the alias, never about the surviving contact.
        raise Skip(f"contact {named.key} was merged away; its deletion changes nothing")
    contact, member = _open(event, when)
    if contact.state == "live" and when.newer_than(contact.state_at, contact.state_key):
        contact.state = "deleted"
        contact.state_at, contact.state_key = when.at, when.key
        if member is not None:
            member.touch()
            outcome.note(member.id, "contact deleted", contact=contact.key)
    if member is None:
        raise _no_member(contact)
