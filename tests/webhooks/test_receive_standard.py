"""POST /hooks/<slug> for `standard` sources: every row of the contract's receive table.

Signatures are made by the `standardwebhooks` package (tests.helpers.standard_headers), the
independent reference implementation, never by our own code.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from blinker import NamedSignal
from flask import Flask, appcontext_pushed, request_started
from flask.testing import FlaskClient
from sqlalchemy import select, update

from gatehouse.extensions import db, redis_client
from gatehouse.models import Event, Source, SourceSecret
from gatehouse.queue import get_queue
from gatehouse.queue.relay import relay_all
from gatehouse.sources import rotate_source
from gatehouse.webhooks.senders import SENDERS
from gatehouse.webhooks.source_cache import forget_sources
from tests.conftest import free_port, make_app
from tests.helpers import (
    create_source,
    event_count,
    load_fixture,
    post_standard,
    refusing_inserts,
    rq_job_keys,
    standard_headers,
)

SLUG = "bridge"


@pytest.fixture
def secret(app: Flask) -> str:
    return create_source(SLUG, "standard", crm="keap")


def tags_set() -> dict[str, Any]:
    return dict(load_fixture("standard", "contact.tags_set__basic"))


def assert_nothing_stored(app: Flask) -> None:
    assert event_count() == 0
    assert rq_job_keys(app) == []
    assert get_queue(app).count == 0


def test_valid_event_is_stored_received_answered_202_and_relayed_to_the_queue(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    r = post_standard(client, SLUG, secret, tags_set(), "msg_a1")

    assert r.status_code == 202, r.json
    assert r.json["status"] == "accepted"
    [event_id] = r.json["events"]
    event = db.session.get(Event, event_id)
    assert event is not None
    # Stored and answered; the relay queues it (not the request: it does not wait on Redis).
    assert (event.external_id, event.type, event.status) == (
        "msg_a1",
        "contact.tags_set",
        "received",
    )
    assert event.occurred_at == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert event.payload["contact"] == {
        "id": "2729",
        "crm": "keap",
        "email": "jane@example.com",
        "first_name": "Jane",
        "last_name": "Doe",
    }
    assert event.contact_key == "keap:2729"
    assert "webhook-signature" not in (event.headers or {})
    assert get_queue(app).job_ids == []
    db.session.rollback()
    assert relay_all(app) == 1
    assert get_queue(app).job_ids == [event_id]


def test_redelivery_answers_200_duplicate_and_counts_deliveries(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    first = post_standard(client, SLUG, secret, tags_set(), "msg_dup")
    again = post_standard(client, SLUG, secret, tags_set(), "msg_dup")

    assert first.status_code == 202
    assert again.status_code == 200, again.json
    assert again.json == {"status": "duplicate", "events": first.json["events"]}
    event = db.session.execute(select(Event)).scalar_one()
    assert event.deliveries == 2
    db.session.rollback()
    assert relay_all(app) == 1  # one event, one job
    assert get_queue(app).job_ids == [event.id]


def test_occurred_at_defaults_to_the_webhook_timestamp(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    event = tags_set()
    del event["occurred_at"]
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=120)

    r = post_standard(client, SLUG, secret, event, "msg_ts", when=when)

    assert r.status_code == 202, r.json
    stored = db.session.get(Event, r.json["events"][0])
    assert stored is not None
    # Inside the header's (whole) second, refined towards our receive time.
    assert when <= stored.occurred_at < when + timedelta(seconds=1)


def test_body_that_is_not_json_answers_400(app: Flask, client: FlaskClient, secret: str) -> None:
    body = b'{"type": "contact.tags_set", '
    r = client.post(f"/hooks/{SLUG}", data=body, headers=standard_headers(secret, "msg_bad", body))

    assert r.status_code == 400
    assert r.json["error"] == "malformed_body"
    assert_nothing_stored(app)


def test_deeply_nested_json_answers_400_not_500(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    body = b"[" * 200_000 + b"]" * 200_000
    r = client.post(f"/hooks/{SLUG}", data=body, headers=standard_headers(secret, "msg_deep", body))

    assert r.status_code == 400, r.json
    assert r.json["error"] == "malformed_body"
    assert_nothing_stored(app)


def _missing(header: str) -> Callable[[dict[str, str], str], dict[str, str]]:
    def change(headers: dict[str, str], secret: str) -> dict[str, str]:
        return {k: v for k, v in headers.items() if k != header}

    return change


def _signed_with(other_secret: str) -> Callable[[dict[str, str], str], dict[str, str]]:
    def change(headers: dict[str, str], secret: str) -> dict[str, str]:
        body = json.dumps(tags_set()).encode()
        return standard_headers(other_secret, headers["webhook-id"], body)

    return change


def _stale(headers: dict[str, str], secret: str) -> dict[str, str]:
    body = json.dumps(tags_set()).encode()
    old = datetime.now(UTC) - timedelta(seconds=301)
    return standard_headers(secret, headers["webhook-id"], body, when=old)


def _future(headers: dict[str, str], secret: str) -> dict[str, str]:
    body = json.dumps(tags_set()).encode()
    ahead = datetime.now(UTC) + timedelta(seconds=400)
    return standard_headers(secret, headers["webhook-id"], body, when=ahead)


def _other_id(headers: dict[str, str], secret: str) -> dict[str, str]:
    # A signature is bound to its message id: replaying it under another id fails.
    return {**headers, "webhook-id": "msg_other"}


def _garbage_signature(headers: dict[str, str], secret: str) -> dict[str, str]:
    return {**headers, "webhook-signature": "v1,!!!notbase64 v2,abc"}


def _huge_timestamp(headers: dict[str, str], secret: str) -> dict[str, str]:
    return {**headers, "webhook-timestamp": "9" * 400}


def _text_timestamp(headers: dict[str, str], secret: str) -> dict[str, str]:
    return {**headers, "webhook-timestamp": "yesterday"}


@pytest.mark.parametrize(
    "change",
    [
        _missing("webhook-id"),
        _missing("webhook-signature"),
        _missing("webhook-timestamp"),
        _signed_with("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="),
        _stale,
        _future,
        _other_id,
        _garbage_signature,
        _huge_timestamp,
        _text_timestamp,
    ],
    ids=[
        "missing-id",
        "missing-signature",
        "missing-timestamp",
        "wrong-secret",
        "stale-timestamp",
        "future-timestamp",
        "signature-for-another-id",
        "malformed-signature",
        "huge-timestamp",
        "text-timestamp",
    ],
)
def test_bad_signature_headers_answer_401_and_store_nothing(
    app: Flask,
    client: FlaskClient,
    secret: str,
    change: Callable[[dict[str, str], str], dict[str, str]],
) -> None:
    body = json.dumps(tags_set()).encode()
    headers = change(standard_headers(secret, "msg_sig", body), secret)

    r = client.post(f"/hooks/{SLUG}", data=body, headers=headers)

    assert r.status_code == 401, r.json
    assert r.json["error"] == "invalid_signature"
    assert secret not in r.get_data(as_text=True)
    assert_nothing_stored(app)


def test_tampered_body_answers_401_and_stores_nothing(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    body = json.dumps(tags_set()).encode()
    headers = standard_headers(secret, "msg_tamper", body)
    tampered = body.replace(b'"101"', b'"999"')

    r = client.post(f"/hooks/{SLUG}", data=tampered, headers=headers)

    assert r.status_code == 401
    assert r.json["error"] == "invalid_signature"
    assert_nothing_stored(app)


def test_rotated_out_secret_works_inside_its_grace_period(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    _, new_secret = rotate_source(SLUG, None, grace_hours=24)
    db.session.commit()
    forget_sources()

    old = post_standard(client, SLUG, secret, tags_set(), "msg_old")
    new = post_standard(client, SLUG, new_secret, tags_set(), "msg_new")

    assert old.status_code == 202, old.json
    assert new.status_code == 202, new.json


def test_rotated_out_secret_is_refused_after_its_grace_period(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    _, new_secret = rotate_source(SLUG, None, grace_hours=24)
    db.session.commit()
    db.session.execute(
        update(SourceSecret)
        .where(SourceSecret.expires_at.is_not(None))
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    db.session.commit()
    forget_sources()

    r = post_standard(client, SLUG, secret, tags_set(), "msg_expired")

    assert r.status_code == 401
    assert r.json["error"] == "invalid_signature"
    assert_nothing_stored(app)
    assert post_standard(client, SLUG, new_secret, tags_set(), "msg_fresh").status_code == 202


def test_rotated_out_secret_stops_at_its_expiry_even_when_the_source_is_cached(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    rotate_source(SLUG, None, grace_hours=1.5 / 3600)
    db.session.commit()
    forget_sources()
    assert post_standard(client, SLUG, secret, tags_set(), "msg_in_grace").status_code == 202
    expires = db.session.execute(
        select(SourceSecret.expires_at).where(SourceSecret.expires_at.is_not(None))
    ).scalar_one()
    db.session.rollback()
    assert expires is not None
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)

    r = post_standard(client, SLUG, secret, tags_set(), "msg_after_grace")

    assert r.status_code == 401


def test_unknown_source_answers_404(app: Flask, client: FlaskClient) -> None:
    body = json.dumps(tags_set()).encode()
    r = client.post(
        "/hooks/nobody",
        data=body,
        headers=standard_headers("whsec_QUJDREVGR0hJSktMTU5PUA==", "m", body),
    )

    assert r.status_code == 404
    assert r.json == {"error": "unknown_source"}
    assert_nothing_stored(app)


def test_body_over_the_limit_answers_413(
    app: Flask, database_url: str, redis_server: Any, secret: str
) -> None:
    small = make_app(database_url, redis_server.url, GATEHOUSE_MAX_BODY=200)
    event = tags_set()
    event["tags"] = [str(n) for n in range(100)]
    body = json.dumps(event).encode()
    assert len(body) > 200

    r = small.test_client().post(
        f"/hooks/{SLUG}", data=body, headers=standard_headers(secret, "msg_big", body)
    )

    assert r.status_code == 413
    assert r.json["error"] == "body_too_large"
    assert_nothing_stored(app)


def test_body_within_the_limit_is_accepted_by_the_small_limit_app(
    app: Flask, database_url: str, redis_server: Any, secret: str
) -> None:
    small = make_app(database_url, redis_server.url, GATEHOUSE_MAX_BODY=400)
    body = json.dumps(tags_set()).encode()
    assert len(body) <= 400

    r = small.test_client().post(
        f"/hooks/{SLUG}", data=body, headers=standard_headers(secret, "msg_small", body)
    )

    assert r.status_code == 202, r.json


def test_form_content_type_answers_415(app: Flask, client: FlaskClient, secret: str) -> None:
    body = json.dumps(tags_set()).encode()
    headers = standard_headers(secret, "msg_form", body)
    headers["content-type"] = "application/x-www-form-urlencoded"

    r = client.post(f"/hooks/{SLUG}", data=body, headers=headers)

    assert r.status_code == 415
    assert r.json["error"] == "unsupported_media_type"
    assert_nothing_stored(app)


def test_json_with_charset_parameter_is_accepted(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    body = json.dumps(tags_set()).encode()
    headers = standard_headers(secret, "msg_charset", body)
    headers["content-type"] = "application/json; charset=utf-8"

    assert client.post(f"/hooks/{SLUG}", data=body, headers=headers).status_code == 202


def test_event_missing_a_required_field_answers_422_naming_it(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    event = load_fixture("standard", "contact.tags_set__missing_tags")

    r = post_standard(client, SLUG, secret, event, "msg_422")

    assert r.status_code == 422
    assert r.json["error"] == "invalid_event"
    assert list(r.json["detail"]) == ["tags"]
    assert_nothing_stored(app)


def test_invalid_contact_email_answers_422_naming_the_nested_field(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    event = tags_set()
    event["contact"]["email"] = "not-an-email"

    r = post_standard(client, SLUG, secret, event, "msg_email")

    assert r.status_code == 422
    assert r.json["detail"] == {"contact": {"email": ["Not a valid email address."]}}
    assert_nothing_stored(app)


def test_json_array_answers_422(app: Flask, client: FlaskClient, secret: str) -> None:
    r = post_standard(client, SLUG, secret, [tags_set()], "msg_list")  # type: ignore[arg-type]

    assert r.status_code == 422
    assert r.json["error"] == "invalid_event"
    assert_nothing_stored(app)


def test_nul_character_in_a_contact_id_answers_422(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    # PostgreSQL text cannot hold NUL: without this check the store fails and says 503,
    # and the sender would retry a poison event forever.
    event = load_fixture("standard", "contact.updated__nul_in_id")

    r = post_standard(client, SLUG, secret, event, "msg_nul")

    assert r.status_code == 422, r.json
    assert "contact" in r.json["detail"]
    assert_nothing_stored(app)


def test_occurred_at_outside_the_representable_range_answers_422(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    event = load_fixture("standard", "contact.updated__ancient_offset")

    r = post_standard(client, SLUG, secret, event, "msg_ancient")

    assert r.status_code == 422, r.json
    assert list(r.json["detail"]) == ["occurred_at"]
    assert_nothing_stored(app)


def test_unknown_event_type_is_stored_as_skipped_and_not_queued(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    r = post_standard(
        client, SLUG, secret, {"type": "invoice.paid", "contact": {"id": "1"}}, "msg_unknown"
    )

    assert r.status_code == 202
    event = db.session.get(Event, r.json["events"][0])
    assert event is not None
    assert event.status == "skipped"
    assert event.reason is not None and "invoice.paid" in event.reason
    assert rq_job_keys(app) == []


def test_store_failure_answers_503_with_retry_after_and_queues_nothing(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    with refusing_inserts("events"):
        r = post_standard(client, SLUG, secret, tags_set(), "msg_503")

    assert r.status_code == 503
    assert r.json["error"] == "unavailable"
    assert int(r.headers["Retry-After"]) > 0
    assert rq_job_keys(app) == []


def test_database_that_does_not_answer_gives_503_with_retry_after(
    app: Flask, redis_server: Any
) -> None:
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gatehouse"
    down = make_app(nowhere, redis_server.url)
    body = json.dumps(tags_set()).encode()

    r = down.test_client().post(
        f"/hooks/{SLUG}",
        data=body,
        headers=standard_headers("whsec_QUJDREVGR0hJSktMTU5PUA==", "msg_down", body),
    )

    assert r.status_code == 503
    assert r.json["error"] == "unavailable"
    assert int(r.headers["Retry-After"]) > 0
    assert rq_job_keys(app) == []


def test_batch_with_the_same_message_twice_in_quick_succession_stays_one_row(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    for _ in range(3):
        post_standard(client, SLUG, secret, tags_set(), "msg_thrice")

    rows = db.session.execute(select(Event.deliveries)).scalars().all()
    assert rows == [3]
    db.session.rollback()
    relay_all(app)
    assert len(rq_job_keys(app)) == 1
    assert db.session.execute(select(Source.slug)).scalars().all() == [SLUG]
    assert redis_client.get(app).ping()


def test_lone_surrogate_escape_answers_422_not_a_server_error(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    # Valid JSON, but no UTF-8 text: neither database can store it.
    body = (
        Path(__file__).parent.parent / "fixtures/standard/contact.updated__lone_surrogate.json"
    ).read_bytes()
    r = client.post(
        f"/hooks/{SLUG}", data=body, headers=standard_headers(secret, "msg_surrogate", body)
    )

    assert r.status_code == 422, r.json
    assert list(r.json["detail"]) == ["contact"]
    assert_nothing_stored(app)


def _inbound(header_second: int, received_at: datetime) -> Any:
    from gatehouse.webhooks.senders.base import Inbound

    return Inbound(
        method="POST",
        url="http://x/hooks/bridge",
        query={},
        headers={"webhook-timestamp": str(header_second)},
        body=b"{}",
        media_type="application/json",
        received_at=received_at,
    )


def test_default_occurred_at_is_the_receive_time_within_the_header_second() -> None:
    from gatehouse.webhooks.senders.standard import default_occurred_at

    second = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
    received = second + timedelta(microseconds=400_000)

    assert default_occurred_at(_inbound(int(second.timestamp()), received)) == received


def test_event_received_just_after_its_header_second_sorts_after_an_earlier_keap_post() -> None:
    from gatehouse.webhooks.senders.standard import default_occurred_at

    second = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
    keap_post_received = second + timedelta(microseconds=900_000)
    # Signed at 10:00:00.999 (header 10:00:00), received at 10:00:01.001.
    received = second + timedelta(seconds=1, microseconds=1_000)

    occurred = default_occurred_at(_inbound(int(second.timestamp()), received))

    assert keap_post_received < occurred < second + timedelta(seconds=1)


def test_event_received_before_its_header_second_keeps_the_header_time() -> None:
    from gatehouse.webhooks.senders.standard import default_occurred_at

    second = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
    early = second - timedelta(seconds=2)  # the sender's clock runs ahead of ours

    assert default_occurred_at(_inbound(int(second.timestamp()), early)) == second


def test_an_unexpected_error_on_the_fast_path_gets_flasks_json_500(
    app: Flask, client: FlaskClient, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.config["PROPAGATE_EXCEPTIONS"] = False  # answer as in production, not raise
    assert post_standard(client, SLUG, secret, tags_set(), "msg_ok").status_code == 202

    def bug(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug in a translation")

    # The source is cached now: this request starts on the fast path, which hands it to
    # Flask, whose error handling answers.
    monkeypatch.setattr(SENDERS["standard"], "translate", bug)
    r = post_standard(client, SLUG, secret, tags_set(), "msg_bug")
    assert r.status_code == 500
    assert r.is_json
    assert "Traceback" not in r.get_data(as_text=True)
    assert "a bug in a translation" not in r.get_data(as_text=True)


@contextmanager
def signals_sent(signal: NamedSignal, app: Flask, label: str) -> Iterator[list[str]]:
    """`label` once per time `app` sends `signal` inside the block."""
    sent: list[str] = []

    def receiver(sender: Any, **_: Any) -> None:
        sent.append(label)

    with signal.connected_to(receiver, app):
        yield sent


def test_an_accepted_event_from_a_cached_source_is_answered_in_front_of_flask(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    with signals_sent(request_started, app, "flask") as seen:
        first = post_standard(client, SLUG, secret, tags_set(), "msg_f1")  # fills the cache
        second = post_standard(client, SLUG, secret, tags_set(), "msg_f2")
        again = post_standard(client, SLUG, secret, tags_set(), "msg_f2")
    assert (first.status_code, second.status_code, again.status_code) == (202, 202, 200)
    assert seen == ["flask"]  # only the first, whose source was not cached yet
    assert second.json == {"status": "accepted", "events": second.json["events"]}
    assert again.json == {"status": "duplicate", "events": second.json["events"]}


def _post_as_gunicorn_does(client: FlaskClient, secret: str, msg_id: str) -> Any:
    """Post with no app context active, as a gunicorn worker serves a request (the test's
    own context lives in its context variables; an empty copy has none)."""
    return contextvars.Context().run(post_standard, client, SLUG, secret, tags_set(), msg_id)


def test_without_an_app_context_a_new_event_is_stored_without_pushing_one(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    assert _post_as_gunicorn_does(client, secret, "msg_c1").status_code == 202  # makes the insert
    with signals_sent(appcontext_pushed, app, "context") as pushed:
        r = _post_as_gunicorn_does(client, secret, "msg_c2")

    assert r.status_code == 202
    assert pushed == []
    stored = db.session.execute(select(Event).where(Event.external_id == "msg_c2")).scalar_one()
    assert r.json == {"status": "accepted", "events": [stored.id]}
    assert (stored.status, stored.deliveries, stored.type) == ("received", 1, "contact.tags_set")


def test_without_an_app_context_a_redelivery_is_answered_duplicate_in_front_of_flask(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    first = _post_as_gunicorn_does(client, secret, "msg_d1")
    with (
        signals_sent(request_started, app, "flask") as seen,
        signals_sent(appcontext_pushed, app, "context") as pushed,
    ):
        again = _post_as_gunicorn_does(client, secret, "msg_d1")

    assert (first.status_code, again.status_code) == (202, 200)
    assert seen == []  # the driver insert's own Core transaction counted the delivery
    assert pushed == []
    assert again.json == {"status": "duplicate", "events": first.json["events"]}
    stored = db.session.execute(select(Event).where(Event.external_id == "msg_d1")).scalar_one()
    assert stored.deliveries == 2
    assert event_count() == 1


def test_without_an_app_context_a_store_failure_answers_503(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    assert _post_as_gunicorn_does(client, secret, "msg_e1").status_code == 202
    with refusing_inserts("events"):
        r = _post_as_gunicorn_does(client, secret, "msg_e2")

    assert r.status_code == 503
    assert r.json["error"] == "unavailable"
    assert event_count() == 1


def test_a_dropped_database_connection_costs_the_sender_nothing(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    """The insert's held connection broke (a database restart): the view retries the
    request's store on a new one, and the sender gets its 202."""
    from gatehouse.webhooks import inbox

    assert post_standard(client, SLUG, secret, tags_set(), "msg_before").status_code == 202
    driver = inbox.driver_insert()
    driver.held.current.dbapi_connection.close()

    r = post_standard(client, SLUG, secret, tags_set(), "msg_after")
    assert r.status_code == 202, r.json
    assert event_count() == 2
