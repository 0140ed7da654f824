"""The versioned permission cache in the real Redis."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask

from gatehouse.access import cache
from gatehouse.access.rules import Access, parse_rules_text
from gatehouse.extensions import db, redis_client
from gatehouse.models import AccessRules, Contact, ContactTag, Member, utcnow

RULES = """
groups:
  - name: gold
    tags: {any: ["keap:101"]}
    grants: [course:gold]
"""
NOTHING = Access(groups=(), permissions=(), sections=(), landing=None)


def make_member(*tags: str) -> str:
    db.session.add(AccessRules(source_text=RULES, rules=parse_rules_text(RULES)))
    member = Member(email="jane@example.com", status="active", access_version=5)
    db.session.add(member)
    db.session.flush()
    contact = Contact(crm="keap", contact_id="2729", member_id=member.id, state="live")
    db.session.add(contact)
    db.session.flush()
    for tag in tags:
        db.session.add(
            ContactTag(
                contact_id=contact.id, tag=tag, present=True, asserted_at=utcnow(), assert_key="k"
            )
        )
    db.session.commit()
    member_id = member.id
    db.session.rollback()
    return member_id


def cached(member_id: str) -> Any:
    body = cache.read(member_id)
    return json.loads(body) if body is not None else None


def write(member_id: str, version: int, access: Access = NOTHING) -> None:
    body = cache.render(member_id, "active", access, version, utcnow())
    cache.store({member_id: (version, body, access)})


def test_refresh_writes_the_answer_computed_from_the_database(app: Flask) -> None:
    member_id = make_member("101")

    cache.refresh([member_id])

    answer = cached(member_id)
    assert answer["member_id"] == member_id
    assert answer["version"] == 5
    assert answer["groups"] == ["gold"]
    assert answer["permissions"] == ["course:gold"]


def test_a_stale_writer_cannot_overwrite_a_newer_answer(app: Flask) -> None:
    member_id = make_member("101")
    gold = Access(groups=("gold",), permissions=("course:gold",), sections=(), landing=None)
    write(member_id, 7, gold)

    write(member_id, 6)  # a slow worker finishing late with an older state

    answer = cached(member_id)
    assert answer["version"] == 7
    assert answer["permissions"] == ["course:gold"]


def test_a_newer_version_replaces_the_answer(app: Flask) -> None:
    member_id = make_member("101")
    write(member_id, 7)

    write(member_id, 8, Access(groups=("x",), permissions=("p",), sections=(), landing=None))

    assert cached(member_id)["version"] == 8
    assert cached(member_id)["permissions"] == ["p"]


def test_a_cache_miss_recomputes_from_the_database_and_fills_the_cache(app: Flask) -> None:
    member_id = make_member("101")
    assert cached(member_id) is None

    body = cache.read_or_compute(member_id)

    assert body is not None
    assert json.loads(body)["groups"] == ["gold"]
    assert cached(member_id) == json.loads(body)


def test_a_cache_miss_for_an_unknown_member_is_none(app: Flask) -> None:
    assert cache.read_or_compute("0" * 26) is None


def test_touching_a_member_lets_the_refresh_replace_the_old_answer(app: Flask) -> None:
    member_id = make_member("101")
    cache.refresh([member_id])
    member = db.session.get(Member, member_id)
    assert member is not None
    member.status = "revoked"
    member.touch()
    db.session.commit()

    cache.refresh([member_id])

    answer = cached(member_id)
    assert answer["version"] == 6
    assert answer["status"] == "revoked"
    assert answer["permissions"] == []


def test_a_read_while_redis_is_down_answers_from_the_database(
    app: Flask, redis_server: Any
) -> None:
    member_id = make_member("101")
    redis_server.stop()
    try:
        body = cache.read_or_compute(member_id)
    finally:
        redis_server.start()

    assert body is not None
    assert json.loads(body)["permissions"] == ["course:gold"]


def test_the_key_layout_is_a_hash_with_version_and_body(app: Flask) -> None:
    member_id = make_member()
    cache.refresh([member_id])

    stored = redis_client.get(app).hgetall(cache.KEY.format(member_id))

    assert stored[b"v"] == b"5"
    assert json.loads(stored[b"body"])["version"] == 5


def test_one_write_checks_each_answers_version_on_its_own_in_every_slice(
    app: Flask, monkeypatch: Any
) -> None:
    """A batch's answers go to Redis together, in slices: each is still refused alone if
    its key holds a newer version, and the last, short slice is written too."""
    monkeypatch.setattr(cache, "ANSWERS_PER_WRITE", 2)
    members = [f"m{n}" for n in range(5)]
    write("m3", 9)  # a newer answer than the batch's for m3
    gold = Access(groups=("gold",), permissions=("course:gold",), sections=(), landing=None)

    cache.store({m: (4, cache.render(m, "active", gold, 4, utcnow()), gold) for m in members})

    assert [cached(m)["version"] for m in members] == [4, 4, 4, 9, 4]
    assert cached("m3")["permissions"] == []
    assert cached("m4")["permissions"] == ["course:gold"]


def test_a_write_after_redis_forgot_its_scripts_still_lands(app: Flask) -> None:
    """A restarted Redis has no scripts loaded: the write loads its own and goes on."""
    member_id = make_member("101")
    redis_client.get(app).script_flush()

    write(member_id, 3)

    assert cached(member_id)["version"] == 3
