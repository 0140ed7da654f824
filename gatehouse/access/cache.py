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
from typing import Any

import redis
from flask import Flask, current_app
from redis.connection import Connection

from gatehouse import metrics
from gatehouse.access.rules import Access, evaluate
from gatehouse.access.state import LoadedMember, active_rules, load_states
from gatehouse.extensions import begin_read_only, db, redis_client
from gatehouse.models import utcnow

KEY = "gatehouse:access:{}"
GRACE_KEY = "gatehouse:access-expiry"  # sorted set: member id -> when its answer changes by itself

# Every answer of a batch in one call: KEYS are the members' keys, ARGV their version and
# body in turn. Each is written unless the key holds a higher version.
_WRITE_IF_NEWER = """
for i, key in ipairs(KEYS) do
  local version = ARGV[2 * i - 1]
  local current = redis.call('HGET', key, 'v')
  if not current or tonumber(current) <= tonumber(version) then
    redis.call('HSET', key, 'v', version, 'body', ARGV[2 * i])
  end
end
"""
# Answers per call: a script holds Redis for its whole run (a few µs an answer), so a
# 100,000-member recompute goes in slices.
ANSWERS_PER_WRITE = 500


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
    """Write answers, one script call per ANSWERS_PER_WRITE; raises redis errors so the
    caller's job retries.

    One call for a worker's batch, not a script call per answer in a pipeline: redis-py
    also asks SCRIPT EXISTS before each pipeline that runs a script (a round trip more),
    and the per-call packing and Redis's own per-call work were most of the 2.3 ms a batch
    of 50 spent here (docs/benchmarks.md)."""
    app = app or current_app
    script = _script(app)
    items = list(answers.items())
    for start in range(0, len(items), ANSWERS_PER_WRITE):
        chunk = items[start : start + ANSWERS_PER_WRITE]
        args: list[Any] = []
        for _member_id, (version, body, _access) in chunk:
            args += (version, body)
        # Called directly: on NOSCRIPT (a restarted Redis) redis-py loads it and retries.
        script(keys=[KEY.format(member_id) for member_id, _answer in chunk], args=args)
    expiring = {
        member_id: access.expires_at.timestamp()
        for member_id, (_version, _body, access) in items
        if access.expires_at is not None
    }
    if expiring:
        redis_client.get(app).zadd(GRACE_KEY, expiring)
    forget_local(list(answers), app)


def refresh(member_ids: Sequence[str]) -> dict[str, tuple[int, bytes, Access]]:
    """Recompute from the database and write the cache for these members.

    Called after a commit (a worker batch, an admin action, a recompute): the read begins a
    transaction of its own without the write lock on SQLite, so web inserts and worker
    batches go on meanwhile, and ends it. What it reads may include a later commit;
    `load_states` reads versions first and the cache refuses a lower version than it holds.
    """
    began = begin_read_only()
    try:
        answers = compute(load_states(list(dict.fromkeys(member_ids))))
    finally:
        if began:
            db.session.rollback()  # ends the read
    if answers:
        store(answers)
    return answers


def read(member_id: str, app: Flask | None = None) -> bytes | None:
    """The cached answer's bytes as stored, or None; raises redis errors."""
    app = app or current_app
    reader: TrackedReader | None = app.extensions.get("gatehouse.cache_reader")
    if reader is None:
        reader = app.extensions["gatehouse.cache_reader"] = TrackedReader(redis_client.get(app))
    return reader.body(member_id)


def forget_local(member_ids: Sequence[str], app: Flask | None = None) -> None:
    """Drop this thread's copies of these answers (it has just written them)."""
    reader: TrackedReader | None = (app or current_app).extensions.get("gatehouse.cache_reader")
    if reader is not None:
        reader.forget([KEY.format(m).encode() for m in member_ids])


INVALIDATIONS = "__redis__:invalidate"
MAX_LOCAL_ANSWERS = 50_000  # about 15 MB of answers per process at most
MAX_NOTICES_PER_READ = 1_000  # about 3 ms; more pending and every copy is dropped instead


def _as_is(message: Any) -> Any:
    return message


class _ReaderState(threading.local):
    pid = 0
    data: Connection | None = None
    invalidations: Connection | None = None

    def __init__(self) -> None:
        self.answers: dict[bytes, bytes] = {}


