"""Recompute members whose access changes by itself: a past_due grace period ending.

No event arrives when a grace period ends, so each worker's maintenance tick asks two
places which members are due:

- the Redis sorted set `access.cache.GRACE_KEY`, where every cache write records the
  member's next self-expiry (cheap, exact, but lost with Redis' data);
- the database, at most once a minute: past_due subscriptions whose grace has ended while
  the member's cached answer was computed before that end (covers a Redis restart or a
  restored snapshot). A member with no cached answer needs nothing: a miss is computed fresh.

Due members get a new `access_version` (time passing is an access-relevant change, and a
slower writer still holding the old version can then no longer overwrite the new answer)
and their cache is rewritten. Safe from several workers at once: a Redis lock keeps it to
one at a time, and recomputing twice is harmless.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import redis
from flask import Flask, current_app
from sqlalchemy import select, update

from gatehouse.access import cache
from gatehouse.access.state import active_rules, load_states
from gatehouse.extensions import db, redis_client
from gatehouse.models import Member, Subscription, utcnow

log = logging.getLogger("gatehouse.queue")
LOCK_KEY = "gatehouse:grace-lock"
DB_SCAN_KEY = "gatehouse:grace-db-scan"
DB_SCAN_EVERY = 60  # seconds between database scans (Redis' own record is checked every tick)
CHUNK = 500
LONG_AGO = datetime.min.replace(tzinfo=UTC)

# Drop a member's entry only if it still says "due": a writer may have just recorded a
# later grace end for them, which must be kept.
_REMOVE_IF_DUE = """
local removed = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""


def due_in_redis(client: redis.Redis, now: datetime) -> list[str]:
    raw = client.zrangebyscore(cache.GRACE_KEY, "-inf", now.timestamp())
    return [m.decode() if isinstance(m, bytes) else str(m) for m in raw]


def _computed_at(body: bytes | None) -> datetime | None:
    if body is None:
        return None
    try:
        return datetime.fromisoformat(json.loads(body)["computed_at"].replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError):
        return LONG_AGO  # an unreadable answer is rewritten


def due_in_database(client: redis.Redis, now: datetime) -> list[str]:
    """Members with a grace period ended by `now` whose cached answer predates that end."""
    days = active_rules().past_due_days
    ended_by: dict[str, datetime] = defaultdict(lambda: LONG_AGO)
    for member_id, since in db.session.execute(
        select(Subscription.member_id, Subscription.past_due_since).where(
            Subscription.status == "past_due",
            Subscription.member_id.is_not(None),
            Subscription.past_due_since <= now - timedelta(days=days),
        )
    ):
        if since is None:
            continue
        end = since + timedelta(days=days)
        ended_by[str(member_id)] = max(ended_by[str(member_id)], end)
    db.session.rollback()
    due: list[str] = []
    members = sorted(ended_by)
    for i in range(0, len(members), CHUNK):
        chunk = members[i : i + CHUNK]
        with client.pipeline(transaction=False) as pipe:
            for member_id in chunk:
                pipe.hget(cache.KEY.format(member_id), "body")
            bodies = pipe.execute()
        for member_id, body in zip(chunk, bodies, strict=True):
            computed = _computed_at(body)
            if computed is not None and computed < ended_by[member_id]:
                due.append(member_id)
    return due


def recompute(member_ids: Iterable[str], now: datetime | None = None) -> int:
    """New version and a freshly computed cache answer for these members."""
    ids = sorted(set(member_ids))
    done = 0
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        db.session.execute(
            update(Member)
            .where(Member.id.in_(chunk))
            .values(access_version=Member.access_version + 1)
        )
        db.session.commit()
        answers = cache.compute(load_states(chunk), now)
        db.session.rollback()
        if answers:
            cache.store(answers)
        done += len(answers)
    return done


def recompute_due(app: Flask | None = None, *, now: datetime | None = None) -> list[str]:
    """Recompute every member whose grace period has ended by `now`; returns their ids.

    `now` exists so tests and tools can ask "as of then" without touching the clock.
    """
    app = app or current_app
    client = redis_client.get(app)
    lock = client.lock(LOCK_KEY, timeout=300, blocking=False)
    if not lock.acquire():
        return []
    try:
        moment = now or utcnow()
        due = set(due_in_redis(client, moment))
        # Scanning the database is the fallback: at most once a minute, or at once when the
        # key is gone because Redis lost its data.
        if now is not None or client.set(DB_SCAN_KEY, "1", nx=True, ex=DB_SCAN_EVERY):
            due.update(due_in_database(client, moment))
        if not due:
            return []
        recompute(due, now)
        script = client.register_script(_REMOVE_IF_DUE)
        ordered = sorted(due)
        for i in range(0, len(ordered), CHUNK):
            script(keys=[cache.GRACE_KEY], args=[moment.timestamp(), *ordered[i : i + CHUNK]])
    finally:
        try:
            lock.release()
        except redis.RedisError:
            pass
        db.session.remove()
    log.info("grace.recomputed", extra={"members": len(due)})
    return sorted(due)
