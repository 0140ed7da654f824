"""Rows a batch of events will lock and read, loaded (and locked) in a few statements.

A worker applies a batch of events in one transaction (`jobs.process_events`). Without
this, each event locked its contact, then its member, then read its tag rows and snapshot:
four or five statements per event, each flushing the previous event's changes first. With
it, the batch locks every named contact in one statement and every linked member in
another (both in id order, so overlapping batches on two workers lock in the same order),
reads their tag rows and snapshots in two more, and the handlers find them here. Changes
then flush once, at the commit, as a few multi-row statements.

It lives in the session's `info` for the one transaction and is dropped with it: the locks
it stands for end at the commit. Handlers that do not find a row here (a merged-away
contact's survivor, a member created in this batch) take the ordinary path: a locking query.
New rows a handler adds are recorded here too, so a later event of the same batch sees them
without a query (the session's identity map does not hold pending rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import select, tuple_

from gatehouse.extensions import db
from gatehouse.models import Contact, ContactTag, Member, TagSnapshot

KEY = "gatehouse.preloaded"


@dataclass
class Preloaded:
    contacts: dict[tuple[str, str], Contact] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    # contact id -> tag -> row, for every contact whose rows were all loaded (or that is new)
    tags: dict[int, dict[str, ContactTag]] = field(default_factory=dict)
    snapshots: dict[int, TagSnapshot | None] = field(default_factory=dict)

    def complete(self, contact_id: int) -> bool:
        return contact_id in self.tags

    def add_new_contact(self, crm: str, contact_id: str, contact: Contact) -> None:
        """A contact this transaction created: it has no tag rows and no snapshot yet."""
        self.contacts[(crm, contact_id)] = contact
        self.tags.setdefault(contact.id, {})
        self.snapshots.setdefault(contact.id, None)


def current() -> Preloaded | None:
    found: Preloaded | None = db.session.info.get(KEY)
    return found


@contextmanager
def preloaded(keys: Iterable[tuple[str, str]]) -> Iterator[Preloaded]:
    """Lock and load the contacts named by (crm, contact id), their members, tags, snapshots.

    Only for the transaction the caller commits or rolls back inside this block.
    """
    pre = Preloaded()
    pairs = sorted(set(keys))
    if pairs:
        contacts = db.session.execute(
            select(Contact)
            .where(tuple_(Contact.crm, Contact.contact_id).in_(pairs))
            .order_by(Contact.id)
            .with_for_update()
        ).scalars()
        for contact in contacts:
            pre.contacts[(contact.crm, contact.contact_id)] = contact
        member_ids = sorted({c.member_id for c in pre.contacts.values() if c.member_id is not None})
        if member_ids:
            members = db.session.execute(
                select(Member)
                .where(Member.id.in_(member_ids))
                .order_by(Member.id)
                .with_for_update()
            ).scalars()
            pre.members = {m.id: m for m in members}
        contact_ids = [c.id for c in pre.contacts.values()]
        if contact_ids:
            pre.tags = {cid: {} for cid in contact_ids}
            pre.snapshots = dict.fromkeys(contact_ids)
            for row in db.session.execute(
                select(ContactTag).where(ContactTag.contact_id.in_(contact_ids))
            ).scalars():
                pre.tags[row.contact_id][row.tag] = row
            for snapshot in db.session.execute(
                select(TagSnapshot).where(TagSnapshot.contact_id.in_(contact_ids))
            ).scalars():
                pre.snapshots[snapshot.contact_id] = snapshot
    db.session.info[KEY] = pre
    try:
        yield pre
    finally:
        db.session.info.pop(KEY, None)
