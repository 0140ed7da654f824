"""What a batch preloads: every tag row of a contact only when one of its events may read
them all; single-tag events read their own tags' rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, select

from gatehouse.extensions import db
from gatehouse.handlers import preload
from gatehouse.handlers.jobs import _contact_keys
from gatehouse.handlers.outcome import Assertion
from gatehouse.handlers.tags import apply_snapshot, apply_tag
from gatehouse.models import Contact, ContactTag, Event

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _event(kind: str, contact_id: str, **payload: Any) -> Event:
    return Event(
        type=kind, payload={"type": kind, "contact": {"crm": "keap", "id": contact_id}, **payload}
    )


def test_the_batch_asks_for_the_named_tags_of_single_tag_events_and_for_every_row_otherwise(
    app: Flask,
) -> None:
    events = [
        _event("contact.tag_added", "1", tag="101"),
        _event("contact.tag_removed", "1", tag="102"),
        _event("contact.tag_added", "2", tags=["103", "104"]),
        _event("contact.tag_added", "3", tag="101"),
        _event("contact.tags_set", "3", tags=["105"]),  # a snapshot: every row of contact 3
        _event("contact.tag_removed", "4", tags=[7]),  # not tag names: read everything
        _event("member.provision", "5"),
    ]
    assert _contact_keys(events) == {
        ("keap", "1"): {"101", "102"},
        ("keap", "2"): {"103", "104"},
        ("keap", "3"): None,
        ("keap", "4"): None,
        ("keap", "5"): None,
    }
    # The order of a contact's events does not matter.
    assert _contact_keys(events[3:5][::-1])[("keap", "3")] is None


def _contact_with_tags(contact_id: str, tags: dict[str, bool]) -> int:
    contact = Contact(crm="keap", contact_id=contact_id)
    db.session.add(contact)
    db.session.flush()
    for tag, present in tags.items():
        db.session.add(
            ContactTag(
                contact_id=contact.id, tag=tag, present=present, asserted_at=T0, assert_key="a"
            )
        )
    db.session.commit()
    return contact.id


def _rows(contact_id: int) -> dict[str, bool]:
    found = db.session.execute(
        select(ContactTag.tag, ContactTag.present).where(ContactTag.contact_id == contact_id)
    )
    return {tag: present for tag, present in found}


def test_single_tag_events_load_only_their_own_tags_rows(app: Flask) -> None:
    cid = _contact_with_tags("71", {"101": True, "102": True, "103": False, "104": True})
    every = _contact_with_tags("72", {"101": True, "102": False})
    with preload.preloaded({("keap", "71"): {"102", "105"}, ("keap", "72"): None}) as pre:
        assert set(pre.tags[cid]) == {"102"}  # 105 has no row: settled as absent, no query
        assert pre.rows_for(cid, "102") is pre.tags[cid]
        assert pre.rows_for(cid, "105") is pre.tags[cid]
        assert pre.rows_for(cid, "101") is None  # not loaded: ask the database
        assert pre.rows_for(cid) is None
        assert set(pre.tags[every]) == {"101", "102"}
        assert pre.rows_for(every) is pre.tags[every]
        contact = pre.contacts[("keap", "71")]
        # A named tag without a row becomes a pending row the next event of the batch sees.
        when = Assertion(at=T0 + timedelta(seconds=1), key="b", event_id=None)
        assert apply_tag(contact, "105", True, when)
        assert pre.tags[cid]["105"].present
        # A tag the batch did not name is read from the database.
        assert not apply_tag(contact, "101", True, when)
        db.session.commit()
    assert _rows(cid) == {"101": True, "102": True, "103": False, "104": True, "105": True}


def test_a_snapshot_on_a_contact_loaded_for_some_tags_reads_every_row_first(app: Flask) -> None:
    cid = _contact_with_tags("73", {"101": True, "102": True})
    with preload.preloaded({("keap", "73"): {"103"}}) as pre:
        contact = pre.contacts[("keap", "73")]
        # A pending row first, then a newer snapshot: it must see (not duplicate) that row
        # and the rows that were not loaded.
        assert apply_tag(contact, "103", True, Assertion(T0 + timedelta(seconds=1), "b", None))
        added, removed = apply_snapshot(
            contact, ["101"], Assertion(T0 + timedelta(seconds=2), "c", None)
        )
        assert (added, removed) == (set(), {"102", "103"})
        assert pre.rows_for(cid) is not None  # every row is known now
        assert set(pre.tags[cid]) == {"101", "102", "103"}
        # A later, newer add of a tag the batch never named uses the loaded rows.
        assert apply_tag(contact, "102", True, Assertion(T0 + timedelta(seconds=3), "d", None))
        db.session.commit()
    assert _rows(cid) == {"101": True, "102": True, "103": False}


def test_only_the_named_contacts_and_tag_rows_are_loaded_when_names_cross(app: Flask) -> None:
    """The contacts are found by crm IN and id IN, the tag rows by contact IN and tag IN:
    what matches across two names is left out."""
    ids = {}
    for crm in ("keap", "hubspot"):
        for number in ("81", "82"):
            contact = Contact(crm=crm, contact_id=number)
            db.session.add(contact)
            db.session.flush()
            ids[(crm, number)] = contact.id
            for tag in ("101", "102"):
                db.session.add(
                    ContactTag(
                        contact_id=contact.id, tag=tag, present=True, asserted_at=T0, assert_key="a"
                    )
                )
    db.session.commit()
    wanted: dict[tuple[str, str], set[str] | None] = {
        ("keap", "81"): {"101"},
        ("hubspot", "82"): {"102"},
    }
    with preload.preloaded(wanted) as pre:
        assert set(pre.contacts) == set(wanted)
        assert set(pre.tags) == {ids[("keap", "81")], ids[("hubspot", "82")]}
        assert set(pre.tags[ids[("keap", "81")]]) == {"101"}
        assert set(pre.tags[ids[("hubspot", "82")]]) == {"102"}
        db.session.rollback()


def test_on_sqlite_the_preload_searches_indexes_and_never_scans_a_table(app: Flask) -> None:
    """SQLite answers a row-value IN, `(a, b) IN (VALUES ...)`, with a scan of the whole
    table: on a site with 100,000 contacts, a scan per batch inside the write turn."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's planner")
    _contact_with_tags("91", {"101": True})
    _contact_with_tags("92", {"101": True})
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, params))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        with preload.preloaded({("keap", "91"): {"101"}, ("keap", "92"): None}):
            db.session.rollback()
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert len(statements) == 3  # contacts, tag rows, snapshots (no member is linked)
    with db.engine.connect() as connection:
        for statement, params in statements:
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).all()
            details = [row[-1] for row in plan]
            assert not [d for d in details if d.startswith("SCAN ")], (statement, details)
