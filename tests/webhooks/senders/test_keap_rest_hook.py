"""Keap REST hooks: URL key, the X-Hook-Secret handshake, thin payloads fetched by a worker.

Keap's API is played by a real HTTP server on 127.0.0.1 started by the test. Keap signs
nothing and sends no timestamp header: the key in the URL is the only credential, so
there is no stale-timestamp or tampered-body case (the key does not cover the body).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gatehouse.devtools import StubKeapApi
from gatehouse.webhooks.senders.keap_http_post import make_key
from gatehouse.webhooks.senders.keap_rest_hook import hook_url_query
from tests.helpers import create_source, post_standard, run_worker
from tests.webhooks.senders.support import (
    event_count,
    fixture_bytes,
    fixture_json,
    member_by_contact,
    provision_member,
    rotate,
    stored_events,
)

SLUG = "keaphook"
CRM = "keap"
TOKEN = "KeapAK-test-personal-access-token"


class FakeKeapApi(StubKeapApi):
    def __init__(self) -> None:
        self.contacts: dict[str, dict[str, Any]] = {}
        self.broken: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        super().__init__(self._answer)

    def _answer(self, path: str, api_key: str | None) -> tuple[int, dict[str, Any]]:
        self.requests.append((path, api_key))
        contact_id = self.contact_id(path)
        if contact_id in self.broken:
            return 500, {"message": "Internal Server Error"}
        if contact_id in self.contacts:
            return 200, self.contacts[contact_id]
        return 404, {"message": f"Contact {contact_id} not found"}

    @property
    def base_url(self) -> str:
        return f"{self.url}/crm/rest/v1"


@pytest.fixture
def keap_api(app: Flask) -> Iterator[FakeKeapApi]:
    with FakeKeapApi() as api:
        app.config["KEAP_API_BASE_URL"] = api.base_url
        app.config["KEAP_API_TOKEN"] = TOKEN
        yield api


@pytest.fixture
def secret(app: Flask) -> str:
    return create_source(SLUG, "keap-rest-hook", crm=CRM)


def hook_url(secret: str, slug: str = SLUG) -> str:
    return f"/hooks/{slug}?{hook_url_query(secret, slug)}"


def post(client: FlaskClient, url: str, body: bytes) -> Any:
    return client.post(url, data=body, headers={"Content-Type": "application/json"})


def handshake(client: FlaskClient, url: str, value: str = "hs-4f1c2a") -> Any:
    return client.post(url, data=b"", headers={"X-Hook-Secret": value})


# --- the URL and the handshake ----------------------------------------------------------


def test_sources_add_prints_one_url_with_its_key_that_answers_the_handshake(
    app: Flask, client: FlaskClient
) -> None:
    result = app.test_cli_runner().invoke(
        args=["sources", "add", SLUG, "--kind", "keap-rest-hook", "--crm", CRM]
    )
    assert result.exit_code == 0, result.output
    urls = [line.strip() for line in result.output.splitlines() if "/hooks/" in line]
    assert len(urls) == 1
    assert urls[0].startswith(f"http://127.0.0.1:8000/hooks/{SLUG}?resthook=")
    path = urls[0].removeprefix("http://127.0.0.1:8000")
    r = handshake(client, path, "secret-from-keap")
    assert r.status_code == 200
    assert r.headers["X-Hook-Secret"] == "secret-from-keap"


def test_handshake_echoes_the_hook_secret_and_stores_nothing(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    r = handshake(client, hook_url(secret), "8f14e45fceea167a")
    assert r.status_code == 200
    assert r.headers["X-Hook-Secret"] == "8f14e45fceea167a"
    assert event_count() == 0


def test_handshake_without_the_key_is_401(app: Flask, client: FlaskClient, secret: str) -> None:
    r = handshake(client, f"/hooks/{SLUG}")
    assert r.status_code == 401
    assert r.json["error"] == "invalid_signature"
    assert "X-Hook-Secret" not in r.headers


def test_handshake_with_a_key_for_another_command_is_401(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    r = handshake(client, f"/hooks/{SLUG}?resthook={make_key(secret, SLUG, 'genpass')}")
    assert r.status_code == 401


def test_handshake_with_another_sources_key_is_401(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    other = create_source("otherhook", "keap-rest-hook", crm=CRM)
    r = handshake(client, f"/hooks/{SLUG}?{hook_url_query(other, 'otherhook')}")
    assert r.status_code == 401


# --- receiving --------------------------------------------------------------------------


def test_missing_key_is_401_and_stores_nothing(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    r = post(
        client, f"/hooks/{SLUG}", fixture_bytes("keap-rest-hook", "contact.edit__two_contacts")
    )
    assert r.status_code == 401
    assert event_count() == 0


def test_key_made_with_a_wrong_secret_is_401(app: Flask, client: FlaskClient, secret: str) -> None:
    url = hook_url("not-the-secret")
    assert (
        post(client, url, fixture_bytes("keap-rest-hook", "contact.add__single")).status_code == 401
    )
    assert event_count() == 0


def test_rotated_out_key_works_during_its_grace_period(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    rotate(SLUG, "the-new-keap-secret")
    body = fixture_bytes("keap-rest-hook", "contact.add__single")
    assert post(client, hook_url(secret), body).status_code == 202
    assert post(client, hook_url("the-new-keap-secret"), body).status_code == 200


def test_thin_payload_is_one_fetch_event_per_object(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    r = post(
        client, hook_url(secret), fixture_bytes("keap-rest-hook", "contact.edit__two_contacts")
    )
    assert r.status_code == 202, r.json
    assert len(r.json["events"]) == 2
    events = stored_events()
    assert [(e.external_id, e.type, e.contact_key) for e in events] == [
        ("contact.edit:2729:2026-11-22T10:00:00.000Z", "contact.fetch", "keap:2729"),
        ("contact.edit:2877:2026-11-22T10:00:01.000Z", "contact.fetch", "keap:2877"),
    ]
    assert events[0].occurred_at.isoformat().startswith("2026-11-22T10:00:00")


def test_redelivery_is_a_duplicate(app: Flask, client: FlaskClient, secret: str) -> None:
    body = fixture_bytes("keap-rest-hook", "contact.edit__two_contacts")
    post(client, hook_url(secret), body)
    r = post(client, hook_url(secret), body)
    assert r.status_code == 200
    assert r.json["status"] == "duplicate"


def test_contact_delete_needs_no_fetch(app: Flask, client: FlaskClient, secret: str) -> None:
    post(client, hook_url(secret), fixture_bytes("keap-rest-hook", "contact.delete__single"))
    (event,) = stored_events()
    assert (event.type, event.payload["contact"]["id"]) == ("contact.deleted", "2729")


@pytest.mark.parametrize(
    ("fixture", "reason"),
    [
        ("invoice.payment.add__single", "Keap invoice.payment.add is ignored"),
        ("opportunity.add__unknown_type", "'keap.opportunity.add' is not handled"),
    ],
)
def test_ignored_and_unknown_keys_are_stored_skipped_with_a_reason(
    app: Flask, client: FlaskClient, secret: str, fixture: str, reason: str
) -> None:
    assert post(client, hook_url(secret), fixture_bytes("keap-rest-hook", fixture)).status_code
    (event,) = stored_events()
    assert event.status == "skipped"
    assert reason in (event.reason or "")


def test_object_without_timestamp_is_422(app: Flask, client: FlaskClient, secret: str) -> None:
    data = fixture_json("keap-rest-hook", "contact.add__single")
    del data["object_keys"][0]["timestamp"]
    r = post(client, hook_url(secret), json.dumps(data).encode())
    assert r.status_code == 422
    assert r.json["detail"] == {"object_keys.0.timestamp": ["required"]}


def test_a_standard_source_cannot_post_the_internal_fetch_type(
    app: Flask, client: FlaskClient
) -> None:
    std = create_source("bridge", "standard", crm=CRM)
    event = {"type": "contact.fetch", "contact": {"id": "2729"}}
    assert post_standard(client, "bridge", std, event, "msg-fetch").status_code == 202
    (stored,) = stored_events()
    assert stored.status == "skipped"


# --- fetching ---------------------------------------------------------------------------


def test_without_credentials_fetch_events_end_skipped_saying_what_to_set(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    app.config["KEAP_API_TOKEN"] = None
    post(client, hook_url(secret), fixture_bytes("keap-rest-hook", "contact.add__single"))
    run_worker(app)
    (event,) = stored_events()
    assert event.status == "skipped"
    assert "KEAP_API_TOKEN" in (event.reason or "")


def test_end_to_end_fetched_contact_sets_tags_and_profile(
    app: Flask, client: FlaskClient, secret: str, keap_api: FakeKeapApi
) -> None:
    keap_api.contacts["2729"] = fixture_json("keap-rest-hook", "contact__api_response")
    provision_member(client, CRM, "2729", "old@example.com", tags=["999"])
    post(client, hook_url(secret), fixture_bytes("keap-rest-hook", "contact.add__single"))
    run_worker(app)
    member = member_by_contact(client, CRM, "2729")
    assert member["tags"] == ["keap:101", "keap:205"]
    assert member["email"] == "jane@example.com"  # EMAIL1, not the first listed
    assert member["name"] == "Jane Doe"
    path, key = keap_api.requests[0]
    assert path.startswith("/crm/rest/v1/contacts/2729?")
    assert key == TOKEN


def test_fetched_contact_without_a_member_is_kept_and_creates_none(
    app: Flask, client: FlaskClient, secret: str, keap_api: FakeKeapApi
) -> None:
    keap_api.contacts["2729"] = fixture_json("keap-rest-hook", "contact__api_response")
    post(client, hook_url(secret), fixture_bytes("keap-rest-hook", "contact.add__single"))
    run_worker(app)
    (event,) = stored_events()
    assert event.status == "skipped"
    assert "no member is linked to contact keap:2729" in (event.reason or "")
    # The tags were kept: a later genpass for the contact finds them.
    provision_member(client, CRM, "2729", "jane@example.com")
    run_worker(app)
    assert member_by_contact(client, CRM, "2729")["tags"] == ["keap:101", "keap:205"]


def test_contact_gone_from_keap_ends_skipped(
    app: Flask, client: FlaskClient, secret: str, keap_api: FakeKeapApi
) -> None:
    post(client, hook_url(secret), fixture_bytes("keap-rest-hook", "contact.add__single"))
    run_worker(app)
    (event,) = stored_events()
    assert event.status == "skipped"
    assert "Keap has no contact 2729" in (event.reason or "")


def test_keap_error_fails_the_job_with_the_error_kept(
    app: Flask, client: FlaskClient, secret: str, keap_api: FakeKeapApi
) -> None:
    keap_api.broken.add("2729")
    post(client, hook_url(secret), fixture_bytes("keap-rest-hook", "contact.add__single"))
    run_worker(app)  # no retries configured in tests: the first failure is the last
    (event,) = stored_events()
    assert event.status == "failed"
    assert "Keap answered 500 for contact 2729" in (event.last_error or "")
