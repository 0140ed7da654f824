"""POST /hooks/<slug>: a fixed sequence of steps, each with its own answer and log event.

find source -> size and content type -> verify raw bytes -> parse -> validate/translate
-> store -> commit -> enqueue -> answer.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from gatehouse import metrics
from gatehouse.extensions import db
from gatehouse.models import utcnow
from gatehouse.queue import enqueue_events
from gatehouse.webhooks.errors import (
    BodyTooLarge,
    HookError,
    UnknownSource,
    UnsupportedMediaType,
)
from gatehouse.webhooks.inbox import mark_not_queued, store_events
from gatehouse.webhooks.senders import SENDERS, Inbound
from gatehouse.webhooks.senders.base import check_storable
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


def _read_body(limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge()
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge()
    return body


def _public_url() -> str:
    base = current_app.config["GATEHOUSE_PUBLIC_URL"]
    if not base:
        return request.url
    query = request.query_string.decode("latin-1")
    return f"{base}{request.path}" + (f"?{query}" if query else "")


@bp.post("/hooks/<slug>")
def receive(slug: str) -> Response | tuple[Response, int]:
    started = time.perf_counter()
    step = "source"
    try:
        source = find_source(slug)
        if source is None or source.kind not in SENDERS:
            raise UnknownSource()
        sender = SENDERS[source.kind]

        step = "limits"
        body = _read_body(current_app.config["GATEHOUSE_MAX_BODY"])
        media_type = (request.mimetype or "").lower()
        inbound = Inbound(
            method=request.method,
            url=_public_url(),
            query=request.args,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            media_type=media_type,
            received_at=utcnow(),
        )
        handshake = sender.handshake(inbound, source)
        if handshake is not None:
            return handshake
        if media_type not in sender.media_types:
            raise UnsupportedMediaType(
                f"{source.kind} takes "
                + ", ".join(sorted(m or "(none)" for m in sender.media_types))
            )

        step = "verify"
        sender.verify(inbound, source, current_app.config["GATEHOUSE_SIGNATURE_TOLERANCE"])
        step = "parse"
        parsed = sender.parse(inbound)
        step = "validate"
        events = sender.translate(parsed, inbound, source)
        check_storable(events)
    except HookError as exc:
        db.session.rollback()
        return _error(exc, slug, step)
    except SQLAlchemyError:
        db.session.rollback()
        log.warning("webhook.source_lookup_failed", extra={"source": slug}, exc_info=True)
        return _unavailable(503)

    if not events:
        return jsonify({"status": "accepted", "events": []}), 202

    headers = {k: v for k, v in inbound.headers.items() if k not in SECRET_HEADERS}
    try:
        if db.session().in_transaction():
            # A sender looked something up: store in that same transaction. A second
            # connection would wait on this one's SQLite write lock (BEGIN IMMEDIATE).
            stored = store_events(source, events, headers)
            db.session.commit()
        else:
            # The usual case: a Core transaction of its own, committed on leaving the
            # block; the ORM session would only add CPU to a single insert.
            with db.engine.begin() as connection:
                stored = store_events(source, events, headers, connection)
        metrics.count_received(slug, [e.type for e in events])
    except SQLAlchemyError:
        db.session.rollback()
        log.warning("webhook.store_failed", extra={"source": slug}, exc_info=True)
        return _unavailable(sender.unavailable_status)

    queued = enqueue_events(stored.new_ids)
    if not queued:
        try:
            mark_not_queued(stored.new_ids)
            db.session.commit()
        except SQLAlchemyError:
            # Harmless: the sweeper also finds queued events whose job is missing.
            db.session.rollback()

    duplicate = not stored.new_ids and stored.duplicates == len(stored.ids)
    status = "duplicate" if duplicate else "accepted"
    log.info(
        "webhook.accepted" if not duplicate else "webhook.duplicate",
        extra={
            "source": slug,
            "events": len(stored.ids),
            "queued": queued,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )
    return jsonify({"status": status, "events": stored.ids}), 200 if duplicate else 202


def _unavailable(status: int) -> Response:
    response = jsonify({"error": "unavailable", "detail": "the event could not be stored; retry"})
    response.status_code = status
    response.headers["Retry-After"] = "30"
    return response
