"""A batch made only of single-tag events, applied with a few Core statements.

The common burst is a CRM adding or removing one tag on many contacts (a campaign step, a
re-sync). Through the ORM (handlers.preload, contact_events, tags.apply_tag) a batch of
such events cost about 1.6 ms of the worker's CPU per event, nearly all of it the ORM's
own bookkeeping: the batch's SQL took about a tenth of that. Here the same batch is read
in five statements, applied to plain values in memory, and written in at most five
multi-row statements.

It decides exactly as `contact_events.tag_added`/`tag_removed` and `tags.apply_tag` do,
and `tests/handlers/test_tag_batch.py` holds the two to the same rows and results. What
it does not know how to do (create a contact, follow a merge alias, update a profile) it
does not try: `prepare` or `apply` returns None before writing anything, and the caller
applies the batch the ordinary way, in the same transaction.

Two steps, so that on SQLite the part that needs no lock runs outside the write turn that
web inserts wait for: `prepare` reads what an event never changes after its insert (its
type, payload, times) and decides whether the batch is one for this path; `apply`, in the
write transaction, reads and locks everything that can change (each event's attempts,
the contacts, members, tags and snapshots) and writes.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, text

from gatehouse.driver import ExecuteMany
from gatehouse.extensions import db
from gatehouse.handlers import contact_events
from gatehouse.handlers.contact_events import no_member_reason, note_tags
from gatehouse.handlers.contacts import PROFILE_FIELDS
from gatehouse.handlers.dispatch import HANDLERS
from gatehouse.handlers.outcome import Assertion, BatchOutcome, Outcome
from gatehouse.models import (
    Contact,
    ContactTag,
    Event,
    EventAttempt,
    Member,
    Source,
    TagSnapshot,
    utcnow,
)
from gatehouse.models.in_list import in_list

_EVENTS: Any = Event.__table__
_CONTACTS: Any = Contact.__table__
_MEMBERS: Any = Member.__table__
_TAGS: Any = ContactTag.__table__
_SNAPSHOTS: Any = TagSnapshot.__table__
_ATTEMPTS: Any = EventAttempt.__table__
_SOURCES: Any = Source.__table__

# Built once, with lists bound by name (`in_list`): building a statement's clauses each time cost
# more than running it.
_ev, _c, _m, _t, _s = _EVENTS.c, _CONTACTS.c, _MEMBERS.c, _TAGS.c, _SNAPSHOTS.c
# What an event's insert fixed for good (the sweep, a replay and a worker change only its
# status, attempts and outcome): read in `prepare`, before the write turn.
_SELECT_EVENTS = (
    select(
        _ev.id,
        _ev.source_id,
        _ev.external_id,
        _ev.type,
        _ev.occurred_at,
        _ev.received_at,
        _ev.payload,
        _ev.contact_key,
        # The source's name for the metrics, in the same read: a read of its own after the
        # commit (`jobs._named`) cost the worker 0.7-0.8 ms of CPU a batch on PostgreSQL.
        _SOURCES.c.slug.label("source_slug"),
    )
    .select_from(_EVENTS.join(_SOURCES, _SOURCES.c.id == _ev.source_id))
    .where(in_list(_ev.id, "ids"))
)
_SELECT_ATTEMPTS = select(_ev.id, _ev.attempts).where(in_list(_ev.id, "ids"))
# Two INs, not a row-value IN (see handlers.preload); locked in id order, as there, so
# overlapping batches on two workers take their row locks in the same order.
_LOCK_CONTACTS = (
    select(_c.id, _c.crm, _c.contact_id, _c.member_id, _c.state)
    .where(
        in_list(_c.crm, "crms"),
        in_list(_c.contact_id, "contact_ids"),
    )
    .order_by(_c.id)
    .with_for_update()
)
_LOCK_MEMBERS = (
    select(_m.id, _m.access_version).where(in_list(_m.id, "ids")).order_by(_m.id).with_for_update()
)


@functools.cache
def _select_tags(pairs: int) -> Any:
    """The rows of `pairs` (contact id, tag) pairs, bound as `c<n>`, `t<n>`: a list of
    VALUES joined on the primary key, one probe per pair.

    Two INs (every named contact against every named tag) made a probe per contact and
    tag: a batch of 50 events naming 15 tags between them made 750 for 50 rows, 13% of the
    batch's time in its write turn ("A web request without an app context", 7, in
    docs/benchmarks.md). A row-value IN makes SQLite scan the table (handlers.preload).
    Built once per number of pairs (at most `_PAIRS_PER_READ`); SQLAlchemy caches the
    compiled form.
    """
    values = ", ".join(f"(CAST(:c{n} AS INTEGER), :t{n})" for n in range(pairs))
    sql = (
        f"WITH wanted (contact_id, tag) AS (VALUES {values}) "  # noqa: S608 - placeholders only
        "SELECT ct.contact_id, ct.tag, ct.present, ct.asserted_at, ct.assert_key, ct.event_id "
        "FROM wanted JOIN contact_tags AS ct "
        "ON ct.contact_id = wanted.contact_id AND ct.tag = wanted.tag"
    )
    return text(sql).columns(
        _t.contact_id, _t.tag, _t.present, _t.asserted_at, _t.assert_key, _t.event_id
    )


# An event may name up to 5,000 tags (schemas.events.MAX_TAGS): read in slices, so no
# statement outgrows SQLite's limit on parameters and at most this many are cached.
_PAIRS_PER_READ = 250


def _read_tags(pairs: list[tuple[int, str]]) -> dict[tuple[int, str], _Row]:
    known: dict[tuple[int, str], _Row] = {}
    for start in range(0, len(pairs), _PAIRS_PER_READ):
        chunk = pairs[start : start + _PAIRS_PER_READ]
        params: dict[str, Any] = {}
        for n, (cid, tag) in enumerate(chunk):
            params[f"c{n}"], params[f"t{n}"] = cid, tag
        for r in db.session.execute(_select_tags(len(chunk)), params):
            known[(r.contact_id, r.tag)] = _Row(r.present, r.asserted_at, r.assert_key, r.event_id)
    return known


_SELECT_SNAPSHOTS = select(_s.contact_id, _s.asserted_at, _s.assert_key).where(
    in_list(_s.contact_id, "contact_ids")
)
_INSERT_TAGS = ExecuteMany(insert(_TAGS))


_UPDATE_TAGS = ExecuteMany.update(
    _TAGS, ("contact_id", "tag"), ("present", "asserted_at", "assert_key", "event_id")
)
_UPDATE_MEMBERS = ExecuteMany.update(_MEMBERS, ("id",), ("access_version", "updated_at"))
_UPDATE_EVENTS = ExecuteMany.update(
    _EVENTS,
    ("id",),
    ("status", "reason", "effects", "last_error", "processed_at", "attempts", "updated_at"),
)
_INSERT_ATTEMPTS = ExecuteMany(insert(_ATTEMPTS))


@dataclass
class _Row:
    present: bool
    at: datetime
    key: str
    event_id: str | None


def _plain_contact(payload: dict[str, Any]) -> tuple[str, str] | None:
    """The (crm, id) of a payload contact that states no profile: its event changes nothing
    but tags."""
    contact = payload.get("contact")
    if not isinstance(contact, dict) or any(contact.get(k) for k in PROFILE_FIELDS):
        return None
    crm, contact_id = contact.get("crm"), contact.get("id")
    if isinstance(crm, str) and isinstance(contact_id, str):
        return crm, contact_id
    return None


@dataclass
class Prepared:
    """A batch `prepare` found to be plain single-tag events: per event its row (the columns
    of `_SELECT_EVENTS`), its contact's (crm, id) and its tags, and per contact every tag
    its events name."""

    event_ids: Sequence[str]
    plan: list[tuple[Any, tuple[str, str], list[str]]]
    wanted: dict[tuple[str, str], set[str]]


def _named_tags(
    plan: list[tuple[Any, tuple[str, str], list[str]]],
) -> dict[tuple[str, str], set[str]]:
    """Per contact (crm, id), every tag the plan's events name."""
    wanted: dict[tuple[str, str], set[str]] = {}
    for _row, key, tags in plan:
        wanted.setdefault(key, set()).update(tags)
    return wanted


