"""Order independence: any permutation of a set of tag events, with repeats, ends in the
same tags and access as processing them in order (domain.md, "Tags and ordering").

The real handlers run through `process_event`, on the real database and Redis cache.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from gatehouse.access import cache
from gatehouse.access.rules import parse_rules_text
from gatehouse.extensions import db
from gatehouse.handlers.jobs import process_event
from gatehouse.handlers.tags import present_tags
from gatehouse.models import AccessRules, Contact, Event, Member, Source, new_id
from tests.helpers import create_source, repo_python

TAGS = ["101", "102", "103", "104"]
RULES = """
sections: [community, courses]
public: {grants: [page:public]}
groups:
  - name: gold
    tags: {any: ["keap:101"], none: ["keap:104"]}
    grants: [course:gold, section:courses]
  - name: community
    tags: {all: ["keap:102", "keap:103"]}
    grants: [section:community]
"""
BASE = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
_contacts = itertools.count()


@dataclass(frozen=True)
class Spec:
    type: str
    second: int  # occurred_at = BASE + second; equal seconds are ordered by external id
    tags: tuple[str, ...] | None = None
    tag: str | None = None


tag_sets = st.lists(st.sampled_from(TAGS), unique=True, max_size=len(TAGS)).map(tuple)
seconds = st.integers(min_value=0, max_value=6)
tag_event = st.one_of(
    st.builds(Spec, type=st.just("contact.tags_set"), second=seconds, tags=tag_sets),
    st.builds(Spec, type=st.just("contact.tag_added"), second=seconds, tag=st.sampled_from(TAGS)),
    st.builds(Spec, type=st.just("contact.tag_removed"), second=seconds, tag=st.sampled_from(TAGS)),
)
provision = st.builds(
    Spec,
    type=st.just("member.provision"),
    second=seconds,
    tags=st.one_of(st.none(), tag_sets),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Spec], list[int]]:
    """A set of events (one provision among them) and a delivery order with repeats."""
    specs = [*draw(st.lists(tag_event, min_size=1, max_size=7)), draw(provision)]
    repeats = draw(st.lists(st.integers(0, len(specs) - 1), max_size=4))
    order = draw(st.permutations(list(range(len(specs))) + repeats))
    return specs, order


def source_id() -> int:
    found = db.session.execute(select(Source.id).where(Source.slug == "bridge")).scalar()
    if found is None:
        create_source("bridge", "standard", crm="keap")
        db.session.add(AccessRules(source_text=RULES, rules=parse_rules_text(RULES)))
        db.session.commit()
        found = db.session.execute(select(Source.id).where(Source.slug == "bridge")).scalar()
    assert found is not None
    return int(found)


def store(specs: list[Spec], contact_id: str) -> list[str]:
    """One inbox row per event, as the receive step would have stored it."""
    sid = source_id()
    ids = []
    for n, spec in enumerate(specs):
        payload: dict[str, Any] = {
            "type": spec.type,
            "contact": {"id": contact_id, "crm": "keap", "email": f"{contact_id}@example.com"},
        }
        if spec.tags is not None:
            payload["tags"] = list(spec.tags)
        if spec.tag is not None:
            payload["tag"] = spec.tag
        event_id = new_id()
        db.session.add(
            Event(
                id=event_id,
                source_id=sid,
                # Unique per run; within a run the tie-break order follows n.
                external_id=f"{contact_id}:msg_{n:02d}",
                type=spec.type,
                occurred_at=BASE + timedelta(seconds=spec.second),
                status="queued",
                payload=payload,
                contact_key=f"keap:{contact_id}",
            )
        )
        ids.append(event_id)
    db.session.commit()
    return ids


def outcome(contact_id: str) -> tuple[list[str], dict[str, Any] | None]:
    """The contact's tags and its member's access answer (without id, version and time)."""
    contact = db.session.execute(
        select(Contact).where(Contact.crm == "keap", Contact.contact_id == contact_id)
    ).scalar_one()
    tags = present_tags(contact)
    member_id = contact.member_id
    db.session.rollback()
    if member_id is None:
        return tags, None
    body = cache.read(member_id)
    assert body is not None, "the cache was not written after processing"
    answer = json.loads(body)
    fresh = json.loads(cache.read_or_compute(member_id) or b"{}")
    db.session.rollback()
    assert fresh == answer  # the cache holds what the database says now
    varying = ("member_id", "version", "computed_at")
    return tags, {k: v for k, v in answer.items() if k not in varying}


def run(specs: list[Spec], order: list[int]) -> tuple[list[str], dict[str, Any] | None]:
    contact_id = f"c{next(_contacts)}"
    ids = store(specs, contact_id)
    for index in order:
        process_event(ids[index])
    return outcome(contact_id)


def in_order(specs: list[Spec]) -> list[int]:
    return sorted(range(len(specs)), key=lambda n: (specs[n].second, f"msg_{n:02d}"))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_any_order_with_repeats_ends_like_in_order_processing(
    app: Flask, scenario: tuple[list[Spec], list[int]]
) -> None:
    specs, order = scenario

    expected = run(specs, in_order(specs))
    actual = run(specs, order)

    assert actual == expected
    assert expected[1] is not None  # the provision always creates the member


def test_a_late_older_snapshot_does_not_undo_a_newer_removal(app: Flask) -> None:
    specs = [
        Spec("member.provision", 0, tags=("101",)),
        Spec("contact.tag_removed", 5, tag="101"),
        Spec("contact.tags_set", 3, tags=("101", "102")),
    ]

    tags, access = run(specs, [0, 1, 2])

    assert tags == ["102"]
    assert access is not None and access["groups"] == []
    assert access["permissions"] == ["page:public"]


def test_an_add_older_than_the_newest_snapshot_changes_nothing(app: Flask) -> None:
    specs = [
        Spec("member.provision", 0),
        Spec("contact.tags_set", 4, tags=("102",)),
        Spec("contact.tag_added", 2, tag="101"),
    ]

    tags, access = run(specs, [0, 1, 2])

    assert tags == ["102"]
    assert access is not None and "course:gold" not in access["permissions"]


def test_tags_asserted_before_the_member_exists_count_once_it_does(app: Flask) -> None:
    specs = [
        Spec("contact.tag_added", 1, tag="101"),
        Spec("member.provision", 2),
    ]

    tags, access = run(specs, [0, 1])

    assert tags == ["101"]
    assert access is not None and access["groups"] == ["gold"]
    first = (
        db.session.execute(
            select(Event.status)
            .where(Event.external_id.endswith(":msg_00"))
            .order_by(Event.id.desc())
        )
        .scalars()
        .first()
    )
    assert first == "skipped"
    assert db.session.execute(select(Member)).scalars().first() is not None


def latest_assertion_oracle(specs: list[Spec]) -> list[str]:
    """domain.md's rule, written independently: each tag follows its newest assertion."""
    present: dict[str, tuple[tuple[int, str], bool]] = {}
    for n, spec in enumerate(specs):
        key = (spec.second, f"msg_{n:02d}")
        if spec.tags is not None:  # a snapshot speaks about every tag of the namespace
            asserted = {t: t in spec.tags for t in TAGS}
        elif spec.tag is not None:
            asserted = {spec.tag: spec.type == "contact.tag_added"}
        else:
            asserted = {}
        for tag, value in asserted.items():
            if tag not in present or present[tag][0] < key:
                present[tag] = (key, value)
    return sorted(tag for tag, (_, value) in present.items() if value)


