"""POST /hooks/<slug>: a fixed sequence of steps, each with its own answer and log event.

find source -> size and content type -> verify raw bytes -> parse -> validate/translate
-> store -> commit -> answer. The relay (gatehouse.queue.relay) queues what was stored.

The common case (a cached source, a request that is accepted) is answered by the same steps
in `gatehouse.webhooks.fastpath`, in front of Flask; anything else ends here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.http import parse_options_header
from werkzeug.wrappers import Request

from gatehouse import metrics
from gatehouse.extensions import db
from gatehouse.models import utcnow
from gatehouse.webhooks.errors import (
    BodyTooLarge,
    HookError,
    UnknownSource,
    UnsupportedMediaType,
)
from gatehouse.webhooks.inbox import EventStore, Stored, store_and_commit
from gatehouse.webhooks.senders import SENDERS, Inbound
from gatehouse.webhooks.senders.base import CanonicalEvent, Sender, SourceInfo, check_storable
from gatehouse.webhooks.source_cache import find_source

bp = Blueprint("webhooks", __name__)
log = logging.getLogger("gatehouse.webhooks")

# Headers never stored with an event: they carry secrets or keys.
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "cookie",
        "x-hook-secret",
        "stripe-signature",
        "webhook-signature",
        "x-hubspot-signature",
        "x-hubspot-signature-v3",
        "x-ghl-signature",
        "x-wh-signature",
        "x-webhook-clickfunnels-signature",
    }
)


def _error(exc: HookError, slug: str, step: str) -> Response:
    log.info(
        f"webhook.{step}_rejected",
        extra={"source": slug, "status": exc.status, "error": exc.code},
    )
    response = jsonify(exc.body())
    response.status_code = exc.status
    return response


def _read_body(req: Request, limit: int) -> bytes:
    declared = req.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge()
    body = req.stream.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge()
    return body


def inbound_from(req: Request, body: bytes, public_url: str, with_url: bool = True) -> Inbound:
    """The request as senders see it; `req` is Flask's request or, on the fast path, a plain
    Werkzeug request over the same environ, so both paths build the same Inbound."""
    if not with_url:
        url = ""  # werkzeug's IRI-decoding URL is a tenth of a request; only HubSpot signs it
    elif public_url:
        query = req.query_string.decode("latin-1")
        url = f"{public_url}{req.path}" + (f"?{query}" if query else "")
    else:
        url = req.url
    return inbound_from_environ(req.environ, body, url, req.args)


_NO_QUERY: ImmutableMultiDict[str, str] = ImmutableMultiDict()


def inbound_from_environ(
    environ: dict[str, Any],
    body: bytes,
    url: str = "",
    query: Mapping[str, str] = _NO_QUERY,
) -> Inbound:
    """The request read from the WSGI environ; its URL and query string come from
    `inbound_from` when it has them. Called directly, this is the fast path's usual case (no
    query string, a sender that does not sign the URL) without a werkzeug Request and its
    cached properties (3% of an accepted request's CPU). Method and media type are read
    as werkzeug reads them."""
    return Inbound(
        method=environ.get("REQUEST_METHOD", "GET").upper(),
        url=url,
        query=query,
        headers=environ_headers(environ),
        body=body,
        media_type=parse_options_header(environ.get("CONTENT_TYPE", ""))[0].lower(),
        received_at=utcnow(),
    )


_BODY_HEADERS = {"CONTENT_TYPE": "content-type", "CONTENT_LENGTH": "content-length"}
_NOT_HEADERS = frozenset({"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"})


def environ_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's headers, names lower-cased: what `{k.lower(): v for k, v in
    request.headers.items()}` gives (werkzeug's rules), without its generator and `title()`
    per header, a twentieth of an accepted request."""
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key not in _NOT_HEADERS:
                headers[key[5:].replace("_", "-").lower()] = value
        elif key in _BODY_HEADERS and value:
            headers[_BODY_HEADERS[key]] = value
    return headers


def checked_events(
    sender: Sender, inbound: Inbound, source: SourceInfo, tolerance: int, steps: list[str]
) -> list[CanonicalEvent]:
    """verify -> parse -> validate/translate; raises the step's HookError. `steps` records
    the step reached, for the rejection's log event."""
    if inbound.media_type not in sender.media_types:
        raise UnsupportedMediaType(
            f"{source.kind} takes " + ", ".join(sorted(m or "(none)" for m in sender.media_types))
        )
    steps.append("verify")
    sender.verify(inbound, source, tolerance)
    steps.append("parse")
    parsed = sender.parse(inbound)
    steps.append("validate")
    events = sender.translate(parsed, inbound, source)
    check_storable(events)
    return events


def store(
    source: SourceInfo,
    events: list[CanonicalEvent],
    inbound: Inbound,
    inserter: EventStore | None = None,
) -> Stored:
    """Store and commit; the relay queues the new events (gatehouse.queue.relay). With
    `inserter` (the fast path, no app context active) straight on the driver insert, or
    parked in the web worker's group (`gatehouse.webhooks.group`)."""
    headers = {k: v for k, v in inbound.headers.items() if k not in SECRET_HEADERS}
    if inserter is not None:
        stored = inserter.store(source, events, headers)
    else:
        stored = store_and_commit(source, events, headers)
    metrics.count_received(source.slug, [e.type for e in events])
    return stored


def answer(stored: Stored) -> tuple[dict[str, Any], int, str]:
    """The body, status and log event of a stored request."""
    duplicate = not stored.new_ids and stored.duplicates == len(stored.ids)
    if duplicate:
        return {"status": "duplicate", "events": stored.ids}, 200, "webhook.duplicate"
    return {"status": "accepted", "events": stored.ids}, 202, "webhook.accepted"


def log_answer(event: str, slug: str, stored: Stored, started: float) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(
            event,
            extra={
                "source": slug,
                "events": len(stored.ids),
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )


@bp.post("/hooks/<slug>")
def receive(slug: str) -> Response | tuple[Response, int]:
    started = time.perf_counter()
    steps = ["source"]
    try:
        source = find_source(slug)
        if source is None or source.kind not in SENDERS:
            raise UnknownSource()
        sender = SENDERS[source.kind]

        steps.append("limits")
        body = _read_body(request, current_app.config["GATEHOUSE_MAX_BODY"])
        inbound = inbound_from(
            request, body, current_app.config["GATEHOUSE_PUBLIC_URL"], sender.signs_url
        )
        handshake = sender.handshake(inbound, source)
        if handshake is not None:
            return handshake
        events = checked_events(
            sender, inbound, source, current_app.config["GATEHOUSE_SIGNATURE_TOLERANCE"], steps
        )
    except HookError as exc:
        db.session.rollback()
        return _error(exc, slug, steps[-1])
    except SQLAlchemyError:
        db.session.rollback()
        log.warning("webhook.source_lookup_failed", extra={"source": slug}, exc_info=True)
        return _unavailable(503)

    if not events:
        return jsonify({"status": "accepted", "events": []}), 202

    try:
        stored = store(source, events, inbound)
    except SQLAlchemyError:
        db.session.rollback()
        log.warning("webhook.store_failed", extra={"source": slug}, exc_info=True)
        return _unavailable(sender.unavailable_status)

    body_, status, event = answer(stored)
    log_answer(event, slug, stored, started)
    return jsonify(body_), status


def _unavailable(status: int) -> Response:
    response = jsonify({"error": "unavailable", "detail": "the event could not be stored; retry"})
    response.status_code = status
    response.headers["Retry-After"] = "30"
    return response
