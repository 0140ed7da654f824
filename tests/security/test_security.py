"""Security checks: who may call what, what is never shown, how signatures are compared,
and that rotated-out secrets stop working once their grace period is over.

Routes are enumerated from app.url_map, so a route added later is checked without editing
this file; the role each one needs comes from the OpenAPI document, and a route missing
from the document fails here.
"""

from __future__ import annotations

import ast
import io
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gatehouse.extensions import db
from gatehouse.models import Source, SourceSecret, utcnow
from gatehouse.openapi import ADMIN, build_spec
from gatehouse.webhooks.senders import SENDERS
from gatehouse.webhooks.source_cache import forget_sources
from tests.helpers import bearer, create_token, event_count, json_log_lines
from tests.security.test_fuzz_senders import FIXTURES, Kind, setup_kind
from tests.webhooks.senders.support import rotate
from tests.webhooks.senders.test_clickfunnels import cf_headers

SENDERS_DIR = Path(__file__).resolve().parents[2] / "gatehouse" / "webhooks" / "senders"
UNKNOWN = "gh_unknown_0123456789abcdefghijklmnopqrstuvwxyz"


# --- who may call what ------------------------------------------------------------------------


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def api_routes(app: Flask) -> list[tuple[str, str, str]]:
    """(method, url with placeholder ids, role) for every /api rule; role from the document."""
    paths = build_spec()["paths"]
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = _openapi_path(rule.rule)
        assert path in paths, f"{rule.rule} is served but not in /openapi.json"
        url = re.sub(r"\{[^}]+\}", "x1", path)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = paths[path][method.lower()]
            role = "admin" if operation.get("security") == ADMIN else "reader"
            found.append((method, url, role))
    return found


def test_the_route_list_covers_every_admin_route_named_in_the_contract(app: Flask) -> None:
    admin = {(m, u) for m, u, role in api_routes(app) if role == "admin"}
    assert {
        ("GET", "/api/events"),
        ("GET", "/api/events/x1"),
        ("POST", "/api/events/x1/replay"),
        ("POST", "/api/events/replay"),
        ("GET", "/api/replays/x1"),
        ("GET", "/api/audit"),
        ("POST", "/api/members/x1/refresh"),
        ("POST", "/api/members/x1/revoke"),
        ("POST", "/api/members/x1/restore"),
        ("POST", "/api/members/x1/all-access"),
    } <= admin
    readers = {(m, u) for m, u, role in api_routes(app) if role == "reader"}
    assert ("GET", "/api/members/x1/access") in readers and ("GET", "/api/access") in readers


def _call(client: FlaskClient, method: str, url: str, headers: dict[str, str]) -> Any:
    return client.open(url, method=method, headers=headers, json={} if method == "POST" else None)


def test_every_api_route_refuses_no_token_and_an_unknown_token(
    app: Flask, client: FlaskClient
) -> None:
    for method, url, _role in api_routes(app):
        for headers, code in (
            ({}, "missing_token"),
            ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing_token"),
            ({"Authorization": "Bearer "}, "missing_token"),
            (bearer(UNKNOWN), "invalid_token"),
        ):
            r = _call(client, method, url, headers)
            assert r.status_code == 401, (method, url, headers, r.status_code)
            assert r.json["error"] == code, (method, url, r.json)
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert UNKNOWN not in r.get_data(as_text=True)


def test_every_admin_api_route_refuses_a_reader_token(app: Flask, client: FlaskClient) -> None:
    reader = create_token("reader")
    admin_routes = [(m, u) for m, u, role in api_routes(app) if role == "admin"]
    assert len(admin_routes) >= 10
    for method, url in admin_routes:
        r = _call(client, method, url, bearer(reader))
        assert r.status_code == 403, (method, url, r.status_code)
        assert r.json["error"] == "forbidden"
        assert reader not in r.get_data(as_text=True)


def test_reader_routes_take_a_reader_token_and_admin_routes_an_admin_one(
    app: Flask, client: FlaskClient
) -> None:
    reader, admin = create_token("reader"), create_token("admin")
    for method, url, role in api_routes(app):
        token = reader if role == "reader" else admin
        r = _call(client, method, url, bearer(token))
        # Past the guard: whatever the answer, it is not about the token.
        assert r.status_code not in (401, 403), (method, url, r.json)
        assert r.status_code < 500, (method, url, r.json)


