"""The benchmark's own measuring parts: the server settings it measures on, how ingest rounds
are pooled, and how lag hears the cache writes (`bench.run`). A regression here would move a
figure in docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import runpy
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.common import GUNICORN_CLASS, GUNICORN_WORKERS
from bench.load import WrkResult, have_wrk, post_paced, standard_request
from bench.run import CacheWriteWatch, answered_per_s, pooled
from tests.conftest import RedisServer
from tests.helpers import REPO

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_the_bench_serves_the_app_and_hello_world_as_the_procfile_serves_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both run on `start_gunicorn`'s defaults; those must be gunicorn.conf.py's, or the
    figures would describe a server nobody deploys."""
    if os.environ.get("BENCH_GUNICORN_CLASS") or os.environ.get("BENCH_GUNICORN_WORKERS"):
        pytest.skip("the bench's server settings are overridden in this environment")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    procfile = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    assert (GUNICORN_CLASS, GUNICORN_WORKERS) == (procfile["worker_class"], procfile["workers"])


def wrk(requests: int, seconds: float, p50: float, p99: float) -> WrkResult:
    return WrkResult(requests, seconds, requests / seconds, p50, p99, errors=0, wrapped=False)


def test_rounds_pool_into_requests_over_seconds_and_the_median_rounds_percentiles() -> None:
    result = pooled([wrk(1000, 5.0, 10, 30), wrk(3000, 5.0, 12, 90), wrk(2000, 10.0, 11, 40)])
    assert result.requests == 6000 and result.seconds == 20.0
    assert result.rps == 300.0  # not the mean of the rounds' rates (200, 600, 200)
    assert (result.p50_ms, result.p99_ms) == (11, 40)


def test_the_lag_phase_reports_the_rate_the_server_answered_not_the_rate_offered() -> None:
    # Four accepted posts, offered at 2 a second: answered over 2.0 s, plus the one interval
    # (0.5 s) that n answers do not span.
    assert answered_per_s([10.0, 10.6, 11.1, 12.0], rate=2.0) == pytest.approx(4 / 2.5)
    assert answered_per_s([], rate=2.0) == 0.0


class _Accepting(BaseHTTPRequestHandler):
    """Answers every POST `202` naming its webhook id, as the receive view names the event."""

    received: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        msg_id = self.headers["webhook-id"]
        self.received.append(msg_id)
        body = json.dumps({"status": "accepted", "events": [msg_id]}).encode() + b"\n"
        self.send_response(202)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.mark.skipif(not have_wrk(), reason="wrk is not installed (.ci/run installs it)")
@pytest.mark.timeout(60)
def test_wrk_paces_every_request_once_and_stamps_each_answer_on_perf_counter(
    tmp_path: Path,
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accepting)
    _Accepting.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reqs = [standard_request("bench", SECRET, f"msg_{i}", {"n": i}) for i in range(60)]
    try:
        before = time.perf_counter()
        paced = post_paced(server.server_address[1], reqs, rate=200, workdir=tmp_path)
        after = time.perf_counter()
    finally:
        server.shutdown()

    sent = [f"msg_{i}" for i in range(60)]
    assert sorted(_Accepting.received) == sorted(sent)  # each once, the first one too
    assert sorted(json.loads(body)["events"][0] for _s, _at, body in paced.answers) == sorted(sent)
    assert {status for status, _at, _body in paced.answers} == {202}
    times = [at for _status, at, _body in paced.answers]
    assert before < min(times) and max(times) < after  # the clock the watcher stamps with
    # Paced at 200/s: 60 posts take about 0.3 s, where 32 connections unpaced take a few ms.
    assert max(times) - min(times) > 0.2


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
