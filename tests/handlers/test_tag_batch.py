"""`handlers.tag_batch` stands in for the ORM handlers of single-tag events: on any state and
any batch of them it must leave exactly the rows, versions, outcomes and attempts the
handlers (`contact_events.tag_added`/`tag_removed`) leave, and step aside, writing nothing,
for what it does not handle.

Each example builds the same state twice (explicit ids), applies the batch once each way
through `jobs.process_events`, and compares everything but wall-clock times.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from gatehouse.extensions import db, takes_turns
from gatehouse.handlers import dispatch, jobs, tag_batch
from gatehouse.handlers.jobs import process_events
from gatehouse.handlers.outcome import BatchOutcome
from gatehouse.models import (
    Contact,
    ContactTag,
    Event,
    EventAttempt,
    Member,
    Source,
    TagSnapshot,
)
from tests.helpers import create_source, refusing_inserts

BASE = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
TAGS = ["101", "102", "103"]
# Tie-breaks drawn from the same names as the events' external ids, so equal instants
# are decided by the key, as they are for real.
KEYS = [f"m{n:02d}" for n in range(10)]
FIRST_CONTACT = 1000  # explicit ids clear of PostgreSQL's sequence, which a fallback uses


@dataclass(frozen=True)
class Row:
    tag: str
    present: bool
    second: int
    key: str


@dataclass(frozen=True)
class ContactSpec:
    member: int | None  # index into the members; two contacts may share one
    state: str
    rows: tuple[Row, ...]
    snapshot: tuple[int, str] | None


@dataclass(frozen=True)
class EventSpec:
    added: bool
    contact: int
    tags: tuple[str, ...]
    as_list: bool  # `tags: [...]` rather than `tag: ...`
    second: int


# Few instants and keys: ties with a row (a batch re-run after a crash meets its own
# assertions) come up often.
seconds = st.integers(0, 3)
rows = st.lists(
    st.builds(Row, st.sampled_from(TAGS), st.booleans(), seconds, st.sampled_from(KEYS[:4])),
    unique_by=lambda r: r.tag,
    max_size=len(TAGS),
).map(tuple)
contact_specs = st.builds(
    ContactSpec,
    member=st.one_of(st.none(), st.integers(0, 1)),
    state=st.sampled_from(["live", "live", "deleted"]),
    rows=rows,
    snapshot=st.one_of(st.none(), st.tuples(seconds, st.sampled_from(KEYS))),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[ContactSpec], list[EventSpec], list[int]]:
    contacts = draw(st.lists(contact_specs, min_size=1, max_size=4))
    event = st.builds(
        EventSpec,
        added=st.booleans(),
        contact=st.integers(0, len(contacts) - 1),
        tags=st.lists(st.sampled_from(TAGS), min_size=1, max_size=3).map(tuple),
        as_list=st.booleans(),
        second=seconds,
    )
    events = draw(st.lists(event, min_size=1, max_size=8))
    attempts = draw(st.lists(st.integers(0, 2), min_size=len(events), max_size=len(events)))
    return contacts, events, attempts


def source_id() -> int:
    found = db.session.execute(select(Source.id).where(Source.slug == "bridge")).scalar()
    if found is None:
        create_source("bridge", "standard", crm="keap")
        found = db.session.execute(select(Source.id).where(Source.slug == "bridge")).scalar()
    assert found is not None
    return int(found)


def reset() -> None:
    for model in (EventAttempt, Event, ContactTag, TagSnapshot, Contact, Member):
        db.session.execute(delete(model))
    db.session.commit()


def build(contacts: list[ContactSpec], events: list[EventSpec], attempts: list[int]) -> list[str]:
    """The state and the queued batch, with the same ids every time; returns the event ids
    in queue order."""
    reset()
    sid = source_id()
    for n in range(2):
        db.session.add(Member(id=f"member{n}", email=f"{n}@example.com", access_version=n + 1))
    db.session.flush()
    # Another CRM's contact with a named id: the batch must leave it alone.
    db.session.add(Contact(id=FIRST_CONTACT - 1, crm="hubspot", contact_id="c0"))
    for n, spec in enumerate(contacts):
        cid = FIRST_CONTACT + n
        db.session.add(
            Contact(
                id=cid,
                crm="keap",
                contact_id=f"c{n}",
                member_id=None if spec.member is None else f"member{spec.member}",
                state=spec.state,
            )
        )
        db.session.flush()
        snapshot = spec.snapshot
        if snapshot is not None:
            db.session.add(
                TagSnapshot(
                    contact_id=cid,
                    asserted_at=BASE + timedelta(seconds=snapshot[0]),
                    assert_key=snapshot[1],
                    tags=[],
                )
            )
        for row in spec.rows:
            at = BASE + timedelta(seconds=row.second)
            if snapshot is not None and (at, row.key) < (
                BASE + timedelta(seconds=snapshot[0]),
                snapshot[1],
            ):
                continue  # the invariant: no row is older than its contact's snapshot
            db.session.add(
                ContactTag(
                    contact_id=cid,
                    tag=row.tag,
                    present=row.present,
                    asserted_at=at,
                    assert_key=row.key,
                    event_id=None,
                )
            )
    ids = []
    for n, (spec, tries) in enumerate(zip(events, attempts, strict=True)):
        kind = "contact.tag_added" if spec.added else "contact.tag_removed"
        payload: dict[str, Any] = {
            "type": kind,
            "contact": {"crm": "keap", "id": f"c{spec.contact}"},
        }
        if spec.as_list:
            payload["tags"] = list(spec.tags)
        else:
            payload["tag"] = spec.tags[0]
        event_id = f"event{n:02d}"
        db.session.add(
            Event(
                id=event_id,
                source_id=sid,
                external_id=KEYS[n] if n < len(KEYS) else f"x{n}",
                type=kind,
                occurred_at=BASE + timedelta(seconds=spec.second),
                status="queued",
                attempts=tries,
                payload=payload,
                contact_key=f"keap:c{spec.contact}",
            )
        )
        ids.append(event_id)
    db.session.commit()
    return ids


def world() -> dict[str, Any]:
    """Every row the batch may write, without wall-clock times (each run has its own)."""
    session = db.session
    found = {
        "tags": sorted(
            tuple(r)
            for r in session.execute(
                select(
                    ContactTag.contact_id,
                    ContactTag.tag,
                    ContactTag.present,
                    ContactTag.asserted_at,
                    ContactTag.assert_key,
                    ContactTag.event_id,
                )
            )
        ),
        "snapshots": sorted(
            tuple(r)
            for r in session.execute(
                select(TagSnapshot.contact_id, TagSnapshot.asserted_at, TagSnapshot.assert_key)
            )
        ),
        "members": sorted(
            tuple(r) for r in session.execute(select(Member.id, Member.access_version))
        ),
        "contacts": sorted(
            tuple(r)
            for r in session.execute(
                select(
                    Contact.id, Contact.crm, Contact.contact_id, Contact.member_id, Contact.state
                )
            )
        ),
        "events": sorted(
            (
                e.id,
                e.status,
                e.reason,
                json.dumps(e.effects, sort_keys=True),
                e.last_error,
                e.attempts,
                e.processed_at is not None,
            )
            for e in session.execute(select(Event)).scalars()
        ),
        "attempts": sorted(
            (a.event_id, a.number, a.started_at is not None, a.finished_at is not None, a.error)
            for a in session.execute(select(EventAttempt)).scalars()
        ),
    }
    session.rollback()
    return found


@pytest.fixture
def lean_runs(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the lean path applied each batch it was asked to (True) or stepped aside,
    in `tag_batch.prepare` or in `tag_batch.apply`."""
    runs: list[bool] = []
    prepare, apply = tag_batch.prepare, tag_batch.apply

    def prepare_spy(*args: Any, **kwargs: Any) -> tag_batch.Prepared | None:
        prepared = prepare(*args, **kwargs)
        if prepared is None:
            runs.append(False)
        return prepared

    def apply_spy(*args: Any, **kwargs: Any) -> BatchOutcome | None:
        applied = apply(*args, **kwargs)
        runs.append(applied is not None)
        return applied

    monkeypatch.setattr(tag_batch, "prepare", prepare_spy)
    monkeypatch.setattr(tag_batch, "apply", apply_spy)
    return runs