def admin_page_routes(app: Flask) -> list[tuple[str, str]]:
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or rule.endpoint in (
            "admin.login",
            "admin.login_post",
        ):
            continue
        url = re.sub(r"<[^>]+>", "x1", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, url))
    return found


def _csrf(client: FlaskClient) -> str:
    client.get("/admin/login")
    with client.session_transaction() as session:
        return str(session["csrf"])


def _assert_admin_page_refused(client: FlaskClient, routes: list[tuple[str, str]]) -> None:
    for method, url in routes:
        if method == "GET":
            r = client.get(url, headers=bearer(UNKNOWN))
            assert r.status_code == 302, (url, r.status_code)
            assert r.headers["Location"].startswith("/admin/login")
        else:
            # With a valid CSRF token, so what refuses it is the missing admin session.
            r = client.post(url, data={"csrf_token": _csrf(client)})
            assert r.status_code == 302, (url, r.status_code)
            assert r.headers["Location"].startswith("/admin/login")


def test_every_admin_page_refuses_no_session_and_bearer_tokens(
    app: Flask, client: FlaskClient
) -> None:
    routes = admin_page_routes(app)
    assert ("GET", "/admin/events") in routes and ("POST", "/admin/events/x1/replay") in routes
    _assert_admin_page_refused(client, routes)


@pytest.mark.parametrize("who", ["reader", "unknown"])
def test_admin_login_refuses_reader_and_unknown_tokens_and_pages_stay_closed(
    app: Flask, client: FlaskClient, who: str
) -> None:
    token = create_token("reader") if who == "reader" else UNKNOWN
    r = client.post("/admin/login", data={"token": token, "csrf_token": _csrf(client)})
    assert r.status_code == 401
    assert token not in r.get_data(as_text=True)
    _assert_admin_page_refused(client, admin_page_routes(app))


# --- nothing secret is shown ------------------------------------------------------------------


