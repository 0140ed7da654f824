"""/api/events, /api/replays and /api/audit: what admins use to find, explain and replay events."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from gatehouse import audit
from gatehouse.api.auth import require
from gatehouse.errors import json_error
from gatehouse.event_query import (
    EventFilter,
    FilterError,
    event_detail,
    event_json,
    page,
    parse_limit,
    slugs,
)
from gatehouse.extensions import db
from gatehouse.models import Event, Replay
from gatehouse.queue.replay import ReplayUnavailable, preview, replay_one, start_bulk

bp = Blueprint("api_events", __name__, url_prefix="/api")


def _unavailable() -> tuple[Response, int, dict[str, str]]:
    body, status = json_error(503, "unavailable", "Redis did not take the job; retry shortly")
    return body, status, {"Retry-After": "30"}


def _json_body() -> dict[str, Any] | None:
    if not request.get_data():
        return {}
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else None


def replay_json(replay: Replay) -> dict[str, Any]:
    return {
        "replay_id": replay.id,
        "status": replay.status,
        "filters": replay.filters,
        "matched": replay.matched,
        "done": replay.done,
        "failed": replay.failed,
        "remaining": replay.remaining,
        "requested_by": replay.requested_by,
        "created_at": replay.created_at.isoformat().replace("+00:00", "Z"),
        "finished_at": replay.finished_at.isoformat().replace("+00:00", "Z")
        if replay.finished_at
        else None,
        "error": replay.error,
    }


@bp.get("/events")
@require("admin")
def list_events() -> Any:
    try:
        filters = EventFilter.parse(request.args)
        limit = parse_limit(request.args.get("limit"))
        rows, next_cursor = page(filters, limit, request.args.get("cursor") or None)
    except FilterError as exc:
        return json_error(400, "bad_request", str(exc))
    names = slugs()
    body = {"events": [event_json(e, names) for e in rows], "next_cursor": next_cursor}
    db.session.rollback()
    return jsonify(body)


@bp.get("/events/<event_id>")
@require("admin")
def show_event(event_id: str) -> Any:
    event = db.session.get(Event, event_id)
    if event is None:
        return json_error(404, "not_found", f"no event {event_id}")
    body = event_detail(event, slugs())
    db.session.rollback()
    return jsonify(body)


@bp.post("/events/<event_id>/replay")
@require("admin")
def replay_event(event_id: str) -> Any:
    body = _json_body()
    if body is None:
        return json_error(
            400, "bad_request", 'send a JSON object, e.g. {"dry_run": true}, or nothing'
        )
    dry_run = bool(body.get("dry_run"))
    audit.note("event.replay.preview" if dry_run else "event.replay", event_id)
    event = db.session.get(Event, event_id)
    if event is None:
        return json_error(404, "not_found", f"no event {event_id}")
    if dry_run:
        return jsonify(preview(event_ids=[event_id]))
    if not replay_one(event):
        return _unavailable()
    event = db.session.get(Event, event_id)
    assert event is not None
    return jsonify(event_json(event, slugs())), 202


@bp.post("/events/replay")
@require("admin")
def replay_events() -> Any:
    body = _json_body()
    if body is None:
        return json_error(400, "bad_request", 'send a JSON object of filters: {"status": "failed"}')
    try:
        filters = EventFilter.parse(body)
    except FilterError as exc:
        return json_error(400, "bad_request", str(exc))
    dry_run = bool(body.get("dry_run"))
    audit.note(
        "events.replay.preview" if dry_run else "events.replay", None, filters=filters.as_dict()
    )
    if dry_run:
        answer = preview(filters)
        audit.note("events.replay.preview", matched=answer["matched"])
        return jsonify(answer)
    try:
        replay = start_bulk(filters, getattr(g, "token_name", None))
    except ReplayUnavailable:
        return _unavailable()
    audit.note("events.replay", replay.id, matched=replay.matched)
    return jsonify({"replay_id": replay.id, "matched": replay.matched}), 202


@bp.get("/replays/<replay_id>")
@require("admin")
def show_replay(replay_id: str) -> Any:
    replay = db.session.get(Replay, replay_id)
    if replay is None:
        return json_error(404, "not_found", f"no replay {replay_id}")
    body = replay_json(replay)
    db.session.rollback()
    return jsonify(body)


@bp.get("/audit")
@require("admin")
def audit_log() -> Any:
    try:
        limit = parse_limit(request.args.get("limit"))
        before = int(request.args["before"]) if request.args.get("before") else None
        # Outside a 32-bit id PostgreSQL refuses the query: that is bad input, not an outage.
        if before is not None and not 0 < before < 2**31:
            raise ValueError(before)
    except (FilterError, ValueError):
        return json_error(400, "bad_request", "limit is 1-500 and before an entry id")
    rows = audit.entries(limit, before)
    body = {
        "entries": [audit.entry_json(e) for e in rows],
        "next_before": rows[-1].id if len(rows) == limit else None,
    }
    db.session.rollback()
    return jsonify(body)
