"""The accepted webhook, answered in front of Flask.

A burst (a campaign re-syncing 50,000 contacts, month-start renewals) is almost all one
case: a known source, a valid signature, a new event. Through Flask that case paid several
times the work that is its own: a request context, URL routing, before/after hooks, a
Response object. This WSGI middleware runs the receive view's own steps (`inbound_from`,
`checked_events`, `store`, `answer` in `gatehouse.webhooks.views`) for `POST /hooks/<slug>`
and answers 202 (or 200 for a duplicate) itself.

Anything else goes to Flask with the body it read, and the view answers exactly as before:
a source not in the process's source cache (the view looks it up and caches it), a
handshake, a body without Content-Length or over the limit, any rejection (401, 415, 422 …),
a database error (503). Those answers and their log events stay the view's alone; the view
runs its steps again from the start, which only costs on the rare path.

Kept on this path: the `webhook.accepted` / `webhook.duplicate` log event and the request
log line (same fields as Flask's), the received counter.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable
from typing import Any

from flask import Flask, current_app, has_app_context
from werkzeug.wrappers import Request

from gatehouse.extensions import db
from gatehouse.fastpath import StartResponse, WSGIApp, json_answer
from gatehouse.request_log import log_request
from gatehouse.webhooks.group import parking
from gatehouse.webhooks.inbox import DRIVER_INSERT, DriverInsert
from gatehouse.webhooks.senders import SENDERS
from gatehouse.webhooks.source_cache import cached_source
from gatehouse.webhooks.views import (
    answer,
    checked_events,
    inbound_from,
    inbound_from_environ,
    log_answer,
    store,
)

PREFIX = "/hooks/"
ENDPOINT = "webhooks.receive"


class HookFastPath:
    def __init__(self, app: Flask, wsgi_app: WSGIApp) -> None:
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "POST" and path.startswith(PREFIX):
            answered = self._accept(path[len(PREFIX) :], environ, start_response)
            if answered is not None:
                return answered
        return self.wsgi_app(environ, start_response)

    def _accept(
        self, slug: str, environ: dict[str, Any], start_response: StartResponse
    ) -> list[bytes] | None:
        started = time.perf_counter()
        source = cached_source(self.app, slug)
        if source is None or source.kind not in SENDERS:
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            return None
        config = self.app.config
        if not 0 <= length <= config["GATEHOUSE_MAX_BODY"]:
            return None
        body = environ["wsgi.input"].read(length)
        # Whatever happens next, Flask can read the body again.
        environ["wsgi.input"] = io.BytesIO(body)
        sender = SENDERS[source.kind]
        if environ.get("QUERY_STRING") or sender.signs_url:
            inbound = inbound_from(
                Request(environ), body, config["GATEHOUSE_PUBLIC_URL"], sender.signs_url
            )
        else:
            inbound = inbound_from_environ(environ, body)
        # A gunicorn worker serves each request with no app context active. Once its
        # first store has made the driver insert, the store needs none either: pushing
        # and popping one (Flask-SQLAlchemy's teardown included) was 6% of the request's
        # CPU in-process.
        active = has_app_context()
        inserter: DriverInsert | None = None if active else self.app.extensions.get(DRIVER_INSERT)
        # As Flask does for a request: reuse this app's context when one is active (a
        # test, a CLI), so a transaction already open there is the one the store joins.
        context = None
        if inserter is None and (
            not active or current_app._get_current_object() is not self.app  # type: ignore[attr-defined]
        ):
            context = self.app.app_context()
            context.push()
        try:
            if sender.handshake(inbound, source) is not None:
                return None
            events = checked_events(
                sender, inbound, source, config["GATEHOUSE_SIGNATURE_TOLERANCE"], []
            )
            if not events:
                return None
            stored = store(
                source, events, inbound, None if inserter is None else parking(inserter, self.app)
            )
        except Exception:  # noqa: BLE001 - not swallowed: a rejection, a database error or a
            # bug, Flask runs the same steps again and answers (and logs) it, a bug with its
            # own error handling (a JSON 500, never a stack trace).
            if inserter is None:
                db.session.rollback()
            return None
        finally:
            if context is not None:
                context.pop()
        payload, status, event = answer(stored)
        log_answer(event, slug, stored, started)
        log_request("POST", environ.get("PATH_INFO"), ENDPOINT, status, started, source=slug)
        return json_answer(
            start_response,
            "202 ACCEPTED" if status == 202 else "200 OK",
            json.dumps(payload).encode(),
        )


def init_app(app: Flask) -> None:
    app.wsgi_app = HookFastPath(app, app.wsgi_app)  # type: ignore[method-assign]
