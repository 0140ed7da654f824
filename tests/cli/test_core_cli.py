"""flask sources | tokens | access, run through Flask's CLI runner against the real app."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text

from gatehouse.access import cache
from gatehouse.extensions import db
from gatehouse.models import ApiToken, Member, Source, SourceSecret
from gatehouse.queue import get_queue
from gatehouse.webhooks.source_cache import forget_sources
from tests.helpers import bearer, keap_url, post_standard, run_worker


def cli(app: Flask, *args: str) -> Any:
    result = app.test_cli_runner().invoke(args=list(args))
    db.session.rollback()
    return result


def secret_in(output: str) -> str:
    match = re.search(r"[Ss]ecret \(shown once[^)]*\): (\S+)", output)
    assert match, output
    return match.group(1)


def test_sources_add_standard_prints_the_secret_once_and_the_url(
    app: Flask, client: FlaskClient
) -> None:
    result = cli(app, "sources", "add", "bridge", "--kind", "standard", "--crm", "keap")

    assert result.exit_code == 0, result.output
    secret = secret_in(result.output)
    assert secret.startswith("whsec_")
    assert "http://127.0.0.1:8000/hooks/bridge" in result.output
    event = {"type": "contact.tag_added", "contact": {"id": "1"}, "tag": "101"}
    assert post_standard(client, "bridge", secret, event, "msg_cli").status_code == 202
    stored = db.session.execute(select(SourceSecret.encrypted)).scalar_one()
    assert secret not in stored
    assert db.session.execute(select(Source.crm)).scalar_one() == "keap"


def test_sources_add_keap_prints_one_working_url_per_command(
    app: Flask, client: FlaskClient
) -> None:
    result = cli(app, "sources", "add", "keap", "--kind", "keap-http-post")

    assert result.exit_code == 0, result.output
    urls = re.findall(r"http://127\.0\.0\.1:8000(/hooks/keap\?\S+)", result.output)
    commands = [u.split("?")[1].split("=")[0] for u in urls]
    assert commands == ["genpass", "updateuser", "addtag", "removetag", "revoke"]
    assert db.session.execute(select(Source.crm)).scalar_one() == "keap"  # crm defaults to slug
    genpass = client.post(urls[0], data={"contactId": "1", "Email": "a@example.com"})
    assert genpass.status_code == 202, genpass.json
    revoke_with_genpass_key = client.post(
        urls[0].replace("genpass=", "revoke="), data={"contactId": "1"}
    )
    assert revoke_with_genpass_key.status_code == 401


def test_sources_add_with_a_given_secret_does_not_echo_it(app: Flask) -> None:
    given = "whsec_c2VjcmV0"
    result = cli(app, "sources", "add", "bridge", "--kind", "standard", "--secret", given)

    assert result.exit_code == 0, result.output
    assert "whsec_c2VjcmV0" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad Slug", "--kind", "standard"], "slug 'Bad Slug' is not valid"),
        (["ok", "--kind", "carrier-pigeon"], "unknown kind 'carrier-pigeon'; choose one of"),
    ],
    ids=["bad-slug", "unknown-kind"],
)
def test_sources_add_refuses_bad_input_saying_how_to_fix_it(
    app: Flask, args: list[str], message: str
) -> None:
    result = cli(app, "sources", "add", *args)

    assert result.exit_code != 0
    assert message in result.output
    assert db.session.execute(select(Source)).first() is None


@pytest.mark.parametrize(
    ("kind", "where"),
    [("stripe", "Signing secret"), ("hubspot", "client secret")],
)
def test_sources_add_warns_that_a_generated_secret_fails_senders_that_issue_their_own(
    app: Flask, kind: str, where: str
) -> None:
    result = cli(app, "sources", "add", kind, "--kind", kind)

    assert result.exit_code == 0, result.output
    assert f"Warning: {kind} signs with a secret it issues itself" in result.stderr
    assert where in result.stderr  # says where to find it
    assert f"sources rotate {kind} --secret SECRET" in result.stderr  # and how to fix it

    given = cli(app, "sources", "add", f"{kind}-2", "--kind", kind, "--secret", "s3cret")
    assert given.exit_code == 0 and "Warning" not in given.stderr
    standard = cli(app, "sources", "add", "bridge", "--kind", "standard")
    assert "Warning" not in standard.stderr  # Gatehouse's own secret is the one to paste


def test_sources_rotate_warns_when_it_generates_a_secret_the_sender_issues(app: Flask) -> None:
    cli(app, "sources", "add", "stripe", "--kind", "stripe", "--secret", "whsec_old")

    generated = cli(app, "sources", "rotate", "stripe")
    assert generated.exit_code == 0
    assert "Warning: stripe signs with a secret it issues itself" in generated.stderr

    given = cli(app, "sources", "rotate", "stripe", "--secret", "whsec_new")
    assert given.exit_code == 0 and "Warning" not in given.stderr


def test_sources_add_refuses_an_existing_slug(app: Flask) -> None:
    cli(app, "sources", "add", "bridge", "--kind", "standard")

    result = cli(app, "sources", "add", "bridge", "--kind", "standard")

    assert result.exit_code != 0
    assert "a source named 'bridge' exists" in result.output


def test_sources_list_never_prints_a_secret(app: Flask) -> None:
    first = secret_in(cli(app, "sources", "add", "bridge", "--kind", "standard").output)
    rotated = cli(app, "sources", "rotate", "bridge")
    second = secret_in(rotated.output)

    result = cli(app, "sources", "list")

    assert result.exit_code == 0
    assert "bridge" in result.output and "standard" in result.output
    assert "2 live, 1 in grace until" in result.output
    assert first not in result.output and second not in result.output
    assert "whsec_" not in result.output


def test_sources_list_when_empty_says_how_to_add_one(app: Flask) -> None:
    result = cli(app, "sources", "list")

    assert result.exit_code == 0
    assert "sources add" in result.output


def test_sources_rotate_keeps_the_old_secret_for_the_grace_period(
    app: Flask, client: FlaskClient
) -> None:
    old = secret_in(cli(app, "sources", "add", "bridge", "--kind", "standard").output)

    result = cli(app, "sources", "rotate", "bridge", "--grace-hours", "2")

    assert result.exit_code == 0, result.output
    assert "old secret(s) work for 2 more hour(s)" in result.output
    new = secret_in(result.output)
    forget_sources()
    event = {"type": "contact.tag_added", "contact": {"id": "1"}, "tag": "101"}
    assert post_standard(client, "bridge", old, event, "msg_old").status_code == 202
    assert post_standard(client, "bridge", new, event, "msg_new").status_code == 202


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rotate", "nobody"], "no source named 'nobody'"),
        (["rotate", "bridge", "--grace-hours", "-1"], "--grace-hours must be 0 or more"),
        (["remove", "nobody"], "no source named 'nobody'"),
    ],
    ids=["rotate-unknown", "rotate-negative-grace", "remove-unknown"],
)
def test_sources_commands_refuse_bad_input(app: Flask, args: list[str], message: str) -> None:
    cli(app, "sources", "add", "bridge", "--kind", "standard")

    result = cli(app, "sources", *args)

    assert result.exit_code != 0
    assert message in result.output


def test_sources_remove_without_events_deletes_the_source(app: Flask, client: FlaskClient) -> None:
    cli(app, "sources", "add", "bridge", "--kind", "standard")

    result = cli(app, "sources", "remove", "bridge")

    assert result.exit_code == 0, result.output
    assert db.session.execute(select(Source)).first() is None
    forget_sources()
    assert client.post("/hooks/bridge", json={}).status_code == 404


def test_sources_remove_with_events_keeps_them_and_stops_the_url(
    app: Flask, client: FlaskClient
) -> None:
    secret = secret_in(cli(app, "sources", "add", "bridge", "--kind", "standard").output)
    event = {"type": "contact.tag_added", "contact": {"id": "1"}, "tag": "101"}
    assert post_standard(client, "bridge", secret, event, "msg_1").status_code == 202

    result = cli(app, "sources", "remove", "bridge")

    assert result.exit_code == 0, result.output
    assert "its 1 event(s) are kept" in result.output
    forget_sources()
    assert post_standard(client, "bridge", secret, event, "msg_2").status_code == 404
    assert db.session.execute(text("SELECT count(*) FROM events")).scalar_one() == 1


def test_tokens_create_prints_the_token_once_and_stores_its_hash(
    app: Flask, client: FlaskClient
) -> None:
    result = cli(app, "tokens", "create", "site", "--role", "reader")

    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    assert token.startswith("gh_")
    row = db.session.execute(select(ApiToken)).scalar_one()
    assert (row.name, row.role) == ("site", "reader")
    assert token not in row.token_hash
    r = client.get("/api/access?contact=keap:1", headers=bearer(token))
    assert r.status_code == 404  # authenticated; the contact simply does not exist


def test_tokens_create_refuses_a_taken_name(app: Flask) -> None:
    cli(app, "tokens", "create", "site", "--role", "reader")

    result = cli(app, "tokens", "create", "site", "--role", "admin")

    assert result.exit_code != 0
    assert "a token named 'site' exists" in result.output


def test_tokens_create_refuses_an_unknown_role(app: Flask) -> None:
    result = cli(app, "tokens", "create", "site", "--role", "owner")

    assert result.exit_code != 0
    assert "'owner' is not one of 'reader', 'admin'" in result.output


INVALID_RULES = """
groups:
  - name: gold
    tags: {any: ["101"]}
    grants: [course:gold]
