"""Structured logs: one JSON line per request and per job, and no secret in any line."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gatehouse.crypto import hash_token
from tests.helpers import bearer, create_token, json_log_lines, keap_url, post_standard, run_worker


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    with json_log_lines() as stream:
        yield stream


def cli(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_no_secret_key_token_or_signature_appears_in_any_log_line(
    app: Flask, client: FlaskClient, log_lines: io.StringIO
) -> None:
    out = cli(app, "sources", "add", "bridge", "--kind", "standard", "--crm", "keap")
    std_secret = re.search(r"whsec_\S+", out).group(0)  # type: ignore[union-attr]
    out = cli(app, "sources", "add", "keap", "--kind", "keap-http-post")
    keap_secret = re.search(r"Secret \(shown once[^:]*\): (\S+)", out).group(1)  # type: ignore[union-attr]
    keap_key_url = keap_url("keap", keap_secret, "genpass")
    keap_key = keap_key_url.split("genpass=")[1]
    out = cli(app, "sources", "rotate", "bridge")
    rotated = re.search(r"whsec_\S+", out).group(0)  # type: ignore[union-attr]
    reader, admin = create_token("reader", "site"), create_token("admin", "ops")

    r = client.post(
        keap_key_url, data={"contactId": "2729", "Email": "jane@example.com", "Groups": "101"}
    )
    assert r.status_code == 202
    event = {"type": "contact.tag_added", "contact": {"id": "2729"}, "tag": "205"}
    signed = post_standard(client, "bridge", rotated, event, "msg_1")
    assert signed.status_code == 202
    signature = signed.request.headers["webhook-signature"]
    assert post_standard(client, "bridge", "whsec_" + "A" * 32, event, "msg_2").status_code == 401
    bad_key = keap_url("keap", "wrong-secret-123", "genpass")
    assert client.post(bad_key, data={"contactId": "1"}).status_code == 401
    run_worker(app)
    assert client.get("/api/access?contact=keap:2729", headers=bearer(reader)).status_code == 200
    assert client.get("/api/events", headers=bearer(admin)).status_code == 200
    assert client.get("/api/events", headers=bearer("not-a-token-xyz")).status_code == 401
    assert client.post("/admin/login", data={"token": admin}).status_code == 400  # no CSRF
    client.get("/admin/login")
    with client.session_transaction() as s:
        csrf = s["csrf"]
    assert client.post("/admin/login", data={"token": admin, "csrf_token": csrf}).status_code == 302

    lines = [json.loads(line) for line in log_lines.getvalue().splitlines() if line.strip()]
    text = log_lines.getvalue()
    secrets = {
        "standard secret": std_secret,
        "standard secret body": std_secret.removeprefix("whsec_"),
        "rotated secret": rotated.removeprefix("whsec_"),
        "keap secret": keap_secret,
        "keap key in URL": keap_key,
        "reader token": reader,
        "admin token": admin,
        "admin token hash": hash_token(admin),
        "signature": signature.split(",")[-1],
        "csrf token": csrf,
    }
    leaked = {name for name, value in secrets.items() if value in text}
    assert not leaked, leaked
    assert "genpass=" not in text

    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) >= 10
    assert all({"method", "path", "status", "duration_ms"} <= set(x) for x in requests)
    hook = next(x for x in requests if x["path"] == "/hooks/keap" and x["status"] == 202)
    assert hook["source"] == "keap" and hook["method"] == "POST"
    jobs = [line for line in lines if line["event"] == "job.processed"]
    assert {(j["source"], j["type"], j["status"]) for j in jobs} == {
        ("keap", "member.provision", "processed"),
        ("bridge", "contact.tag_added", "processed"),
    }
    assert all(j["event_id"] and j["duration_ms"] >= 0 for j in jobs)
