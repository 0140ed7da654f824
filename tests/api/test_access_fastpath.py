"""The lean read path (gatehouse.fastpath) answers exactly what the Flask view answers.

Which path answered is told by Flask's `request_started` signal: the lean path never
starts a Flask request.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, request_started
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from gatehouse.access import cache
from gatehouse.api.auth import forget_tokens
from gatehouse.extensions import db, redis_client
from gatehouse.logs import JsonFormatter
from tests.helpers import bearer, create_source, create_token, keap_url, run_worker


@pytest.fixture
def jane(app: Flask, client: FlaskClient) -> str:
    secret = create_source("keap", "keap-http-post")
    r = client.post(
        keap_url("keap", secret, "genpass"),
        data={"contactId": "2729", "Email": "jane@example.com", "Groups": "101"},
    )
    assert r.status_code == 202
    run_worker(app)
    setup = create_token("reader", "setup")
    found = client.get("/api/members?contact=keap:2729", headers=bearer(setup)).json
    return str(found["members"][0]["id"])


@pytest.fixture
def flask_requests(app: Flask) -> Iterator[list[str]]:
    seen: list[str] = []

    def started(sender: Any, **_: Any) -> None:
        from flask import request

        seen.append(request.path)

    request_started.connect(started, app)
    yield seen
    request_started.disconnect(started, app)


def hits() -> float:
    value = REGISTRY.get_sample_value("gatehouse_access_cache_reads_total", {"result": "hit"})
    return value or 0.0


def test_a_cached_answer_for_a_known_token_skips_flask_and_is_the_same_answer(
    app: Flask, client: FlaskClient, jane: str, flask_requests: list[str]
) -> None:
    reader = bearer(create_token("reader"))
    url = f"/api/members/{jane}/access"

    first = client.get(url, headers=reader)  # the token is not cached yet: Flask answers
    assert flask_requests == [url]
    before = hits()
    second = client.get(url, headers=reader)  # now the lean path

    assert flask_requests == [url]
    assert hits() == before + 1
    assert second.status_code == first.status_code == 200
    assert second.data == first.data == cache.read(jane)
    assert second.headers["Content-Type"] == first.headers["Content-Type"]
    assert second.headers["Content-Length"] == first.headers["Content-Length"]
    assert json.loads(second.data)["member_id"] == jane


def test_an_admin_token_may_read_on_the_lean_path_too(
    app: Flask, client: FlaskClient, jane: str, flask_requests: list[str]
) -> None:
    admin = bearer(create_token("admin"))
    client.get(f"/api/members/{jane}/access", headers=admin)
    r = client.get(f"/api/members/{jane}/access", headers=admin)
    assert r.status_code == 200
    assert len(flask_requests) == 1


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "missing_token"),
        ({"Authorization": "Bearer "}, "missing_token"),
        ({"Authorization": "Basic abc"}, "missing_token"),
        ({"Authorization": "Bearer gh_not-a-real-token"}, "invalid_token"),
    ],
)
def test_no_or_unknown_tokens_get_flasks_401_every_time(
    app: Flask, client: FlaskClient, jane: str, headers: dict[str, str], error: str
) -> None:
    for _ in range(2):  # the second time an unknown token is in the cache (as unknown)
        r = client.get(f"/api/members/{jane}/access", headers=headers)
        assert r.status_code == 401
        assert r.json["error"] == error
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_a_forgotten_token_goes_back_through_flask(
    app: Flask, client: FlaskClient, jane: str, flask_requests: list[str]
) -> None:
    reader = bearer(create_token("reader"))
    client.get(f"/api/members/{jane}/access", headers=reader)
    forget_tokens()
    client.get(f"/api/members/{jane}/access", headers=reader)
    assert len(flask_requests) == 2


def test_a_cache_miss_is_recomputed_by_flask(
    app: Flask, client: FlaskClient, jane: str, flask_requests: list[str]
) -> None:
    reader = bearer(create_token("reader"))
    client.get(f"/api/members/{jane}/access", headers=reader)
    redis_client.get(app).delete(cache.KEY.format(jane))

    r = client.get(f"/api/members/{jane}/access", headers=reader)

    assert r.status_code == 200
    assert len(flask_requests) == 2
    assert cache.read(jane) == r.data


def test_an_unknown_member_gets_flasks_404(
    app: Flask, client: FlaskClient, flask_requests: list[str]
) -> None:
    reader = bearer(create_token("reader"))
    for _ in range(2):
        r = client.get("/api/members/01nosuchmember000000000000/access", headers=reader)
        assert r.status_code == 404
        assert r.json == {"error": "not_found"}
    assert len(flask_requests) == 2


def test_redis_down_answers_from_the_database_through_flask(
    app: Flask, client: FlaskClient, jane: str, redis_server: Any
) -> None:
    reader = bearer(create_token("reader"))
    expected = client.get(f"/api/members/{jane}/access", headers=reader).json
    redis_server.stop()
    try:
        r = client.get(f"/api/members/{jane}/access", headers=reader)
    finally:
        redis_server.start()
    assert r.status_code == 200
    assert {k: v for k, v in r.json.items() if k != "computed_at"} == {
        k: v for k, v in expected.items() if k != "computed_at"
    }


def test_after_a_redis_restart_the_lean_path_reconnects(
    app: Flask, client: FlaskClient, jane: str, redis_server: Any, flask_requests: list[str]
) -> None:
    reader = bearer(create_token("reader"))
    client.get(f"/api/members/{jane}/access", headers=reader)  # token cached, cache filled
    assert client.get(f"/api/members/{jane}/access", headers=reader).status_code == 200
    redis_server.stop()
    redis_server.start()  # an empty Redis: the process's read connection is now dead
    from gatehouse.access.cache import refresh

    refresh([jane])
    db.session.rollback()
    flask_requests.clear()
    first = client.get(f"/api/members/{jane}/access", headers=reader)
    again = client.get(f"/api/members/{jane}/access", headers=reader)
    assert first.status_code == again.status_code == 200
    # The dead connection failed one read (answered through Flask); the next read is
    # answered on a new connection, not through Flask.
    assert len(flask_requests) <= 1
    assert again.json == first.json


def test_other_methods_and_paths_are_flasks(
    app: Flask, client: FlaskClient, jane: str, flask_requests: list[str]
) -> None:
    reader = bearer(create_token("reader"))
    client.get(f"/api/members/{jane}/access", headers=reader)
    assert client.post(f"/api/members/{jane}/access", headers=reader).status_code == 405
    assert client.head(f"/api/members/{jane}/access", headers=reader).status_code == 200
    assert client.get(f"/api/members/{jane}/access/", headers=reader).status_code == 404
    assert len(flask_requests) == 4


def test_the_lean_path_writes_the_same_request_log_line(
    app: Flask, client: FlaskClient, jane: str
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gatehouse")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        token = create_token("reader", "site")
        client.get(f"/api/members/{jane}/access", headers=bearer(token))  # Flask
        client.get(f"/api/members/{jane}/access", headers=bearer(token))  # lean
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    flask_line, lean_line = [x for x in lines if x["event"] == "request"]
    for line in (flask_line, lean_line):
        line.pop("ts"), line.pop("duration_ms")
    assert lean_line == flask_line
    assert token not in stream.getvalue()
