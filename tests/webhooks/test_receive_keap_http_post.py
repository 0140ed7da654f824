"""POST /hooks/<slug>?<command>=KEY for `keap-http-post` sources: every row of the receive table.

Keap campaign posts carry form fields and no signature: the key in the URL is an
itsdangerous token binding the source and one command, signed with the source's secret.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text, update

from gatehouse.extensions import db
from gatehouse.models import Event, SourceSecret
from gatehouse.queue import get_queue
from gatehouse.queue.relay import relay_all
from gatehouse.sources import rotate_source
from gatehouse.webhooks.senders.keap_http_post import make_key
from gatehouse.webhooks.source_cache import forget_sources
from tests.conftest import make_app
from tests.helpers import create_source, event_count, keap_url, load_fixture, rq_job_keys

SLUG = "keap"


@pytest.fixture
def secret(app: Flask) -> str:
    return create_source(SLUG, "keap-http-post", crm="keap")


def form(name: str = "genpass__groups") -> dict[str, str]:
    return dict(load_fixture("keap-http-post", name))


def assert_nothing_stored(app: Flask) -> None:
    assert event_count() == 0
    assert rq_job_keys(app) == []
    assert get_queue(app).count == 0


def only_event() -> Event:
    return db.session.execute(select(Event)).scalar_one()


def test_genpass_with_groups_is_stored_as_a_provision_snapshot(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    r = client.post(keap_url(SLUG, secret, "genpass"), data=form())

    assert r.status_code == 202, r.json
    assert r.json["status"] == "accepted"
    event = only_event()
    assert r.json["events"] == [event.id]
    assert (event.type, event.status, event.contact_key) == (
        "member.provision",
        "received",
        "keap:2729",
    )
    assert event.payload == {
        "type": "member.provision",
        "contact": {
            "id": "2729",
            "crm": "keap",
            "email": "jane@example.com",
            "first_name": "Jane",
            "last_name": "Doe",
        },
        "tags": ["101", "205"],
    }
    event_id = event.id
    db.session.rollback()
    assert relay_all(app) == 1
    assert get_queue(app).job_ids == [event_id]


def test_contact0id_field_names_the_contact(app: Flask, client: FlaskClient, secret: str) -> None:
    r = client.post(keap_url(SLUG, secret, "genpass"), data=form("genpass__contact0id"))

    assert r.status_code == 202, r.json
    event = only_event()
    assert event.contact_key == "keap:3100"
    assert "tags" not in event.payload  # no Groups posted: tags are left alone


def test_updateuser_is_a_contact_update_that_requires_a_member(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    r = client.post(keap_url(SLUG, secret, "updateuser"), data=form("updateuser__groups"))

    assert r.status_code == 202, r.json
    event = only_event()
    assert event.type == "contact.updated"
    assert event.payload["require_member"] is True
    assert event.payload["tags"] == ["101"]


@pytest.mark.parametrize(
    ("command", "event_type"),
    [("addtag", "contact.tag_added"), ("removetag", "contact.tag_removed")],
)
def test_tag_commands_take_the_tags_from_the_query(
    app: Flask, client: FlaskClient, secret: str, command: str, event_type: str
) -> None:
    r = client.post(keap_url(SLUG, secret, command, tag="101,102"), data=form("addtag__basic"))

    assert r.status_code == 202, r.json
    event = only_event()
    assert event.type == event_type
    assert event.payload["tags"] == ["101", "102"]


def test_revoke_is_stored_as_member_revoked(app: Flask, client: FlaskClient, secret: str) -> None:
    r = client.post(keap_url(SLUG, secret, "revoke"), data={"contactId": "2729"})

    assert r.status_code == 202, r.json
    assert only_event().type == "member.revoked"


def test_every_post_is_its_own_event_because_keap_sends_no_id(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    url = keap_url(SLUG, secret, "genpass")
    first = client.post(url, data=form())
    second = client.post(url, data=form())

    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json["events"] != second.json["events"]
    assert event_count() == 2


def test_the_key_never_reaches_the_stored_event(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    key = make_key(secret, SLUG, "genpass")
    client.post(keap_url(SLUG, secret, "genpass"), data=form())

    event = only_event()
    stored = json.dumps([event.payload, event.headers, event.reason, event.effects])
    assert key not in stored


def test_body_that_is_not_utf8_answers_400(app: Flask, client: FlaskClient, secret: str) -> None:
    r = client.post(
        keap_url(SLUG, secret, "genpass"),
        data=b"contactId=2729&FirstName=\xff\xfe",
        content_type="application/x-www-form-urlencoded",
    )

    assert r.status_code == 400
    assert r.json["error"] == "malformed_body"
    assert_nothing_stored(app)


def test_body_that_is_not_form_data_answers_400(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    r = client.post(
        keap_url(SLUG, secret, "genpass"),
        data=b"just some words",
        content_type="application/x-www-form-urlencoded",
    )

    assert r.status_code == 400
    assert r.json["error"] == "malformed_body"
    assert_nothing_stored(app)


def _url_without_key(secret: str) -> str:
    return f"/hooks/{SLUG}?contact=1"


def _url_wrong_secret(secret: str) -> str:
    return keap_url(SLUG, "some-other-secret-entirely", "genpass")


def _url_key_for_another_command(secret: str) -> str:
    # A genpass key must not work for revoke: each URL can trigger exactly one command.
    return f"/hooks/{SLUG}?revoke={make_key(secret, SLUG, 'genpass')}"


def _url_two_commands(secret: str) -> str:
    key = make_key(secret, SLUG, "genpass")
    return f"/hooks/{SLUG}?genpass={key}&revoke={key}"


def _url_truncated_key(secret: str) -> str:
    return f"/hooks/{SLUG}?genpass={make_key(secret, SLUG, 'genpass')[:-3]}"


def _url_bare_secret(secret: str) -> str:
    # The secret itself is not a key: keys are signed tokens.
    return f"/hooks/{SLUG}?genpass={secret}"


def _url_empty_key(secret: str) -> str:
    return f"/hooks/{SLUG}?genpass="


def _url_unicode_key(secret: str) -> str:
    return f"/hooks/{SLUG}?genpass=%E2%98%83.%E2%98%83"


@pytest.mark.parametrize(
    "make_url",
    [
        _url_without_key,
        _url_wrong_secret,
        _url_key_for_another_command,
        _url_two_commands,
        _url_truncated_key,
        _url_bare_secret,
        _url_empty_key,
        _url_unicode_key,
    ],
    ids=[
        "no-key",
        "wrong-secret",
        "key-for-another-command",
        "two-commands",
        "truncated-key",
        "bare-secret",
        "empty-key",
        "unicode-key",
    ],
)
def test_bad_key_answers_401_and_stores_nothing(
    app: Flask, client: FlaskClient, secret: str, make_url: Any
) -> None:
    url = make_url(secret)

    r = client.post(url, data=form())

    assert r.status_code == 401, r.json
    assert r.json["error"] == "invalid_signature"
    body = r.get_data(as_text=True)
    assert secret not in body
    assert make_key(secret, SLUG, "genpass") not in body
    assert_nothing_stored(app)


def test_key_made_for_another_source_answers_401_even_with_the_same_secret(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    create_source("keap-two", "keap-http-post", crm="keap", secret=secret)

    r = client.post(f"/hooks/keap-two?genpass={make_key(secret, SLUG, 'genpass')}", data=form())

    assert r.status_code == 401
    assert_nothing_stored(app)


def test_key_signed_with_a_rotated_out_secret_works_during_the_grace_period(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    _, new_secret = rotate_source(SLUG, None, grace_hours=24)
    db.session.commit()
    forget_sources()

    old = client.post(keap_url(SLUG, secret, "genpass"), data=form())
    new = client.post(keap_url(SLUG, new_secret, "genpass"), data=form())

    assert (old.status_code, new.status_code) == (202, 202)


def test_key_signed_with_a_rotated_out_secret_is_refused_after_the_grace_period(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    rotate_source(SLUG, None, grace_hours=24)
    db.session.commit()
    db.session.execute(
        update(SourceSecret)
        .where(SourceSecret.expires_at.is_not(None))
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    db.session.commit()
    forget_sources()

    r = client.post(keap_url(SLUG, secret, "genpass"), data=form())

    assert r.status_code == 401
    assert_nothing_stored(app)


def test_unknown_source_answers_404(app: Flask, client: FlaskClient) -> None:
    r = client.post(keap_url("nobody", "s", "genpass"), data=form())

    assert r.status_code == 404
    assert r.json == {"error": "unknown_source"}


def test_body_over_the_limit_answers_413(
    app: Flask, database_url: str, redis_server: Any, secret: str
) -> None:
    small = make_app(database_url, redis_server.url, GATEHOUSE_MAX_BODY=64)
    fields = form()
    fields["Groups"] = ",".join(str(n) for n in range(100))

    r = small.test_client().post(keap_url(SLUG, secret, "genpass"), data=fields)

    assert r.status_code == 413
    assert r.json["error"] == "body_too_large"
    assert_nothing_stored(app)


def test_json_body_answers_415(app: Flask, client: FlaskClient, secret: str) -> None:
    r = client.post(keap_url(SLUG, secret, "genpass"), json=form())

    assert r.status_code == 415
    assert r.json["error"] == "unsupported_media_type"
    assert_nothing_stored(app)


def test_missing_contact_id_answers_422_naming_the_field(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    r = client.post(keap_url(SLUG, secret, "genpass"), data=form("genpass__no_contact_id"))

    assert r.status_code == 422
    assert r.json["error"] == "invalid_event"
    assert list(r.json["detail"]) == ["contactId"]
    assert_nothing_stored(app)


def test_addtag_without_a_tag_answers_422_naming_the_field(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    r = client.post(keap_url(SLUG, secret, "addtag"), data=form("addtag__basic"))

    assert r.status_code == 422
    assert list(r.json["detail"]) == ["tag"]
    assert_nothing_stored(app)


def test_invalid_email_answers_422_naming_the_field(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    fields = form()
    fields["Email"] = "jane at example"

    r = client.post(keap_url(SLUG, secret, "genpass"), data=fields)

    assert r.status_code == 422
    assert r.json["detail"] == {"contact": {"email": ["Not a valid email address."]}}
    assert_nothing_stored(app)


def test_store_failure_answers_503_with_retry_after(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("the PostgreSQL store failure is covered in test_receive_standard")
    db.session.execute(
        text(
            "CREATE TRIGGER refuse_events BEFORE INSERT ON events "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    )
    db.session.commit()

    r = client.post(keap_url(SLUG, secret, "genpass"), data=form())

    assert r.status_code == 503
    assert r.json["error"] == "unavailable"
    assert int(r.headers["Retry-After"]) > 0
    assert rq_job_keys(app) == []


def test_keys_never_appear_in_logs(
    app: Flask, client: FlaskClient, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = make_key(secret, SLUG, "genpass")
    wrong_command = f"/hooks/{SLUG}?revoke={good}"
    with caplog.at_level("DEBUG"), caplog.at_level("DEBUG", logger="gatehouse"):
        # Twice: the first fills the source cache through Flask, the second takes the
        # fast path in front of it; both log.
        client.post(keap_url(SLUG, secret, "genpass"), data=form())
        client.post(keap_url(SLUG, secret, "genpass"), data={**form(), "contactId": "2730"})
        client.post(wrong_command, data=form())
        client.post(f"/hooks/{SLUG}?genpass={good}x", data=form())

    logged = " ".join(str(vars(record)) for record in caplog.records)
    # The requests were logged at all: the accepted ones on both paths, and the rejections.
    events = [record.getMessage() for record in caplog.records]
    assert events.count("webhook.accepted") == 2
    assert events.count("request") == 4
    assert good not in logged
    assert secret not in logged