class TrackedReader:
    """The hot read, answered from process memory that Redis tells us is stale.

    Every page view of a membership site asks this, and a Redis round trip (send, wait for
    redis-server to be scheduled, read) was most of its cost and most of its p99 on a busy
    2-core machine. So each process (and thread) keeps the answers it has read, and Redis's
    own client-side caching protocol keeps them right: the data connection runs
    `CLIENT TRACKING ON REDIRECT <id>`, and Redis then publishes, on a second connection
    subscribed to `__redis__:invalidate`, every key it has served us that was since written,
    expired, evicted or flushed. Before each read the pending invalidations are applied (a
    non-blocking read of that socket, no round trip). Redis >= 6 in RESP2; redis-py's own
    client-side cache needs 7.4 and RESP3.

    What can make a copy wrong, and what covers it:
    - the invalidation connection drops (Redis restart, `CLIENT KILL`, output buffer limit):
      the next read finds it closed, forgets every copy and reconnects both connections;
    - the data connection drops (Redis then stops tracking its keys): the same, as each read
      also checks that socket (a non-blocking read, like the first);
    - this thread writes an answer: `store` forgets its copies itself, so a read after a
      write in the same thread never waits on the notice;
    - another process's write whose notice is still on the wire when a read starts: that
      read is as if it had arrived those microseconds earlier.
    A connection error drops both connections and every copy; the read is tried once more
    on new connections (the old ones may predate a Redis restart), and a second error is
    raised, so callers fall back as before.
    """

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self.connection_class = pool.connection_class
        self.connection_kwargs = dict(pool.connection_kwargs)
        self.state = _ReaderState()  # one per thread (gthread, tests); a fork resets it

    def body(self, member_id: str) -> bytes | None:
        key = KEY.format(member_id).encode()
        try:
            return self._body(key)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            # A connection left over from before a Redis restart (every copy is dropped
            # with it): one more try on new connections, whose error is the caller's.
            self._reset(self.state)
        try:
            return self._body(key)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._reset(self.state)
            raise

    def _body(self, key: bytes) -> bytes | None:
        state = self.state
        if state.data is None or state.pid != os.getpid():  # a fork gets its own
            self._connect(state)
        data, invalidations = state.data, state.invalidations
        assert data is not None and invalidations is not None
        applied = 0
        while invalidations.can_read(timeout=0):
            if applied == MAX_NOTICES_PER_READ:
                # A bulk rewrite (a rules change rewrites every member): forgetting every
                # copy on new connections is cheaper than reading each notice (50,000 took
                # 127 ms), and the pending ones go with the old connection.
                self._connect(state)
                data, invalidations = state.data, state.invalidations
                assert data is not None and invalidations is not None
                break
            self._apply(state, invalidations.read_response(push_request=True))
            applied += 1
        if data.can_read(timeout=0):
            # Nothing is ever due on it between reads, so it was closed (idle timeout, CLIENT
            # KILL): Redis stopped tracking what it read, and no notice will come for that.
            raise redis.ConnectionError("the tracked connection was closed by Redis")
        found = state.answers.get(key)
        if found is not None:
            return found
        data.send_command("HGET", key, "body")
        found = data.read_response()
        if found is not None:
            if len(state.answers) >= MAX_LOCAL_ANSWERS:
                del state.answers[next(iter(state.answers))]  # the oldest copy
            state.answers[key] = found
        return found

    def close(self) -> None:
        """Close this thread's connections (an app being discarded, in tests)."""
        self._reset(self.state)

    def forget(self, keys: Sequence[bytes]) -> None:
        for key in keys:
            self.state.answers.pop(key, None)

    def _connect(self, state: _ReaderState) -> None:
        self._reset(state)
        state.pid = os.getpid()
        invalidations = state.invalidations = self.connection_class(**self.connection_kwargs)
        invalidations.send_command("CLIENT", "ID")
        client_id = invalidations.read_response()
        # hiredis hands pub/sub and invalidation messages to handlers (the invalidation one
        # drops them by default); ours return them. redis-py's own RESP2 parser returns
        # them as they are and has no handlers.
        parser: Any = invalidations._parser
        if hasattr(parser, "set_invalidation_push_handler"):
            parser.set_pubsub_push_handler(_as_is)
            parser.set_invalidation_push_handler(_as_is)
        invalidations.send_command("SUBSCRIBE", INVALIDATIONS)
        invalidations.read_response(push_request=True)
        data = state.data = self.connection_class(**self.connection_kwargs)
        data.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", client_id)
        data.read_response()

    @staticmethod
    def _apply(state: _ReaderState, message: Any) -> None:
        # RESP2 pub/sub: [b"message", b"__redis__:invalidate", keys]; hiredis presents the
        # same as [b"invalidate", keys]. Null keys: forget everything (FLUSHALL, overflow).
        if not isinstance(message, list) or not message:
            return
        if message[0] == b"invalidate" and len(message) == 2:
            keys = message[1]
        elif message[0] == b"message" and len(message) == 3:
            keys = message[2]
        else:
            return  # the subscription's confirmation
        if keys is None:
            state.answers.clear()
            return
        for key in keys:
            state.answers.pop(key, None)

    @staticmethod
    def _reset(state: _ReaderState) -> None:
        state.answers.clear()
        for connection in (state.data, state.invalidations):
            if connection is not None:
                connection.disconnect()
        state.data = state.invalidations = None


def read_or_compute(member_id: str) -> bytes | None:
    """The cached answer, or on a miss the answer recomputed from the database (and cached)."""
    try:
        cached = read(member_id)
    except redis.RedisError:
        cached = None
    metrics.count_cache(hit=cached is not None)
    if cached is not None:
        return cached
    # A read: on SQLite a miss must not hold the write lock that web inserts wait for (a
    # Redis restart empties the cache while senders keep posting).
    begin_read_only()
    answers = compute(load_states([member_id]))
    if member_id not in answers:
        return None
    try:
        store(answers)
    except redis.RedisError:
        pass  # the database answer is still right; the cache fills on a later read
    return answers[member_id][1]
