"""Rows a batch of events will lock and read, loaded (and locked) in a few statements.

A worker applies a batch of events in one transaction (`jobs.process_events`). Without
this, each event locked its contact, then its member, then read its tag rows and snapshot:
four or five statements per event, each flushing the previous event's changes first. With
it, the batch locks every named contact in one statement and every linked member in
another (both in id order, so overlapping batches on two workers lock in the same order),
reads their tag rows (only the named tags' rows for contacts with single-tag events only)
and snapshots in two more, and the handlers find them here. Changes
then flush once, at the commit, as a few multi-row statements.

It lives in the session's `info` for the one transaction and is dropped with it: the locks
it stands for end at the commit. Handlers that do not find a row here (a merged-away
contact's survivor, a member created in this batch) take the ordinary path: a locking query.
New rows a handler adds are recorded here too, so a later event of the same batch sees them
without a query (the session's identity map does not hold pending rows).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, and_, or_, select

from gatehouse.extensions import db
from gatehouse.models import Contact, ContactTag, Member, TagSnapshot

KEY = "gatehouse.preloaded"


@dataclass
class Preloaded:
    contacts: dict[tuple[str, str], Contact] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    # contact id -> tag -> row: every row of the contact (pending ones recorded too), or, for
    # a contact in `only`, the rows of those tags alone
    tags: dict[int, dict[str, ContactTag]] = field(default_factory=dict)
    # contact id -> the tags whose rows were loaded, where the batch named single tags only
    only: dict[int, set[str]] = field(default_factory=dict)
    snapshots: dict[int, TagSnapshot | None] = field(default_factory=dict)

    def rows_for(self, contact_id: int, tag: str | None = None) -> dict[str, ContactTag] | None:
        """The loaded rows of this contact if they settle `tag` (all of its tags when None):
        a tag missing from them has no row. None: they do not, ask the database."""
        rows = self.tags.get(contact_id)
        if rows is None:
            return None
        only = self.only.get(contact_id)
        if only is not None and (tag is None or tag not in only):
            return None
        return rows

    def all_rows(self, contact_id: int) -> dict[str, ContactTag]:
        """Every row of a preloaded contact (a snapshot names them all): those of a contact
        loaded for some tags only are read first."""
        rows = self.tags[contact_id]
        if contact_id not in self.only:
            return rows
        # Autoflush first writes the rows this batch added, so the query returns them too.
        for row in db.session.execute(
            select(ContactTag).where(ContactTag.contact_id == contact_id)
        ).scalars():
            rows[row.tag] = row
        self.only.pop(contact_id, None)
        return rows

    def add_new_contact(self, crm: str, contact_id: str, contact: Contact) -> None:
        """A contact this transaction created: it has no tag rows and no snapshot yet."""
        self.contacts[(crm, contact_id)] = contact
        self.tags.setdefault(contact.id, {})
        self.snapshots.setdefault(contact.id, None)


def current() -> Preloaded | None:
    found: Preloaded | None = db.session.info.get(KEY)
    return found


@contextmanager
def preloaded(wanted: Mapping[tuple[str, str], Collection[str] | None]) -> Iterator[Preloaded]:
    """Lock and load the contacts named by (crm, contact id), their members, snapshots, and
    tag rows: every row of a contact mapped to None, only the named tags' rows otherwise (a
    batch of single-tag events reads one row per event, not every tag the contact has).

    Only for the transaction the caller commits or rolls back inside this block.
    """
    pre = Preloaded()
    pairs = sorted(wanted)
    if pairs:
        # Two INs, not a row-value IN: SQLite answers `(crm, contact_id) IN (VALUES ...)`
        # by scanning the whole table. Another CRM's contact with a named id can match
        # (one CRM per batch is the rule): it is left out here.
        contacts = db.session.execute(
            select(Contact)
            .where(
                Contact.crm.in_(sorted({crm for crm, _id in pairs})),
                Contact.contact_id.in_(sorted({cid for _crm, cid in pairs})),
            )
            .order_by(Contact.id)
            .with_for_update()
        ).scalars()
        for contact in contacts:
            key = (contact.crm, contact.contact_id)
            if key in wanted:
                pre.contacts[key] = contact
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
            every = []
            for key, contact in pre.contacts.items():
                tags = wanted[key]
                if tags is None:
                    every.append(contact.id)
                else:
                    pre.only[contact.id] = set(tags)
            rows: list[ColumnElement[bool]] = []
            if every:
                rows.append(ContactTag.contact_id.in_(every))
            # Per contact its own tags, not a row-value IN (a scan, as above) nor two INs
            # (every contact's rows of every named tag, each made an object).
            rows += [
                and_(ContactTag.contact_id == cid, ContactTag.tag.in_(sorted(tags)))
                for cid, tags in sorted(pre.only.items())
            ]
            if rows:
                for row in db.session.execute(select(ContactTag).where(or_(*rows))).scalars():
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
