"""The permission cache in Redis. Only this module writes it.

Each member's answer is stored with the member's `access_version`; a write with a lower
version than the stored one is refused inside Redis, so a slow, stale writer can never
overwrite a newer answer and a reader never sees an older version after a newer one.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from datetime import datetime

import redis
from flask import Flask, current_app

from gatehouse import metrics
from gatehouse.access.rules import Access, evaluate
from gatehouse.access.state import LoadedMember, active_rules, load_states
from gatehouse.extensions import redis_client
from gatehouse.models import utcnow

KEY = "gatehouse:access:{}"
GRACE_KEY = "gatehouse:access-expiry"  # sorted set: member id -> when its answer changes by itself

_WRITE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'v')
if current and tonumber(current) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'body', ARGV[2])
return 1
"""


def _script(app: Flask) -> redis.commands.core.Script:
    script = app.extensions.get("gatehouse.cache_script")
    if script is None:
        script = redis_client.get(app).register_script(_WRITE_IF_NEWER)
        app.extensions["gatehouse.cache_script"] = script
    return script


def render(member_id: str, status: str, access: Access, version: int, now: datetime) -> bytes:
    answer = {
        "member_id": member_id,
        "status": status,
        "groups": list(access.groups),
        "permissions": list(access.permissions),
        "sections": list(access.sections),
        "landing": access.landing,
        "version": version,
        "computed_at": now.isoformat().replace("+00:00", "Z"),
    }
    return json.dumps(answer, separators=(",", ":")).encode()


def compute(
    loaded: Sequence[LoadedMember], now: datetime | None = None
) -> dict[str, tuple[int, bytes, Access]]:
    now = now or utcnow()
    rules = active_rules()
    out = {}
    for member in loaded:
        access = evaluate(rules, member.state, now)
        out[member.id] = (
            member.version,
            render(member.id, member.state.status, access, member.version, now),
            access,
        )
    return out


def store(answers: dict[str, tuple[int, bytes, Access]], app: Flask | None = None) -> None:
    """Write answers in one pipeline; raises redis errors so the caller's job retries."""
    app = app or current_app
    script = _script(app)
    client = redis_client.get(app)
    with client.pipeline(transaction=False) as pipe:
        for member_id, (version, body, access) in answers.items():
            script(keys=[KEY.format(member_id)], args=[version, body], client=pipe)
            if access.expires_at is not None:
                pipe.zadd(GRACE_KEY, {member_id: access.expires_at.timestamp()})
        pipe.execute()


def refresh(member_ids: Sequence[str]) -> dict[str, tuple[int, bytes, Access]]:
    """Recompute from the database and write the cache for these members."""
    answers = compute(load_states(list(dict.fromkeys(member_ids))))
    if answers:
        store(answers)
    return answers


def read(member_id: str, app: Flask | None = None) -> bytes | None:
    """The cached answer's bytes as stored, or None; raises redis errors."""
    app = app or current_app
    reader: _Reader | None = app.extensions.get("gatehouse.cache_reader")
    if reader is None:
        reader = app.extensions["gatehouse.cache_reader"] = _Reader(redis_client.get(app))
    return reader.body(member_id)


class _Reader:
    """The hot read on a connection of its own, one per process, outside the pool.

    Every page view of a membership site asks this. Through `Redis.hget` a read checks a
    connection out of the pool and back in and goes through the retry and command-parsing
    layers: more client CPU than the round trip's own. Same connection settings (timeouts,
    auth, database) as the pool's; a connection error drops the connection (the next read
    opens a new one) and is raised, so callers fall back as before.
    """

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self.connection_class = pool.connection_class
        self.connection_kwargs = dict(pool.connection_kwargs)
        self.local = threading.local()  # one per thread too (gthread, tests)

    def body(self, member_id: str) -> bytes | None:
        local = self.local
        connection = getattr(local, "connection", None)
        if connection is None or local.pid != os.getpid():  # a fork gets its own
            connection = local.connection = self.connection_class(**self.connection_kwargs)
            local.pid = os.getpid()
        try:
            connection.send_command("HGET", KEY.format(member_id), "body")
            found: bytes | None = connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            connection.disconnect()
            local.connection = None
            raise
        return found


def read_or_compute(member_id: str) -> bytes | None:
    """The cached answer, or on a miss the answer recomputed from the database (and cached)."""
    try:
        cached = read(member_id)
    except redis.RedisError:
        cached = None
    metrics.count_cache(hit=cached is not None)
    if cached is not None:
        return cached
    answers = compute(load_states([member_id]))
    if member_id not in answers:
        return None
    try:
        store(answers)
    except redis.RedisError:
        pass  # the database answer is still right; the cache fills on a later read
    return answers[member_id][1]
