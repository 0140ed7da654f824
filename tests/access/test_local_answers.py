"""Answers kept in process memory are dropped the moment Redis says they changed.

Another process's write is made here on a plain client of our own (a connection that is not
the reader's, which is all Redis sees of a worker), so the notice travels as it would.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from flask import Flask

from gatehouse.access import cache
from gatehouse.extensions import redis_client


def hgets(app: Flask) -> int:
    stats = redis_client.get(app).info("commandstats")
    return int(stats.get("cmdstat_hget", {}).get("calls", 0))


def other_process_writes(app: Flask, member_id: str, body: bytes) -> None:
    url = app.config["REDIS_URL"]
    code = (
        "import redis, sys\n"
        "redis.Redis.from_url(sys.argv[1]).hset(sys.argv[2], 'body', sys.argv[3])\n"
    )
    key = cache.KEY.format(member_id)
    subprocess.run([sys.executable, "-c", code, url, key, body.decode()], check=True)


def read_until(member_id: str, expected: bytes | None, seconds: float = 2.0) -> bytes | None:
    """The first read that is `expected`, or the last read: a notice takes microseconds."""
    deadline = time.monotonic() + seconds
    while True:
        found = cache.read(member_id)
        if found == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.001)


def reader(app: Flask) -> Any:
    return app.extensions["gatehouse.cache_reader"]


def test_a_repeated_read_is_answered_from_memory(app: Flask) -> None:
    redis_client.get(app).hset(cache.KEY.format("m1"), "body", b"one")
    assert cache.read("m1") == b"one"
    before = hgets(app)
    assert [cache.read("m1") for _ in range(5)] == [b"one"] * 5
    assert hgets(app) == before  # not one more round trip


def test_a_miss_is_not_kept(app: Flask) -> None:
    assert cache.read("m1") is None
    assert reader(app).state.answers == {}
    redis_client.get(app).hset(cache.KEY.format("m1"), "body", b"one")
    assert cache.read("m1") == b"one"


def test_another_process_writing_the_answer_is_seen_by_the_next_read(app: Flask) -> None:
    redis_client.get(app).hset(cache.KEY.format("m1"), "body", b"old")
    assert cache.read("m1") == b"old"

    other_process_writes(app, "m1", b"new")

    assert read_until("m1", b"new") == b"new"
    before = hgets(app)
    assert cache.read("m1") == b"new"
    assert hgets(app) == before  # and the new answer is kept in turn


def test_expiry_and_flush_drop_the_copies(app: Flask) -> None:
    client = redis_client.get(app)
    client.hset(cache.KEY.format("m1"), "body", b"one")
    client.hset(cache.KEY.format("m2"), "body", b"two")
    assert cache.read("m1") == b"one" and cache.read("m2") == b"two"

    client.pexpire(cache.KEY.format("m1"), 1)
    assert read_until("m1", None) is None

    redis.Redis.from_url(app.config["REDIS_URL"]).flushall()
    assert read_until("m2", None) is None


def test_this_threads_own_write_is_read_back_without_waiting_for_the_notice(
    app: Flask,
) -> None:
    redis_client.get(app).hset(cache.KEY.format("m1"), "body", b"old")
    assert cache.read("m1") == b"old"
    body = b'{"version":2}'
    cache.store({"m1": (2, body, cache_access())})
    assert cache.KEY.format("m1").encode() not in reader(app).state.answers
    assert cache.read("m1") == body


def test_losing_the_notice_connection_forgets_every_copy(app: Flask) -> None:
    """Redis drops a subscriber it cannot keep up with (or an operator kills it): the
    notices sent meanwhile are lost, so nothing read before may be answered again."""
    client = redis_client.get(app)
    client.hset(cache.KEY.format("m1"), "body", b"old")
    assert cache.read("m1") == b"old"
    assert client.client_kill_filter(_type="pubsub") >= 1
    # Written while no notice could reach the reader.
    client.hset(cache.KEY.format("m1"), "body", b"new")

    assert cache.read("m1") == b"new"  # on new connections, without an error


def test_a_redis_restart_forgets_every_copy(app: Flask, redis_server: Any) -> None:
    redis_client.get(app).hset(cache.KEY.format("m1"), "body", b"old")
    assert cache.read("m1") == b"old"
    redis_server.stop()
    try:
        with pytest.raises(redis.ConnectionError):
            cache.read("m1")  # never the copy from before
    finally:
        redis_server.start()
    assert cache.read("m1") is None  # the restarted Redis is empty


def test_the_number_of_copies_is_bounded(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "MAX_LOCAL_ANSWERS", 3)
    client = redis_client.get(app)
    for i in range(5):
        client.hset(cache.KEY.format(f"m{i}"), "body", f"b{i}")
        assert cache.read(f"m{i}") == f"b{i}".encode()
    kept = reader(app).state.answers
    assert len(kept) == 3
    assert list(kept) == [cache.KEY.format(f"m{i}").encode() for i in (2, 3, 4)]


def cache_access() -> Any:
    from gatehouse.access.rules import Access

    return Access(groups=(), permissions=(), sections=(), landing=None)


def test_losing_the_tracked_connection_forgets_every_copy(app: Flask) -> None:
    """Redis stops tracking the keys a closed connection read, so no notice would come."""
    client = redis_client.get(app)
    client.hset(cache.KEY.format("m1"), "body", b"old")
    assert cache.read("m1") == b"old"
    data = reader(app).state.data
    data.send_command("CLIENT", "ID")
    tracked_id = data.read_response()
    assert client.client_kill_filter(_id=tracked_id) == 1
    client.hset(cache.KEY.format("m1"), "body", b"new")  # no longer tracked: no notice

    assert cache.read("m1") == b"new"


def test_a_bulk_rewrite_drops_every_copy_instead_of_reading_each_notice(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache, "MAX_NOTICES_PER_READ", 3)
    client = redis_client.get(app)
    for i in range(5):
        client.hset(cache.KEY.format(f"m{i}"), "body", "old")
        assert cache.read(f"m{i}") == b"old"
    before = reader(app).state.invalidations
    with client.pipeline(transaction=False) as pipe:  # as a rules change rewrites everyone
        for i in range(5):
            pipe.hset(cache.KEY.format(f"m{i}"), "body", "new")
        pipe.execute()
    time.sleep(0.05)  # every notice has arrived

    assert cache.read("m4") == b"new"
    state = reader(app).state
    assert state.invalidations is not before  # reconnected rather than read 5 notices
    assert list(state.answers) == [cache.KEY.format("m4").encode()]
    assert [cache.read(f"m{i}") for i in range(5)] == [b"new"] * 5
