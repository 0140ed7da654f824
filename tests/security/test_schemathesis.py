"""Schemathesis against /openapi.json over WSGI: no 5xx anywhere, and answers match the document.

Each operation gets a fresh app (database and Redis) holding real reader and admin tokens,
a source per URL-key and signed kind, and one processed member, so generated requests meet
real rows. Bounded: SCHEMATHESIS_EXAMPLES examples per operation (default 25).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gatehouse.openapi import build_spec
from tests.helpers import bearer, create_source, create_token, keap_url, run_worker

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class World:
    def __init__(self, reader: str, admin: str, member_id: str, event_id: str) -> None:
        self.reader, self.admin = reader, admin
        self.member_id, self.event_id = member_id, event_id


def build_world(app: Flask, client: FlaskClient) -> World:
    keap_secret = create_source("keap", "keap-http-post")
    create_source("bridge", "standard", crm="keap")
    reader, admin = create_token("reader"), create_token("admin")
    r = client.post(
        keap_url("keap", keap_secret, "genpass"),
        data={"contactId": "2729", "Email": "jane@example.com", "Groups": "101"},
    )
    assert r.status_code == 202, r.json
    event_id = r.json["events"][0]
    run_worker(app)
    r = client.get("/api/members?contact=keap:2729", headers=bearer(reader))
    member_id = r.json["members"][0]["id"]
    return World(reader, admin, member_id, event_id)


@pytest.fixture
def world(app: Flask, client: FlaskClient) -> World:
    return build_world(app, client)


OPERATIONS = [
    (path, method.upper())
    for path, operations in build_spec()["paths"].items()
    for method in operations
]


def token_for(operation: Any, world: World) -> str:
    security = operation.definition.raw.get("security")
    return world.admin if security == [{"adminToken": []}] else world.reader


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_no_operation_answers_5xx_or_off_document(
    app: Flask, world: World, path: str, method: str
) -> None:
    # Loaded over WSGI from the app itself, so what is tested is what is served.
    operation = schemathesis.openapi.from_wsgi("/openapi.json", app)[path][method]
    headers = bearer(token_for(operation, world))

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()


# --- the happy paths, checked against the document with real ids ---------------------------


def _validated(api: Any, path: str, method: str, world: World, **parts: Any) -> Any:
    operation = api[path][method]
    case = operation.Case(**parts)
    return case.call_and_validate(headers=bearer(token_for(operation, world)), checks=CHECKS)


def test_answers_with_real_rows_match_the_document(
    app: Flask, client: FlaskClient, world: World
) -> None:
    api = schemathesis.openapi.from_wsgi("/openapi.json", app)
    mid, eid = {"member_id": world.member_id}, {"event_id": world.event_id}
    checks = [
        ("/api/members", "GET", {"query": {"contact": "keap:2729"}}, 200),
        ("/api/members/{member_id}", "GET", {"path_parameters": mid}, 200),
        ("/api/members/{member_id}/access", "GET", {"path_parameters": mid}, 200),
        ("/api/access", "GET", {"query": {"contact": "keap:2729"}}, 200),
        (
            "/api/members/{member_id}/access/explain",
            "GET",
            {"path_parameters": mid, "query": {"permission": "course:gold"}},
            200,
        ),
        ("/api/members/{member_id}/refresh", "POST", {"path_parameters": mid}, 200),
        (
            "/api/members/{member_id}/all-access",
            "POST",
            {"path_parameters": mid, "body": {"enabled": True}, "media_type": "application/json"},
            200,
        ),
        ("/api/members/{member_id}/revoke", "POST", {"path_parameters": mid}, 200),
        ("/api/members/{member_id}/restore", "POST", {"path_parameters": mid}, 200),
        ("/api/events", "GET", {"query": {"limit": "1"}}, 200),
        ("/api/events/{event_id}", "GET", {"path_parameters": eid}, 200),
        (
            "/api/events/{event_id}/replay",
            "POST",
            {"path_parameters": eid, "body": {"dry_run": True}, "media_type": "application/json"},
            200,
        ),
        ("/api/events/{event_id}/replay", "POST", {"path_parameters": eid}, 202),
        (
            "/api/events/replay",
            "POST",
            {"body": {"dry_run": True}, "media_type": "application/json"},
            200,
        ),
        ("/api/audit", "GET", {}, 200),
        ("/healthz", "GET", {}, 200),
        ("/readyz", "GET", {}, 200),
        ("/metrics", "GET", {}, 200),
        ("/openapi.json", "GET", {}, 200),
    ]
    for path, method, parts, status in checks:
        response = _validated(api, path, method, world, **parts)
        assert response.status_code == status, (path, method, response.text)

    response = _validated(
        api,
        "/api/events/replay",
        "POST",
        world,
        body={"status": "processed"},
        media_type="application/json",
    )
    assert response.status_code == 202, response.text
    replay_id = response.json()["replay_id"]
    response = _validated(
        api, "/api/replays/{replay_id}", "GET", world, path_parameters={"replay_id": replay_id}
    )
    assert response.status_code == 200, response.text


def test_a_cursor_with_non_ascii_text_is_400_not_500(client: FlaskClient, world: World) -> None:
    # Found by Schemathesis: base64 decoding raises ValueError, not binascii.Error, on such text.
    r = client.get("/api/events?cursor=%C2%AA%C3%992", headers=bearer(world.admin))
    assert r.status_code == 400
    assert r.json["error"] == "bad_request"


def test_an_audit_before_outside_any_entry_id_is_400(client: FlaskClient, world: World) -> None:
    # Found by Schemathesis on PostgreSQL: an id past 32 bits made the query fail (503).
    for before in ("3601798463081", "0", "-5"):
        r = client.get(f"/api/audit?before={before}", headers=bearer(world.admin))
        assert r.status_code == 400, before
        assert r.json["error"] == "bad_request"


NUL_URLS = [
    ("GET", "/api/members?email=a%00b"),
    ("GET", "/api/access?contact=keap:1%002"),
    ("GET", "/api/members/a%00b"),
    ("GET", "/api/members/a%00b/access"),
    ("GET", "/api/members/a%00b/access/explain?permission=x%00"),
    ("GET", "/api/events?source=%00&type=a%00&contact=k:%00"),
    ("GET", "/api/events/a%00b"),
    ("GET", "/api/replays/a%00b"),
    ("POST", "/api/members/a%00b/refresh"),
    ("POST", "/api/events/a%00b/replay"),
]


def test_a_nul_character_in_a_url_is_never_a_5xx_on_any_database(
    client: FlaskClient, world: World
) -> None:
    # PostgreSQL refuses NUL in text: that was a 503 "database unavailable" for bad input.
    # SQLite finds nothing (200 with an empty list, or 404); PostgreSQL answers 400.
    for method, url in NUL_URLS:
        r = client.open(url, method=method, headers=bearer(world.admin))
        assert r.status_code in (200, 400, 404), (url, r.status_code, r.json)


def test_a_nul_character_in_a_hook_slug_is_404_unknown_source(client: FlaskClient) -> None:
    r = client.post("/hooks/a%00b", data=b"{}", content_type="application/json")
    assert r.status_code == 404
    assert r.json["error"] == "unknown_source"


def test_a_nul_character_in_bulk_replay_filters_is_never_a_5xx(
    client: FlaskClient, world: World
) -> None:
    body = {"source": "a\x00", "dry_run": True}
    r = client.post("/api/events/replay", json=body, headers=bearer(world.admin))
    assert r.status_code in (200, 400), r.json
