"""A genpass member's set-password token, as the CLI hands it out."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gatehouse.extensions import db
from gatehouse.models import Member
from gatehouse.passwords import read_set_password_token
from tests.helpers import create_source, keap_url, run_worker


def test_genpass_member_gets_a_token_bound_to_its_current_password_nonce(
    app: Flask, client: FlaskClient
) -> None:
    secret = create_source("keap", "keap-http-post")
    r = client.post(
        keap_url("keap", secret, "genpass"), data={"contactId": "9", "Email": "ann@example.com"}
    )
    assert r.status_code == 202
    run_worker(app)
    member = db.session.execute(select(Member)).scalar_one()
    assert member.password_hash and member.password_hash.startswith("$argon2")

    result = app.test_cli_runner().invoke(args=["members", "password-token", member.id])

    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert read_set_password_token(app.config["SECRET_KEY"], token) == (
        member.id,
        member.password_nonce,
    )
    assert read_set_password_token("another-secret-key-0123456789", token) is None


def test_password_token_for_an_unknown_member_says_how_to_find_one(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["members", "password-token", "nope"])
    assert result.exit_code != 0
    assert "GET /api/members?email=" in result.output