WORKER = """
import sys
from tests.conftest import make_app
from gatehouse.queue.worker import GatehouseWorker
app = make_app(sys.argv[1], sys.argv[2])
GatehouseWorker(app).work(burst=True, with_scheduler=False, logging_level="WARNING")
"""


def test_two_worker_processes_at_once_end_in_the_latest_assertions(
    app: Flask, database_url: str, redis_server: Any
) -> None:
    import random

    from gatehouse.queue import enqueue_events

    rng = random.Random(20261122)
    specs = [Spec("member.provision", 0, tags=("101",))]
    for second in range(1, 61):
        kind = rng.choice(["contact.tags_set", "contact.tag_added", "contact.tag_removed"])
        if kind == "contact.tags_set":
            specs.append(Spec(kind, second, tags=tuple(rng.sample(TAGS, rng.randint(0, 4)))))
        else:
            specs.append(Spec(kind, second, tag=rng.choice(TAGS)))
    contact_id = f"c{next(_contacts)}"
    ids = store(specs, contact_id)
    order = list(ids)
    rng.shuffle(order)
    assert enqueue_events(order)
    # Redeliveries: the same job id queued again runs again.
    for event_id in rng.sample(ids, 15):
        assert enqueue_events([event_id])

    workers = [
        repo_python("-c", WORKER, database_url, redis_server.url, quiet=False) for _ in range(2)
    ]
    for proc in workers:
        assert proc.wait(120) == 0

    statuses = set(db.session.execute(select(Event.status)).scalars())
    db.session.rollback()
    # Tag events that ran before the provision are skipped, their state kept on the contact.
    assert statuses <= {"processed", "skipped"}
    tags, access = outcome(contact_id)
    assert tags == latest_assertion_oracle(specs)
    assert access is not None
    expected_gold = "101" in tags and "104" not in tags
    assert ("gold" in access["groups"]) == expected_gold