def _cli(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return str(result.output)


@pytest.mark.parametrize("kind", sorted(set(SENDERS) - {"ghl"}))
def test_sources_add_shows_the_secret_once_and_list_never(app: Flask, kind: str) -> None:
    out = _cli(app, "sources", "add", "src", "--kind", kind)
    secret = re.search(r"Secret \(shown once[^:]*\): (\S+)", out)
    assert secret is not None, out
    assert out.count(secret.group(1)) == 1, out
    rotated = _cli(app, "sources", "rotate", "src")
    new = re.search(r"New secret \(shown once\): (\S+)", rotated)
    assert new is not None and rotated.count(new.group(1)) == 1, rotated
    listing = _cli(app, "sources", "list")
    assert "src" in listing
    assert secret.group(1) not in listing and new.group(1) not in listing


def test_tokens_create_shows_the_token_once_and_it_is_stored_only_hashed(app: Flask) -> None:
    out = _cli(app, "tokens", "create", "site", "--role", "reader")
    token = out.strip().splitlines()[-1]
    assert out.count(token) == 1
    listing = app.test_cli_runner().invoke(args=["tokens", "list"]).output
    assert token not in listing
    from gatehouse.models import ApiToken

    stored = db.session.execute(select(ApiToken.token_hash)).scalars().all()
    assert token not in stored


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    with json_log_lines() as stream:
        yield stream


def _fixture_body(kind: Kind) -> bytes:
    return kind.fixtures()[0][0]


@pytest.mark.parametrize("name", sorted(SENDERS))
def test_refused_hooks_echo_no_key_or_signature_in_answers_or_logs(
    app: Flask, client: FlaskClient, log_text: io.StringIO, name: str
) -> None:
    kind = setup_kind(name)
    body = _fixture_body(kind)
    headers = kind.sign(body)
    shown: list[str] = []
    # A right signature over another body; the key for another command; a key for another slug.
    if "?" not in kind.url:  # a URL key does not cover the body: nothing to tamper with
        r = client.post(kind.url, data=body + b" ", headers=headers)
        assert r.status_code == 401, r.get_data()
        shown.append(r.get_data(as_text=True))
    if "?" in kind.url:
        key = kind.url.split("=", 1)[1]
        for url in (
            kind.bare_url + "?revoke=" + key,
            "/hooks/other?" + kind.url.split("?", 1)[1],
            kind.bare_url + "?" + kind.url.split("?", 1)[1][:-3] + "abc",
        ):
            r = client.post(url, data=body, headers=headers)
            assert r.status_code in (401, 404), (url, r.status_code)
            shown.append(r.get_data(as_text=True))
        secrets = [key, key.rsplit(".", 1)[-1]]
    else:
        secrets = [v for k, v in headers.items() if k.lower() != "content-type"]
        secrets += [part for v in secrets for part in re.split(r"[,= ]", v) if len(part) > 20]
    if kind.secret:
        secrets.append(kind.secret)
    text = log_text.getvalue() + "\n".join(shown)
    leaked = [s for s in secrets if s and s in text]
    assert not leaked, leaked
    assert event_count() == 0


def test_stored_events_keep_no_signature_header(app: Flask, client: FlaskClient) -> None:
    names = {
        "standard": "webhook-signature",
        "stripe": "stripe-signature",
        "hubspot": "x-hubspot-signature-v3",
        "ghl": "x-ghl-signature",
        "clickfunnels": "x-webhook-clickfunnels-signature",
    }
    admin = create_token("admin")
    for name, header in names.items():
        kind = setup_kind(name)
        body = _fixture_body(kind)
        signature = kind.sign(body)
        r = client.post(kind.url, data=body, headers=signature)
        assert r.status_code == 202, (name, r.json)
        detail = client.get(f"/api/events/{r.json['events'][0]}", headers=bearer(admin)).json
        assert header not in {k.lower() for k in detail["headers"]}, name
        sent = next(v for k, v in signature.items() if k.lower() == header)
        assert sent not in json.dumps(detail), name


# --- timing-safe comparisons --------------------------------------------------------------


SECRET_WORDS = re.compile(r"sig|digest|mac|expected|provided|secret|key|token|hash", re.I)


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def _plain_comparisons_of_secrets(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        if any(isinstance(o, ast.Constant) for o in operands):
            continue  # `x == ""`, `version == "v1"`: comparing with a constant reveals nothing
        names = set().union(*(_names(o) for o in operands))
        if any(SECRET_WORDS.search(n) for n in names):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_sender_compares_a_signature_or_key_with_plain_equality() -> None:
    modules = [*sorted(SENDERS_DIR.glob("*.py")), SENDERS_DIR.parent / "signatures.py"]
    found = [hit for path in modules for hit in _plain_comparisons_of_secrets(path)]
    # The one allowed: itsdangerous has already verified the key's MAC in constant time; what
    # is compared is the payload it carried (slug and command), which is not secret.
    allowed = {"bound == [slug, command]"}
    assert [f for f in found if f.split(": ", 1)[1] not in allowed] == []


def test_the_equality_guard_finds_a_plain_signature_comparison(tmp_path: Path) -> None:
    sample = tmp_path / "sender.py"
    sample.write_text(
        "def verify(expected, header, version):\n"
        "    if version == 'v1' and header != '':\n"
        "        return hmac_sha256(k, b) == header.encode()\n"
        "    return expected == header\n"
    )
    found = _plain_comparisons_of_secrets(sample)
    assert sorted(f.split(":")[1] for f in found) == ["3", "4"]


def test_every_sender_verifies_with_a_constant_time_primitive() -> None:
    primitives = (
        "any_signature_matches",
        "compare_digest",
        "verify_key",  # itsdangerous: HMAC compared with hmac.compare_digest
        ".verify(",  # Ed25519 (cryptography)
    )
    for kind, sender in SENDERS.items():
        source = Path(__import__(type(sender).__module__, fromlist=["_"]).__file__ or "")
        text = source.read_text()
        assert any(p in text for p in primitives), kind
    signatures = (SENDERS_DIR.parent / "signatures.py").read_text()
    assert "hmac.compare_digest" in signatures


def test_the_admin_csrf_check_uses_compare_digest() -> None:
    text = (SENDERS_DIR.parents[1] / "admin" / "__init__.py").read_text()
    assert "hmac.compare_digest(" in text
    assert not [
        f
        for f in _plain_comparisons_of_secrets(SENDERS_DIR.parents[1] / "admin" / "__init__.py")
        if "csrf" in f.lower()
    ]


# --- rotated secrets ----------------------------------------------------------------------


ROTATABLE = sorted(set(SENDERS) - {"ghl"})  # ghl has no shared secret: its key file is rotated


def _post_signed(client: FlaskClient, name: str, slug: str, secret: str, n: int) -> Any:
    """A fresh fixture-shaped event signed with this secret (n makes it a new event)."""
    from tests.helpers import keap_url, standard_headers
    from tests.security.test_fuzz_senders import _sign_bytes

    body = setup_body(name, n)
    if name == "keap-http-post":
        return client.post(
            keap_url(slug, secret, "genpass"),
            data=body,
            content_type="application/x-www-form-urlencoded",
        )
    if name == "keap-rest-hook":
        from gatehouse.webhooks.senders.keap_rest_hook import hook_url_query

        return client.post(
            f"/hooks/{slug}?{hook_url_query(secret, slug)}",
            data=body,
            content_type="application/json",
        )
    if name == "standard":
        return client.post(
            f"/hooks/{slug}", data=body, headers=standard_headers(secret, f"msg_{n}", body)
        )
    if name == "clickfunnels":
        return client.post(f"/hooks/{slug}", data=body, headers=cf_headers(secret, body))
    fake = Kind(
        name, name, "application/json", f"/hooks/{slug}", f"/hooks/{slug}", (), lambda b: {}, secret
    )
    return client.post(f"/hooks/{slug}", data=body, headers=_sign_bytes(fake, body))


def setup_body(name: str, n: int) -> bytes:
    if name == "keap-http-post":
        return f"contactId={2700 + n}&Email=m{n}%40example.com".encode()
    if name == "standard":
        return json.dumps({"type": "contact.updated", "contact": {"id": str(2700 + n)}}).encode()
    fixture = {
        "keap-rest-hook": "contact.add__single",
        "stripe": "customer.created__basic",
        "hubspot": "contact.creation__batch",
        "clickfunnels": "contact.created__with_tags",
    }[name]
    text = (FIXTURES / name / f"{fixture}.json").read_text()
    doc = json.loads(text)
    # A new event id each time, so an acceptance is a 202 and not a duplicate.
    if name == "stripe":
        doc["id"] = f"evt_rotation_{n}"
    elif name == "hubspot":
        for item in doc:
            item["eventId"] = item["eventId"] * 100 + n
    elif name == "clickfunnels":
        doc["event_id"] = f"{doc['event_id']}-{n}"
    elif name == "keap-rest-hook":
        for item in doc["object_keys"]:
            item["timestamp"] = f"2026-11-22T10:00:{n:02d}Z"
    return json.dumps(doc).encode()


def _expire_rotated_out_secrets(slug: str) -> None:
    source = db.session.execute(select(Source).where(Source.slug == slug)).scalar_one()
    for secret in db.session.execute(
        select(SourceSecret).where(SourceSecret.source_id == source.id)
    ).scalars():
        if secret.expires_at is not None:
            secret.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    forget_sources()


@pytest.mark.parametrize("name", ROTATABLE)
def test_a_rotated_out_secret_works_in_its_grace_period_and_stops_after(
    app: Flask, client: FlaskClient, name: str
) -> None:
    slug = name if name in ("hubspot",) else f"rot-{name}"
    from tests.helpers import create_source

    old = create_source(slug, name, crm="keap" if "keap" in name else None)
    new = (
        "whsec_" + "TmV3U2VjcmV0Rm9yUm90YXRpb25UZXN0cw=="
        if name == "standard"
        else ("rotated-secret-0123456789abcdef")
    )
    rotate(slug, new, grace_hours=1)

    assert _post_signed(client, name, slug, old, 1).status_code == 202, "old, in grace"
    assert _post_signed(client, name, slug, new, 2).status_code == 202, "new"

    _expire_rotated_out_secrets(slug)  # the grace period is over
    r = _post_signed(client, name, slug, old, 3)
    assert r.status_code == 401, r.get_data()
    assert r.json["error"] == "invalid_signature"
    assert _post_signed(client, name, slug, new, 4).status_code == 202, "new, after"
