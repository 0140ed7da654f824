"""Webhooks that arrive together are stored by one insert (gatehouse.webhooks.group), and
each is answered as it would have been alone.

The in-process tests start each request in a greenlet of its own, as the web worker
(`gatehouse.serving.GroupCommitWorker`) does, and flush the group themselves, so they can
look between the park and the flush. The last test runs the real worker under gunicorn.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from greenlet import greenlet
from rq.job import Job
from sqlalchemy import create_engine, select

from gatehouse.extensions import db, redis_client
from gatehouse.models import Event
from gatehouse.queue.enqueue import get_queue
from gatehouse.queue.relay import relay_pending
from gatehouse.webhooks import group
from tests.helpers import (
    cli_standard_source,
    create_source,
    event_count,
    gunicorn_serving,
    load_fixture,
    post_standard,
    refusing_inserts,
    served_app_env,
    standard_headers,
)
from tests.ops.test_metrics import samples, scrape, value

SLUG = "grouped"


@pytest.fixture
def secret(app: Flask, client: FlaskClient) -> str:
    made = create_source(SLUG, "standard", crm="keap")
    # A worker's first accepted request makes its driver insert, through Flask; only the
    # requests after it can park.
    assert _post_alone(client, made, "warm-up").status_code == 202
    return made


def _tags_set(tag: str = "gold") -> dict[str, Any]:
    event = dict(load_fixture("standard", "contact.tags_set__basic"))
    event["tags"] = [tag]
    return event


def _post_alone(client: FlaskClient, secret: str, msg_id: str) -> Any:
    answers: list[Any] = []
    # A greenlet starts with no app context, as a gunicorn worker serves a request.
    greenlet(
        lambda: answers.append(post_standard(client, SLUG, secret, _tags_set(), msg_id))
    ).switch()
    return answers[0]


class Round:
    """Requests started as the worker starts them (in kept greenlets, `group.Slots`), parked
    until `answer` resumes them."""

    def __init__(self, client: FlaskClient, secret: str) -> None:
        self.client = client
        self.secret = secret
        self.answers: dict[int, Any] = {}
        self.waiting: list[Any] = []
        self.slots = group.Slots(lambda post: post())

    def start(self, msg_id: str, tag: str = "gold") -> None:
        index = len(self.answers) + len(self.waiting)

        def post() -> None:
            self.answers[index] = post_standard(
                self.client, SLUG, self.secret, _tags_set(tag), msg_id
            )

        started = self.slots.start(post)
        if started is not None:
            self.waiting.append(started)

    def answer(self) -> list[Any]:
        for request in self.waiting:
            self.slots.resume(request)
        return [self.answers[i] for i in sorted(self.answers)]


def _groups(client: FlaskClient) -> tuple[float, float]:
    s = scrape(client)
    return (
        value(s, "gatehouse_webhook_group_requests_count"),
        value(s, "gatehouse_webhook_group_requests_sum"),
    )


def _stored(external_id: str) -> Event:
    found = db.session.execute(select(Event).where(Event.external_id == external_id)).scalar_one()
    db.session.rollback()
    return found


def test_parked_webhooks_are_answered_only_after_one_insert_has_stored_them_all(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    groups_before = _groups(client)
    with group.collecting() as parked:
        requests = Round(client, secret)
        for i in range(5):
            requests.start(f"msg_g{i}")
        assert len(parked) == 5
        assert requests.answers == {}  # nobody answered yet
        assert event_count() == 1  # the warm-up only: nothing of theirs written
        parked.flush()
        answers = requests.answer()

    assert [a.status_code for a in answers] == [202] * 5
    for i, answer in enumerate(answers):
        stored = _stored(f"msg_g{i}")
        assert answer.json == {"status": "accepted", "events": [stored.id]}
        assert (stored.status, stored.deliveries, stored.type) == (
            "queued",
            1,
            "contact.tags_set",
        )
        assert stored.payload["tags"] == ["gold"]
    assert event_count() == 6
    count, total = _groups(client)
    assert (count - groups_before[0], total - groups_before[1]) == (1, 5)  # one insert, five rows


def test_a_group_queues_the_jobs_of_what_it_stored_after_answering(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    """Stored `queued`, so no relay claims them, and their jobs queued by the group itself
    once they are answered: a redelivery in the group gets no second job."""
    queue = get_queue(app)
    _post_alone(client, secret, "msg_known")
    assert relay_pending(app) == 2  # the warm-up and msg_known, stored alone: `received`
    with app.app_context():
        before = queue.job_ids
    with group.collecting() as parked:
        requests = Round(client, secret)
        requests.start("msg_known")
        for i in range(3):
            requests.start(f"msg_q{i}")
        parked.flush()
        requests.answer()
        with app.app_context():
            assert queue.job_ids == before  # answered, nothing queued yet
        parked.enqueue()

    ids = [_stored(f"msg_q{i}").id for i in range(3)]
    with app.app_context():
        assert queue.job_ids == [*before, *ids]
        assert all(Job.fetch(i, connection=redis_client.get(app)).args == (i,) for i in ids)
    assert {_stored(f"msg_q{i}").status for i in range(3)} == {"queued"}
    db.session.rollback()  # reading .status began a transaction (on SQLite, the write lock)
    assert relay_pending(app) == 0  # nothing `received` of theirs for a relay to claim


def test_when_redis_refuses_a_groups_jobs_the_relay_gets_its_events(
    app: Flask, client: FlaskClient, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handed back (`received` again) for the relay, which queues them once Redis takes
    jobs; and for a while the worker stores its groups `received` without trying Redis."""
    monkeypatch.setattr(group, "_enqueue_paused_until", 0.0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens there once this closes
    nowhere = redis.Redis(port=closed_port, socket_connect_timeout=0.5, socket_timeout=0.5)
    monkeypatch.setitem(app.extensions, "gatehouse.redis_web", nowhere)
    queue = get_queue(app)
    for round_ in ("refused", "paused"):
        with group.collecting() as parked:
            requests = Round(client, secret)
            requests.start(f"msg_{round_}")
            parked.flush()
            # Refused: stored `queued`, handed back below. Paused: stored `received` at once,
            # with nothing for this group to queue, so Redis is not tried.
            assert len(parked.queued) == (1 if round_ == "refused" else 0)
            [answer] = requests.answer()
            parked.enqueue()
        assert answer.status_code == 202
        assert _stored(f"msg_{round_}").status == "received"
        db.session.rollback()
    assert group._enqueue_paused_until > time.monotonic()

    assert relay_pending(app) == 3  # and the warm-up, stored alone (`received`)
    with app.app_context():
        assert {_stored(f"msg_{r}").id for r in ("refused", "paused")} <= set(queue.job_ids)


def test_a_redelivery_and_a_repeat_inside_one_group_are_answered_duplicate_and_counted(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    first = _post_alone(client, secret, "msg_known")
    with group.collecting() as parked:
        requests = Round(client, secret)
        requests.start("msg_known")  # delivered before
        requests.start("msg_twice")
        requests.start("msg_twice")  # the sender's retry, racing its first try
        requests.start("msg_new")
        parked.flush()
        known, twice, again, new = requests.answer()

    assert (known.status_code, twice.status_code, again.status_code, new.status_code) == (
        200,
        202,
        200,
        202,
    )
    assert known.json == {"status": "duplicate", "events": first.json["events"]}
    assert again.json == {"status": "duplicate", "events": twice.json["events"]}
    assert _stored("msg_known").deliveries == 2
    assert _stored("msg_twice").deliveries == 2
    assert _stored("msg_new").deliveries == 1
    assert event_count() == 4  # warm-up, known, twice, new


def test_when_the_group_insert_fails_every_request_is_answered_as_a_failed_store(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    with refusing_inserts("events"), group.collecting() as parked:
        requests = Round(client, secret)
        for i in range(3):
            requests.start(f"msg_f{i}")
        parked.flush()
        answers = requests.answer()

    assert [a.status_code for a in answers] == [503] * 3
    assert all(a.json["error"] == "unavailable" for a in answers)
    assert event_count() == 1


def test_after_a_failed_group_insert_each_request_is_stored_on_its_own(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    """The database refused the group's insert, then recovered: each request goes the way
    of a failed insert (Flask's view, its own store), so none is lost or doubled."""
    with group.collecting() as parked:
        requests = Round(client, secret)
        for i in range(3):
            requests.start(f"msg_r{i}")
        with refusing_inserts("events"):
            parked.flush()
        answers = requests.answer()

    assert [a.status_code for a in answers] == [202] * 3
    for i, answer in enumerate(answers):
        assert answer.json["events"] == [_stored(f"msg_r{i}").id]
    assert event_count() == 4


def test_a_request_the_worker_does_not_run_in_a_greenlet_is_stored_at_once(
    app: Flask, client: FlaskClient, secret: str
) -> None:
    with group.collecting() as parked:
        # Posted from the worker's own greenlet: nothing could resume it, so it must not park.
        r = post_standard(client, SLUG, secret, _tags_set(), "msg_main")
        assert len(parked) == 0
    assert r.status_code == 202
    assert r.json["events"] == [_stored("msg_main").id]


def _signed_post(secret: str, msg_id: str) -> bytes:
    body = json.dumps(_tags_set()).encode()
    headers = standard_headers(secret, msg_id, body)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST /hooks/{SLUG} HTTP/1.1\r\nHost: gatehouse\r\nContent-Length: {len(body)}\r\n"
        f"{head}\r\n"
    ).encode() + body


def _answer(conn: socket.socket) -> tuple[int, Any]:
    conn.settimeout(20)
    answer = http.client.HTTPResponse(conn)
    answer.begin()
    return answer.status, json.loads(answer.read() or b"null")


@dataclass
class Served:
    port: int
    secret: str
    database: str
    held_rest: bytes = b""

    def post(self, msg_id: str, hold_last_byte: bool = False) -> socket.socket:
        request = _signed_post(self.secret, msg_id)
        conn = socket.create_connection(("127.0.0.1", self.port))
        conn.sendall(request[:-1] if hold_last_byte else request)
        if hold_last_byte:
            self.held_rest = request[-1:]
        return conn

    def groups(self) -> tuple[float, float]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", "/metrics")
        scraped = samples(conn.getresponse().read().decode())
        return (
            value(scraped, "gatehouse_webhook_group_requests_count"),
            value(scraped, "gatehouse_webhook_group_requests_sum"),
        )

    def stored(self) -> dict[str, tuple[int, str]]:
        """{external id: (deliveries, event id)}"""
        engine = create_engine(self.database)
        with engine.connect() as connection:
            rows = connection.execute(select(Event.external_id, Event.deliveries, Event.id)).all()
        engine.dispose()
        return {external_id: (deliveries, event_id) for external_id, deliveries, event_id in rows}


@pytest.fixture
def served(tmp_path: Path, redis_server: Any) -> Iterator[Served]:
    """gunicorn with the Procfile's worker class and config, one worker process, after one
    accepted webhook (a worker's first makes its driver insert, through Flask)."""
    env, database = served_app_env(tmp_path, redis_server)
    secret = cli_standard_source(env, SLUG)
    with gunicorn_serving(
        "wsgi:app", "--config", "gunicorn.conf.py", "--workers", "1", env=env
    ) as port:
        server = Served(port, secret, database)
        assert _answer(server.post("warm-up"))[0] == 202
        assert server.groups() == (0, 0)
        yield server


def test_the_web_worker_stores_the_webhooks_waiting_together_in_one_insert(
    served: Served,
) -> None:
    """A first client sends all of its request but the last byte, so the worker waits on it
    while seventeen more queue up (sixteen new events and a retry of one of them). Once the
    last byte arrives, the worker parks that request, takes fifteen more (a group holds 16
    connections) and stores them with one insert; then the other two, the retry among them."""
    holder = served.post("held", hold_last_byte=True)
    time.sleep(0.3)  # the worker is now reading the holder's body
    sent = [f"q{i}" for i in range(16)] + ["q3"]
    queued = [served.post(msg_id) for msg_id in sent]
    time.sleep(0.3)
    holder.sendall(served.held_rest)

    answers = [_answer(conn) for conn in [holder, *queued]]

    assert [status for status, _ in answers] == [202] * 17 + [200]
    assert answers[-1][1] == {"status": "duplicate", "events": answers[4][1]["events"]}
    assert served.groups() == (2, 18)
    stored = served.stored()
    assert len(stored) == 18  # warm-up, held, q0..q15: each once
    assert stored["q3"][0] == 2
    for (_status, body), msg_id in zip(answers[:17], ["held", *sent[:16]], strict=True):
        assert body["events"] == [stored[msg_id][1]]


def test_a_client_that_has_not_sent_its_request_ends_the_group(served: Served) -> None:
    """Its request is read after the group has been answered: a slow client holds no
    group's answers. The requests queued behind it form the next group. A read queued
    among the webhooks is served and parks nothing."""
    holder = served.post("held", hold_last_byte=True)
    time.sleep(0.3)
    before = [served.post(f"b{i}") for i in range(3)]
    health = socket.create_connection(("127.0.0.1", served.port))
    health.sendall(b"GET /healthz HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
    idle = socket.create_connection(("127.0.0.1", served.port))
    after = [served.post(f"a{i}") for i in range(3)]
    time.sleep(0.3)
    holder.sendall(served.held_rest)

    # The group of four is answered while the idle client has still sent nothing; the read
    # among them parks nothing and is answered too.
    assert [_answer(conn)[0] for conn in [holder, *before, health]] == [202] * 4 + [200]
    idle.sendall(_signed_post(served.secret, "idle"))
    assert _answer(idle)[0] == 202
    assert [_answer(conn)[0] for conn in after] == [202] * 3
    assert served.groups() == (2, 7)  # 4, then 3; the idle client's request stored alone
    assert len(served.stored()) == 9