def both_ways(
    contacts: list[ContactSpec], events: list[EventSpec], attempts: list[int]
) -> tuple[tuple[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]:
    ids = build(contacts, events, attempts)
    lean = process_events(ids, lean=True)
    lean_world = world()
    ids = build(contacts, events, attempts)
    handlers = process_events(ids, lean=False)
    return (lean, lean_world), (handlers, world())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_a_single_tag_batch_ends_exactly_as_the_handlers_leave_it(
    app: Flask,
    lean_runs: list[bool],
    scenario: tuple[list[ContactSpec], list[EventSpec], list[int]],
) -> None:
    lean_runs.clear()
    lean, handlers = both_ways(*scenario)

    assert lean_runs == [True]  # the lean path applied the batch; the other run did not ask
    assert lean == handlers


def scenario_with(**payload: Any) -> list[str]:
    contacts = [ContactSpec(member=0, state="live", rows=(), snapshot=None)]
    ids = build(contacts, [EventSpec(True, 0, ("101",), False, 1)], [0])
    event = db.session.get(Event, ids[0])
    assert event is not None
    event.payload = {**event.payload, **payload}
    db.session.commit()
    return ids


@pytest.mark.parametrize(
    "case",
    ["unknown contact", "merged contact", "profile stated", "mixed batch", "other handler"],
)
def test_the_lean_path_steps_aside_for_what_it_does_not_handle(
    app: Flask, lean_runs: list[bool], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    contact_as_sent = {
        "unknown contact": {"crm": "keap", "id": "new"},
        "profile stated": {"crm": "keap", "id": "c0", "email": "new@example.com"},
    }
    ids = scenario_with(**({"contact": contact_as_sent[case]} if case in contact_as_sent else {}))
    if case == "merged contact":
        survivor = Contact(id=FIRST_CONTACT + 50, crm="keap", contact_id="survivor")
        db.session.add(survivor)
        db.session.flush()
        merged = db.session.get(Contact, FIRST_CONTACT)
        assert merged is not None
        merged.state, merged.merged_into_id = "merged", survivor.id
        db.session.commit()
    elif case == "mixed batch":
        db.session.add(
            Event(
                id="event99",
                source_id=source_id(),
                external_id="snapshot",
                type="contact.tags_set",
                occurred_at=BASE,
                status="queued",
                payload={"type": "contact.tags_set", "contact": {"crm": "keap", "id": "c0"}},
                contact_key="keap:c0",
            )
        )
        db.session.commit()
        ids = [*ids, "event99"]
    elif case == "other handler":
        monkeypatch.setitem(dispatch.HANDLERS, "contact.tag_added", lambda *_args: None)

    results = process_events(ids)

    assert lean_runs == [False]
    # Applied the ordinary way all the same (the stand-in handler applies nothing; the
    # new contact and the survivor have no member).
    skipped = case in ("unknown contact", "merged contact")
    assert results[ids[0]]["status"] == ("skipped" if skipped else "processed")
    state = world()
    if case == "other handler":
        assert state["tags"] == []
    else:
        assert [(tag, present) for _cid, tag, present, *_ in state["tags"]] == [("101", True)]
    if case == "unknown contact":
        assert ("keap", "new") in {(crm, cid) for _id, crm, cid, *_ in state["contacts"]}
    if case == "profile stated":
        contact = db.session.get(Contact, FIRST_CONTACT)
        assert contact is not None and contact.email == "new@example.com"


def test_an_id_the_database_lacks_is_reported_missing_beside_a_lean_batch(
    app: Flask, lean_runs: list[bool]
) -> None:
    ids = scenario_with()
    gone = "0" * 26

    results = process_events([*ids, gone])

    assert lean_runs == [True]
    assert results[gone] == {"event": gone, "status": "missing"}
    assert results[ids[0]] == {"event": ids[0], "status": "processed", "members": ["member0"]}


def test_a_write_the_database_refuses_rolls_the_whole_lean_batch_back(
    app: Flask, lean_runs: list[bool]
) -> None:
    """The attempts' insert is the last of the batch's writes: its refusal must come out
    of `process_events` (the worker then runs each job alone) and leave nothing of the
    batch written, the tags, versions and event rows before it included."""
    ids = scenario_with()
    before = world()

    with refusing_inserts("event_attempts"), pytest.raises(Exception, match="disk I/O error"):
        process_events(ids)

    assert lean_runs == []  # taken by the lean path (it would record False), then raised
    assert world() == before
    assert process_events(ids)[ids[0]]["status"] == "processed"  # nothing left half-done


def test_the_tags_read_returns_exactly_the_named_pairs_in_slices(app: Flask) -> None:
    reset()
    first, second = FIRST_CONTACT, FIRST_CONTACT + 1
    for cid in (first, second):
        db.session.add(Contact(id=cid, crm="keap", contact_id=f"c{cid}"))
    db.session.flush()
    for cid in (first, second):
        for n in range(300):
            at = BASE + timedelta(seconds=n)
            db.session.add(
                ContactTag(
                    contact_id=cid, tag=f"t{n}", present=n % 2 == 0, asserted_at=at, assert_key="k"
                )
            )
    db.session.commit()
    # More pairs than one statement reads; the second contact shares every tag named for
    # the first, and none of those rows may come back.
    pairs = [(first, f"t{n}") for n in range(300)] + [(second, "t7"), (second, "absent")]

    known = tag_batch._read_tags(pairs)

    assert set(known) == {(first, f"t{n}") for n in range(300)} | {(second, "t7")}
    assert known[(second, "t7")] == tag_batch._Row(False, BASE + timedelta(seconds=7), "k", None)
    assert known[(first, "t0")].present is True


@contextmanager
def write_turn_now() -> Iterator[None]:
    """The write turn (SQLite files), taken without waiting, as another process takes it:
    raises BlockingIOError if it is held."""
    if not takes_turns(db.engine):
        yield
        return
    fd = os.open(f"{db.engine.url.database}.write-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def test_the_lean_paths_event_read_leaves_the_database_writable(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite `prepare` runs before the batch's write turn and transaction: a web insert
    arriving meanwhile is not kept waiting by it. (On PostgreSQL, which has no turn, it
    reads inside the batch's transaction, and takes no lock there either.)"""
    ids = build(
        [ContactSpec(member=0, state="live", rows=(), snapshot=None)],
        [EventSpec(True, 0, ("101",), False, 1), EventSpec(False, 0, ("102",), False, 2)],
        [0, 0],
    )
    prepare = tag_batch.prepare
    writable: list[bool] = []

    def prepare_then_write_elsewhere(*args: Any, **kwargs: Any) -> tag_batch.Prepared | None:
        prepared = prepare(*args, **kwargs)
        # Another connection writes, as a web insert would, after `prepare`'s read and
        # before the batch takes its turn: a write lock or turn still held here fails it
        # (no wait allowed).
        with write_turn_now(), db.engine.connect() as other:
            if other.dialect.name == "sqlite":
                other.exec_driver_sql("PRAGMA busy_timeout=0")
            other.execute(
                Event.__table__.update().where(Event.id == ids[1]).values(reason="touched")
            )
            other.commit()
        writable.append(True)
        return prepared

    monkeypatch.setattr(tag_batch, "prepare", prepare_then_write_elsewhere)
    in_transaction_at_the_turn: list[bool] = []
    turn = jobs.write_turn

    @contextmanager
    def watched_turn(engine: Any) -> Iterator[None]:
        in_transaction_at_the_turn.append(db.session().in_transaction())
        with turn(engine):
            yield

    monkeypatch.setattr(jobs, "write_turn", watched_turn)

    results = process_events(ids)

    assert writable == [True]
    assert [results[i]["status"] for i in ids] == ["processed", "processed"]
    # SQLite: the read ended before the turn (the turn's BEGIN IMMEDIATE comes after it).
    # PostgreSQL: the read is the batch transaction's first statement, one transaction.
    assert in_transaction_at_the_turn == [not takes_turns(db.engine)]


def test_an_event_deleted_between_the_read_and_the_write_is_reported_missing(
    app: Flask, lean_runs: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = build(
        [ContactSpec(member=0, state="live", rows=(), snapshot=None)],
        [EventSpec(True, 0, ("101",), False, 1), EventSpec(True, 0, ("102",), False, 2)],
        [0, 0],
    )
    prepare = tag_batch.prepare

    def prepare_then_delete(*args: Any, **kwargs: Any) -> tag_batch.Prepared | None:
        prepared = prepare(*args, **kwargs)
        with db.engine.begin() as other:
            other.execute(delete(Event).where(Event.id == ids[1]))
        return prepared

    monkeypatch.setattr(tag_batch, "prepare", prepare_then_delete)

    results = process_events(ids)

    assert lean_runs == [True]
    assert results[ids[1]] == {"event": ids[1], "status": "missing"}
    assert results[ids[0]] == {"event": ids[0], "status": "processed", "members": ["member0"]}
    assert [(tag, present) for _cid, tag, present, *_ in world()["tags"]] == [("101", True)]