"""
GOLD_RULES = """
groups:
  - name: gold
    tags: {any: ["keap:101"]}
    grants: [course:gold]
"""
SILVER_RULES = """
groups:
  - name: silver
    tags: {any: ["keap:101"]}
    grants: [course:silver]
"""


def write_rules(tmp_path: Path, content: str, name: str = "rules.yaml") -> str:
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def test_access_load_refuses_an_invalid_file_naming_the_field(app: Flask, tmp_path: Path) -> None:
    result = cli(app, "access", "load", write_rules(tmp_path, INVALID_RULES))

    assert result.exit_code != 0
    assert "is not valid" in result.output
    assert "groups.0.tags.any.0: must be namespaced as 'crm:tag'" in result.output
    assert cli(app, "access", "show").exit_code != 0  # nothing was activated


def test_access_load_refuses_a_missing_file(app: Flask, tmp_path: Path) -> None:
    result = cli(app, "access", "load", str(tmp_path / "nope.yaml"))

    assert result.exit_code != 0
    assert "cannot read" in result.output


def test_access_show_without_rules_says_how_to_load_some(app: Flask) -> None:
    result = cli(app, "access", "show")

    assert result.exit_code != 0
    assert "access load FILE" in result.output


def test_access_load_recomputes_every_member_in_the_background(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    assert cli(app, "access", "load", write_rules(tmp_path, GOLD_RULES, "a.yaml")).exit_code == 0
    run_worker(app)
    cli(app, "sources", "add", "keap", "--kind", "keap-http-post")
    source = db.session.execute(select(Source)).scalar_one()
    secret = _source_secret(app, source.id)
    for n in range(3):
        r = client.post(
            keap_url("keap", secret, "genpass"),
            data={"contactId": str(n), "Email": f"m{n}@example.com", "Groups": "101"},
        )
        assert r.status_code == 202
    run_worker(app)
    members = db.session.execute(select(Member.id)).scalars().all()
    before = {m: json.loads(cache.read(m) or b"{}") for m in members}
    assert {b["permissions"][0] for b in before.values()} == {"course:gold"}

    result = cli(app, "access", "load", write_rules(tmp_path, SILVER_RULES, "b.yaml"))

    assert result.exit_code == 0, result.output
    assert "Recomputing every member's access in the background" in result.output
    assert get_queue(app).count == 1
    run_worker(app)
    for member_id in members:
        after = json.loads(cache.read(member_id) or b"{}")
        assert after["groups"] == ["silver"]
        assert after["version"] > before[member_id]["version"]
    shown = cli(app, "access", "show")
    assert "course:silver" in shown.output


def _source_secret(app: Flask, source_id: int) -> str:
    from gatehouse.crypto import SecretBox

    sealed = db.session.execute(
        select(SourceSecret.encrypted).where(SourceSecret.source_id == source_id)
    ).scalar_one()
    return SecretBox(app.config["SECRET_KEY"]).open(sealed)


def test_access_load_when_redis_is_down_says_how_to_recompute_later(
    app: Flask, tmp_path: Path, redis_server: Any
) -> None:
    path = write_rules(tmp_path, GOLD_RULES)
    redis_server.stop()
    try:
        result = cli(app, "access", "load", path)
    finally:
        redis_server.start()

    assert result.exit_code != 0
    assert "access recompute" in result.output
    assert cli(app, "access", "show").exit_code == 0  # the rules themselves were saved
