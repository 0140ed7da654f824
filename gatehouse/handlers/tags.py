"""Tags by latest assertion: explicit adds/removes and full snapshots, in any order."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from gatehouse.extensions import db
from gatehouse.handlers import preload
from gatehouse.handlers.outcome import Assertion
from gatehouse.models import Contact, ContactTag, TagSnapshot


def apply_snapshot(contact: Contact, tags: list[str], when: Assertion) -> tuple[set[str], set[str]]:
    """Assert every listed tag present and every other tag of this CRM absent.

    Returns (added, removed) as seen by access. Rows newer than the snapshot are kept.
    """
    pre = preload.current()
    known_rows = pre.all_rows(contact.id) if pre is not None and contact.id in pre.tags else None
    if pre is not None and known_rows is not None:
        snapshot = pre.snapshots.get(contact.id)
    else:
        snapshot = db.session.get(TagSnapshot, contact.id)
    if snapshot is not None and not when.newer_than(snapshot.asserted_at, snapshot.assert_key):
        return set(), set()
    listed = set(tags)
    if snapshot is None:
        snapshot = TagSnapshot(contact_id=contact.id)
        db.session.add(snapshot)
        if pre is not None and known_rows is not None:
            pre.snapshots[contact.id] = snapshot
    snapshot.asserted_at, snapshot.assert_key = when.at, when.key
    snapshot.event_id, snapshot.tags = when.event_id, sorted(listed)

    added: set[str] = set()
    removed: set[str] = set()
    rows: Iterable[ContactTag]
    if known_rows is not None:
        rows = list(known_rows.values())
    else:
        rows = db.session.execute(
            select(ContactTag).where(ContactTag.contact_id == contact.id)
        ).scalars()
    known = set()
    for row in rows:
        known.add(row.tag)
        if not when.newer_than(row.asserted_at, row.assert_key):
            continue
        present = row.tag in listed
        if present != row.present:
            (added if present else removed).add(row.tag)
        row.present = present
        row.asserted_at, row.assert_key, row.event_id = when.at, when.key, when.event_id
    for tag in sorted(listed - known):
        row = ContactTag(
            contact_id=contact.id,
            tag=tag,
            present=True,
            asserted_at=when.at,
            assert_key=when.key,
            event_id=when.event_id,
        )
        db.session.add(row)
        if known_rows is not None:
            known_rows[tag] = row
        added.add(tag)
    return added, removed


def apply_tag(contact: Contact, tag: str, present: bool, when: Assertion) -> bool:
    """An explicit add or remove; returns True if the tag's presence changed."""
    pre = preload.current()
    known_rows = pre.rows_for(contact.id, tag) if pre is not None else None
    if known_rows is not None:
        # This tag's row is loaded if it exists (and a pending one recorded): no query.
        row = known_rows.get(tag)
    else:
        row = db.session.get(ContactTag, (contact.id, tag))
    if row is None:
        if pre is not None and contact.id in pre.tags:
            snapshot = pre.snapshots.get(contact.id)
        else:
            snapshot = db.session.get(TagSnapshot, contact.id)
        if snapshot is not None and not when.newer_than(snapshot.asserted_at, snapshot.assert_key):
            return False  # a newer snapshot already asserted this tag absent
        row = ContactTag(
            contact_id=contact.id,
            tag=tag,
            present=present,
            asserted_at=when.at,
            assert_key=when.key,
            event_id=when.event_id,
        )
        db.session.add(row)
        if known_rows is not None:
            known_rows[tag] = row
        return present
    if not when.newer_than(row.asserted_at, row.assert_key):
        return False
    changed = row.present != present
    row.present = present
    row.asserted_at, row.assert_key, row.event_id = when.at, when.key, when.event_id
    return changed


def present_tags(contact: Contact) -> list[str]:
    return sorted(
        db.session.execute(
            select(ContactTag.tag).where(
                ContactTag.contact_id == contact.id, ContactTag.present.is_(True)
            )
        ).scalars()
    )
