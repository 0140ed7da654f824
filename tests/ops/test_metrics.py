"""GET /metrics: Prometheus text from prometheus-client, right across several processes.

The counters are shared by every process using the same PROMETHEUS_MULTIPROC_DIR (test runs
included), so each test counts under a source slug of its own and compares before/after.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from gatehouse.queue.relay import relay_all
from tests.conftest import RedisServer
from tests.helpers import (
    bearer,
    cli_standard_source,
    create_source,
    create_token,
    gunicorn_serving,
    run_worker,
    served_app_env,
    standard_headers,
)
from tests.ops.scenario import broken, post_tag, setup_member


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    # Imported here, not at the top: gatehouse.metrics must be the first to import
    # prometheus-client, so that the test process counts in multiprocess mode like servers.
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    return samples(r.get_data(as_text=True))


def value(s: dict, name: str, **labels: str) -> float:
    return s.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_received_processed_failed_lag_and_queue_depth(
    app: Flask, client: FlaskClient
) -> None:
    setup_member(app, client)
    slug = f"m-{uuid.uuid4().hex[:10]}"
    secret = create_source(slug, "standard", crm="keap")
    tag = "contact.tag_added"
    before = scrape(client)

    body = json.dumps({"type": tag, "contact": {"id": "2729"}, "tag": "205"}).encode()
    r = client.post(f"/hooks/{slug}", data=body, headers=standard_headers(secret, "a1", body))
    assert r.status_code == 202
    assert relay_all(app) == 1
    queued = scrape(client)
    assert (
        value(queued, "gatehouse_events_received_total", source=slug, type=tag)
        - value(before, "gatehouse_events_received_total", source=slug, type=tag)
        == 1
    )
    assert value(queued, "gatehouse_queue_depth", queue="gatehouse", state="queued") == 1
    run_worker(app)

    body2 = json.dumps({"type": tag, "contact": {"id": "2729"}, "tag": "300"}).encode()
    client.post(f"/hooks/{slug}", data=body2, headers=standard_headers(secret, "a2", body2))
    with broken(tag):
        run_worker(app)
    after = scrape(client)
    assert value(after, "gatehouse_queue_depth", queue="gatehouse", state="queued") == 0
    assert (
        value(after, "gatehouse_events_processed_total", source=slug, type=tag, status="processed")
        == 1
    )
    assert value(after, "gatehouse_events_failed_total", source=slug, type=tag) == 1
    assert value(after, "gatehouse_processing_lag_seconds_count", source=slug) == 2
    assert value(after, "gatehouse_processing_lag_seconds_bucket", source=slug, le="+Inf") == 2


def test_metrics_count_cache_hits_and_misses(app: Flask, client: FlaskClient) -> None:
    secrets = setup_member(app, client)
    reader = create_token("reader")
    post_tag(client, secrets["std_secret"], "205", "c1")
    run_worker(app)
    from gatehouse.extensions import redis_client

    redis_client.get().delete(*redis_client.get().keys("gatehouse:access:*"))
    before = scrape(client)
    for _ in range(3):
        r = client.get("/api/access?contact=keap:2729", headers=bearer(reader))
        assert r.status_code == 200
    after = scrape(client)
    # Other test runs sharing the directory may read too: at least ours are counted.
    miss = "gatehouse_access_cache_reads_total"
    assert value(after, miss, result="miss") - value(before, miss, result="miss") >= 1
    assert value(after, miss, result="hit") - value(before, miss, result="hit") >= 2


def test_metrics_add_up_across_gunicorn_workers_that_come_and_go(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Two workers that each exit after 2 requests: 6 webhooks are counted by >= 3 processes,
    and every scrape, whichever worker answers, shows all 6."""
    env, _database = served_app_env(tmp_path, redis_server)
    slug = "multi"
    secret = cli_standard_source(env, slug)
    with gunicorn_serving(
        "wsgi:app", "--config", "gunicorn.conf.py", "--workers", "2", "--max-requests", "2", env=env
    ) as port:
        base = f"http://127.0.0.1:{port}"
        for i in range(6):
            body = json.dumps(
                {"type": "contact.tag_added", "contact": {"id": "1"}, "tag": str(i)}
            ).encode()
            headers = standard_headers(secret, f"g{i}", body)
            request = urllib.request.Request(f"{base}/hooks/{slug}", data=body, headers=headers)  # noqa: S310
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                assert answer.status == 202
        for _ in range(4):
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:  # noqa: S310
                s = samples(answer.read().decode())
            assert (
                value(s, "gatehouse_events_received_total", source=slug, type="contact.tag_added")
                == 6
            )
        pids = {p.name.rsplit("_", 1)[-1] for p in (tmp_path / "prom").glob("counter_*.db")}
        assert len(pids) >= 3, pids