def prepare(event_ids: Sequence[str], run_alone: Collection[str]) -> Prepared | None:
    """Read the batch's events, or return None when any of them is not a plain single-tag
    event (a type run alone or handled elsewhere, a profile stated) or none exists. Reads
    only what never changes after an insert, so it needs no lock."""
    rows = db.session.execute(_SELECT_EVENTS, {"ids": list(event_ids)}).all()
    if not rows:
        return None
    plan = []
    for row in rows:
        tags = contact_events.named_tags(row.type, row.payload)
        key = _plain_contact(row.payload) if tags is not None else None
        if tags is None or key is None or row.type in run_alone:
            return None
        if HANDLERS.get(row.type) is not contact_events.SINGLE_TAG_HANDLERS[row.type]:
            return None  # the dispatch maps the type elsewhere (a new handler, a test's)
        plan.append((row, key, tags))
    return Prepared(event_ids, plan, _named_tags(plan))


def apply(prepared: Prepared, started_at: datetime) -> BatchOutcome | None:
    """Apply a prepared batch in the current transaction (the caller commits), or return
    None, having written nothing, when a contact of it is unknown or merged."""
    session = db.session
    event_ids = prepared.event_ids
    ids = [row.id for row, _key, _tags in prepared.plan]
    attempts_of: dict[str, int] = {
        event_id: n for event_id, n in session.execute(_SELECT_ATTEMPTS, {"ids": ids})
    }
    plan, wanted = prepared.plan, prepared.wanted
    if len(attempts_of) != len(plan):
        # Deleted since `prepare` read it: reported missing, as an event never stored is.
        plan = [p for p in plan if p[0].id in attempts_of]
        if not plan:
            return None
        wanted = _named_tags(plan)
    contacts = {}
    for contact in session.execute(
        _LOCK_CONTACTS,
        {
            "crms": sorted({crm for crm, _id in wanted}),
            "contact_ids": sorted({cid for _crm, cid in wanted}),
        },
    ):
        if (contact.crm, contact.contact_id) in wanted:
            contacts[(contact.crm, contact.contact_id)] = contact
    if len(contacts) != len(wanted) or any(x.state == "merged" for x in contacts.values()):
        return None  # a contact to create or an alias to follow: the ordinary path

    member_ids = sorted({x.member_id for x in contacts.values() if x.member_id is not None})
    versions: dict[str, int] = {}
    if member_ids:
        versions = {
            r.id: r.access_version for r in session.execute(_LOCK_MEMBERS, {"ids": member_ids})
        }
    by_id = {contacts[key].id: tags for key, tags in wanted.items()}
    contact_ids = sorted(by_id)
    known = _read_tags([(cid, tag) for cid in contact_ids for tag in sorted(by_id[cid])])
    snapshots = {
        r.contact_id: (r.asserted_at, r.assert_key)
        for r in session.execute(_SELECT_SNAPSHOTS, {"contact_ids": contact_ids})
    }

    position = {event_id: n for n, event_id in enumerate(event_ids)}
    plan.sort(key=lambda p: (p[0].contact_key or "", position[p[0].id]))
    new: set[tuple[int, str]] = set()
    dirty: set[tuple[int, str]] = set()
    bumped: dict[str, int] = {}
    batch = BatchOutcome.of(event_ids, {row.id for row, _key, _tags in plan})
    event_updates = []
    attempts = []
    for row, key, tags in plan:
        contact = contacts[key]
        present = row.type == "contact.tag_added"
        when = Assertion(at=row.occurred_at, key=row.external_id, event_id=row.id)
        changed = set()
        for tag in dict.fromkeys(tags):  # as `tags.apply_tag` decides, on plain values
            pk = (contact.id, tag)
            existing = known.get(pk)
            if existing is None:
                snapshot = snapshots.get(contact.id)
                if snapshot is not None and not when.newer_than(*snapshot):
                    continue  # a newer snapshot already asserted this tag absent
                known[pk] = _Row(present, when.at, when.key, when.event_id)
                new.add(pk)
                if present:
                    changed.add(tag)
                continue
            if not when.newer_than(existing.at, existing.key):
                continue
            if existing.present != present:
                changed.add(tag)
            existing.present, existing.at, existing.key = present, when.at, when.key
            existing.event_id = when.event_id
            dirty.add(pk)

        # As `contact_events._explicit` and `_tags_changed` record it.
        outcome = Outcome()
        member_id = contact.member_id
        contact_key = f"{contact.crm}:{contact.contact_id}"
        if member_id is not None and changed and contact.state == "live":
            bumped[member_id] = bumped.get(member_id, versions[member_id]) + 1
            added, removed = (changed, set()) if present else (set(), changed)
            note_tags(outcome, member_id, contact.crm, contact_key, added, removed)
        status, reason = "processed", None
        if member_id is None:
            status, reason = "skipped", no_member_reason(contact_key)
        finished_at = utcnow()
        number = attempts_of[row.id] + 1
        event_updates.append(
            {
                "b_id": row.id,
                "b_status": status,
                "b_reason": reason,
                "b_effects": outcome.effects(),
                "b_last_error": None,
                "b_processed_at": finished_at,
                "b_attempts": number,
                "b_updated_at": finished_at,
            }
        )
        attempts.append(
            {
                "event_id": row.id,
                "number": number,
                "started_at": started_at,
                "finished_at": finished_at,
            }
        )
        counts = (row.source_slug, row.type, status, row.received_at, finished_at)
        batch.add(row.id, status, counts, outcome.touched)

    def tag_values(pk: tuple[int, str]) -> dict[str, Any]:
        r = known[pk]
        return {
            "contact_id": pk[0],
            "tag": pk[1],
            "present": r.present,
            "asserted_at": r.at,
            "assert_key": r.key,
            "event_id": r.event_id,
        }

    if new:
        _INSERT_TAGS.run(session, [tag_values(pk) for pk in sorted(new)])
    if dirty - new:
        _UPDATE_TAGS.run(
            session,
            [{f"b_{k}": v for k, v in tag_values(pk).items()} for pk in sorted(dirty - new)],
        )
    if bumped:
        now = utcnow()
        _UPDATE_MEMBERS.run(
            session,
            [
                {"b_id": mid, "b_access_version": v, "b_updated_at": now}
                for mid, v in sorted(bumped.items())
            ],
        )
    _UPDATE_EVENTS.run(session, event_updates)
    _INSERT_ATTEMPTS.run(session, attempts)
    return batch
