"""The benchmark's own measuring parts: how ingest rounds are pooled, and how lag hears the
cache writes (`bench.run`). A regression here would move a figure in docs/benchmarks.md."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from bench.load import Answer, WrkResult
from bench.run import CacheWriteWatch, answered_rate, pooled
from tests.conftest import RedisServer


def wrk(requests: int, seconds: float, p50: float, p99: float) -> WrkResult:
    return WrkResult(requests, seconds, requests / seconds, p50, p99, errors=0, wrapped=False)


def test_rounds_pool_into_requests_over_seconds_and_the_median_rounds_percentiles() -> None:
    result = pooled([wrk(1000, 5.0, 10, 30), wrk(3000, 5.0, 12, 90), wrk(2000, 10.0, 11, 40)])
    assert result.requests == 6000 and result.seconds == 20.0
    assert result.rps == 300.0  # not the mean of the rounds' rates (200, 600, 200)
    assert (result.p50_ms, result.p99_ms) == (11, 40)


def test_the_lag_phase_reports_the_rate_the_server_answered_not_the_rate_offered() -> None:
    # Four accepted posts over two seconds from the first send to the last answer; a
    # refused one and one never answered count for nothing.
    answers = [
        Answer(202, b"", 10.0, 10.01),
        Answer(202, b"", 10.5, 10.53),
        Answer(503, b"", 11.0, 11.9),
        None,
        Answer(202, b"", 11.0, 11.05),
        Answer(202, b"", 11.9, 12.0),
    ]
    posted = answered_rate(answers)
    assert posted.per_s == pytest.approx(2.0)  # 4 / (12.0 - 10.0)
    assert posted.p50_ms == pytest.approx(50.0)  # of 10, 30, 50, 100 ms
    assert posted.p99_ms == pytest.approx(100.0)


@pytest.fixture
def notifying(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    before = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    client.config_set("notify-keyspace-events", "Kh")
    yield client
    client.config_set("notify-keyspace-events", before)
    client.delete("gatehouse:access:m1", "gatehouse:access:m2", "gatehouse:access:other")


@pytest.mark.timeout(60)
def test_the_lag_watcher_stamps_each_watched_members_first_cache_write(
    notifying: redis.Redis, redis_server: RedisServer
) -> None:
    with CacheWriteWatch(redis_server.url, ["m1", "m2"]) as watch:
        before = time.perf_counter()
        notifying.hset("gatehouse:access:m1", "v", "1")
        notifying.hset("gatehouse:access:other", "v", "1")  # not watched
        time.sleep(0.3)
        between = time.perf_counter()
        notifying.hset("gatehouse:access:m1", "v", "2")  # a second write: not the lag's
        notifying.hset("gatehouse:access:m2", "v", "1")
        after = time.perf_counter()
        written = watch.wait_for(2, timeout=10)
    assert set(written) == {"m1", "m2"}
    # On this process's clock, as post_all's answers are: m1 at its first write.
    assert before <= written["m1"] <= between
    assert between <= written["m2"] <= after + 0.5
