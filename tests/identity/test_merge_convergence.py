"""Merges interleaved with tag and genpass events, in any order, end in the same place."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update

from gatehouse.extensions import db, redis_client
from gatehouse.handlers.tags import present_tags
from gatehouse.models import Contact, ContactTag, Event, Member, Subscription, TagSnapshot
from tests.identity.common import (
    Crm,
    access,
    live_members,
    load_rules,
    merge,
    provision,
    tag,
    tags_set,
)

# Three CRM contacts of one person, merged 3 -> 2 -> 1 while their events are in flight.
EVENTS: dict[str, dict[str, Any]] = {
    "p1": provision("1", 0, "one@example.com", tags=["101"]),
    "p2": provision("2", 1, "two@example.com"),
    "s3": tags_set("3", ["999", "300"], 2),
    "a2": tag("2", "205", 3),
    "r1": tag("1", "101", 4, present=False),
    "a2b": tag("2", "101", 5),  # newer than r1: 101 ends present
    "p3": provision("3", 6, "three@example.com"),
    "m23": merge("2", ["3"], 9),
    "m12": merge("1", ["2"], 10),
    "r3": tag("3", "999", 12, present=False),  # names an id merged away by then
}


def reset_database() -> None:
    db.session.rollback()
    db.session.execute(update(Contact).values(merged_into_id=None, member_id=None))
    db.session.execute(update(Member).values(merged_into_id=None))
    for model in (ContactTag, TagSnapshot, Subscription, Contact, Member, Event):
        db.session.execute(delete(model))
    db.session.commit()
    redis_client.get().flushdb()


def snapshot_invariant_holds() -> bool:
    for snap in db.session.execute(select(TagSnapshot)).scalars():
        rows = db.session.execute(
            select(ContactTag).where(ContactTag.contact_id == snap.contact_id)
        ).scalars()
        if any((r.asserted_at, r.assert_key) < (snap.asserted_at, snap.assert_key) for r in rows):
            return False
    return True


def outcome() -> list[tuple[Any, ...]]:
    db.session.expire_all()
    out = []
    for member in live_members():
        live = [c for c in member.contacts if c.state == "live"]
        answer = access(member.id)
        assert answer["version"] == member.access_version, "cache is behind the member"
        out.append(
            (
                sorted(c.key for c in live),
                member.email,
                member.status,
                sorted(f"{c.crm}:{t}" for c in live for t in present_tags(c)),
                answer["groups"],
                answer["permissions"],
            )
        )
    for gone in db.session.execute(select(Member).where(Member.status == "merged")).scalars():
        assert access(gone.id)["permissions"] == []
    return out


EXPECTED = [
    (
        ["hubspot:1"],
        "three@example.com",
        "active",
        ["hubspot:101", "hubspot:205", "hubspot:300"],
        ["gold", "community"],
        ["course:gold", "page:public", "section:community", "section:courses"],
    )
]


def test_merges_and_tag_events_converge_in_any_order(app: Flask, client: FlaskClient) -> None:
    load_rules()
    crm = Crm(app, client)

    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        order=st.permutations(sorted(EVENTS)),
        batches=st.lists(st.integers(min_value=1, max_value=len(EVENTS)), max_size=2),
        repeats=st.sets(st.sampled_from(sorted(EVENTS)), max_size=3),
    )
    def run(order: list[str], batches: list[int], repeats: set[str]) -> None:
        reset_database()
        cuts = set(batches)
        for i, name in enumerate(order, start=1):
            crm.post(EVENTS[name], msg_id=name)
            if i in cuts:
                crm.run()  # some events processed before others are even received
        if not cuts or max(cuts) < len(order):
            crm.run()
        # A redelivery with a new id (a sender retrying after a timeout) changes nothing.
        for name in sorted(repeats):
            crm.post(EVENTS[name], msg_id=f"{name}-again")
        if repeats:
            crm.run()
        assert snapshot_invariant_holds()
        assert outcome() == EXPECTED

    run()
