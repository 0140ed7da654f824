"""/admin: a server-rendered page for admins. Log in with an admin token; no JavaScript.

The session cookie holds the token's name and its stored hash (never the token), checked
against the database on every request, so removing the token ends its sessions. Every
POST form carries a per-session CSRF token compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
import importlib
import json
import logging
import secrets
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from gatehouse import audit, passwords
from gatehouse.access import cache
from gatehouse.api.members import member_for_contact, member_json, parse_contact
from gatehouse.crypto import hash_token
from gatehouse.event_query import (
    EventFilter,
    FilterError,
    event_detail,
    event_json,
    page,
    slugs,
)
from gatehouse.extensions import db
from gatehouse.identity import admin as identity_admin
from gatehouse.models import STATUSES, ApiToken, Event, Member, Replay, Source
from gatehouse.queue.replay import ReplayUnavailable, preview, replay_one, start_bulk

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")
log = logging.getLogger("gatehouse.admin")
OPEN_ENDPOINTS = frozenset({"admin.login", "admin.login_post"})
FILTER_FIELDS = ("status", "source", "type", "contact", "since", "until")


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return str(token)


@bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "statuses": STATUSES}


@bp.before_request
def _guard() -> Response | None:
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        expected = session.get("csrf", "")
        if not sent or not expected or not hmac.compare_digest(str(sent), str(expected)):
            log.warning("admin.csrf_refused", extra={"path": request.path})
            abort(400, "The form was stale or not sent by this page. Reload it and try again.")
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    name, digest = session.get("admin_name"), session.get("admin_token")
    row = None
    if name and digest:
        row = db.session.execute(
            select(ApiToken.name).where(
                ApiToken.token_hash == digest, ApiToken.role == "admin", ApiToken.name == name
            )
        ).first()
        db.session.rollback()
    if row is None:
        session.pop("admin_name", None)
        session.pop("admin_token", None)
        return redirect(url_for("admin.login", next=request.full_path))
    # The audit hook records POSTs made with an admin role, whether by API or by page.
    g.token_name, g.token_role = name, "admin"
    return None


def _events_url(raw: dict[str, str]) -> str:
    return url_for("admin.events", **{k: v for k, v in raw.items() if v})  # type: ignore[arg-type]


def _filters_from(source: Any) -> tuple[EventFilter, dict[str, str], str | None]:
    raw = {k: (source.get(k) or "").strip() for k in FILTER_FIELDS}
    try:
        return EventFilter.parse(raw), raw, None
    except FilterError as exc:
        return EventFilter(), raw, str(exc)


@bp.get("/login")
def login() -> str:
    return render_template("admin/login.html", next=request.args.get("next", ""))


@bp.post("/login")
def login_post() -> Response | tuple[str, int]:
    token = request.form.get("token", "").strip()
    digest = hash_token(token) if token else ""
    row = db.session.execute(
        select(ApiToken.name, ApiToken.role).where(ApiToken.token_hash == digest)
    ).first()
    db.session.rollback()
    if row is None or row[1] != "admin":
        error = "That is not an admin token." if row else "That token is not known."
        return render_template("admin/login.html", error=error, next=""), 401
    session.clear()
    session["admin_name"], session["admin_token"] = row[0], digest
    session["csrf"] = secrets.token_urlsafe(32)
    g.token_name, g.token_role = row[0], "admin"
    audit.note("admin.login", row[0])
    target = request.form.get("next", "")
    # Only paths on this site: an open redirect would turn the login into a phishing aid.
    if not target.startswith("/admin") or target.startswith("//"):
        target = url_for("admin.events")
    return redirect(target)


@bp.post("/logout")
def logout() -> Response:
    audit.note("admin.logout", g.token_name)
    session.clear()
    flash("Logged out.")
    return redirect(url_for("admin.login"))


@bp.get("/")
def index() -> Response:
    return redirect(url_for("admin.events"))


@bp.get("/events")
def events() -> str:
    filters, raw, error = _filters_from(request.args)
    rows: list[Event] = []
    next_cursor = None
    if error is None:
        try:
            rows, next_cursor = page(filters, 50, request.args.get("cursor") or None)
        except FilterError as exc:
            error = str(exc)
    names = slugs()
    sources = list(db.session.execute(select(Source.slug).order_by(Source.slug)).scalars())
    body = render_template(
        "admin/events.html",
        events=[event_json(e, names) for e in rows],
        raw=raw,
        error=error,
        sources=sources,
        next_cursor=next_cursor,
    )
    db.session.rollback()
    return body


@bp.get("/events/<event_id>")
def event(event_id: str) -> str:
    found = db.session.get(Event, event_id)
    if found is None:
        abort(404, f"No event {event_id}.")
    detail = event_detail(found, slugs())
    db.session.rollback()
    return render_template("admin/event.html", e=detail, pretty=_pretty, preview=None)


@bp.post("/events/<event_id>/preview")
def event_preview(event_id: str) -> str:
    found = db.session.get(Event, event_id)
    if found is None:
        abort(404, f"No event {event_id}.")
    audit.note("event.replay.preview", event_id)
    result = preview(event_ids=[event_id])
    found = db.session.get(Event, event_id)
    assert found is not None
    detail = event_detail(found, slugs())
    db.session.rollback()
    return render_template("admin/event.html", e=detail, pretty=_pretty, preview=result)


@bp.post("/events/<event_id>/replay")
def event_replay(event_id: str) -> Response:
    found = db.session.get(Event, event_id)
    if found is None:
        abort(404, f"No event {event_id}.")
    audit.note("event.replay", event_id)
    if replay_one(found):
        flash("Replay queued. This page shows the result once a worker has run it.")
    else:
        flash("Redis did not take the job; the event is left for the sweeper. Try again.")
    return redirect(url_for("admin.event", event_id=event_id))


@bp.post("/events/replay-preview")
def bulk_preview() -> str | Response:
    filters, raw, error = _filters_from(request.form)
    if error:
        flash(error)
        return redirect(_events_url(raw))
    audit.note("events.replay.preview", None, filters=filters.as_dict())
    result = preview(filters)
    return render_template("admin/bulk_preview.html", preview=result, raw=raw)


@bp.post("/events/replay")
def bulk_replay() -> Response:
    filters, raw, error = _filters_from(request.form)
    if error:
        flash(error)
        return redirect(_events_url(raw))
    try:
        replay = start_bulk(filters, g.token_name)
    except ReplayUnavailable:
        flash("Redis did not take the replay job; nothing was replayed. Try again.")
        return redirect(_events_url(raw))
    audit.note("events.replay", replay.id, filters=filters.as_dict(), matched=replay.matched)
    return redirect(url_for("admin.replay", replay_id=replay.id))


@bp.get("/replays/<replay_id>")
def replay(replay_id: str) -> str:
    found = db.session.get(Replay, replay_id)
    if found is None:
        abort(404, f"No replay {replay_id}.")
    body = render_template("admin/replay.html", r=found)
    db.session.rollback()
    return body


def _explain_module() -> Any:
    try:
        return importlib.import_module("gatehouse.access.explain")
    except ImportError:
        return None


@bp.get("/members")
def members() -> str:
    return _members_page(request.args.get("q", ""), request.args.get("permission", ""))


@bp.post("/members/<member_id>/password-token")
def member_password_token(member_id: str) -> str:
    """Shown once on the page it answers (never put in the session cookie or a redirect)."""
    token = passwords.token_for_member(current_app.config["SECRET_KEY"], member_id)
    db.session.rollback()
    if token is None:
        abort(404, f"No member {member_id}.")
    audit.note("member.password_token", member_id)
    issued = {"member_id": member_id, "token": token}
    return _members_page(request.form.get("q") or member_id, "", issued)


def _members_page(query: str, permission: str, issued: dict[str, str] | None = None) -> str:
    query, permission = query.strip(), permission.strip()
    found: list[Member] = []
    error = None
    if query:
        if "@" in query:
            found = list(
                db.session.execute(
                    select(Member)
                    .where(func.lower(Member.email) == query.lower())
                    .order_by(Member.id)
                    .limit(20)
                ).scalars()
            )
        elif parse_contact(query):
            parsed = parse_contact(query)
            assert parsed is not None
            member = member_for_contact(*parsed)
            found = [member] if member else []
        else:
            error = "Search by email (jane@example.com) or by contact (keap:2729)."
    results = []
    explain = _explain_module()
    for member in found:
        body = cache.read_or_compute(member.id)
        explained = None
        if permission and explain is not None:
            explained = _explain(explain, member.id, permission)
        results.append(
            {
                "member": member_json(member),
                "access": json.loads(body) if body else None,
                "explain": explained,
            }
        )
    page_body = render_template(
        "admin/members.html",
        q=query,
        permission=permission,
        results=results,
        error=error,
        can_explain=explain is not None,
        pretty=_pretty,
        issued=issued,
    )
    db.session.rollback()
    return page_body


@bp.post("/members/<member_id>/action")
def member_action(member_id: str) -> Response:
    """The same admin actions as POST /api/members/<id>/revoke|restore|refresh."""
    action = request.form.get("action", "")
    back = redirect(url_for("admin.members", q=request.form.get("q") or member_id))
    run = identity_admin.MEMBER_ACTIONS.get(action)
    if run is None:
        flash(f"Unknown action {action!r}: {', '.join(identity_admin.MEMBER_ACTIONS)}.")
        return back
    try:
        result = identity_admin.run_audited(f"member.{action}", member_id, lambda: run(member_id))
    except identity_admin.AdminError as exc:
        flash(exc.detail)
        return back
    flash(
        f"{action.capitalize()}: done, member is {result.status}."
        if result.changed or action == "refresh"
        else f"{action.capitalize()}: nothing to change, member is {result.status}."
    )
    return back


def _explain(module: Any, member_id: str, permission: str) -> Any:
    """Engineer-owned module; its entry point is looked up by name so the page adapts."""
    for name in ("explain_json", "explain"):
        fn = getattr(module, name, None)
        if callable(fn):
            try:
                result = fn(member_id, permission)
            except Exception as exc:  # noqa: BLE001 - shown to the admin, the page still works
                return {"error": f"{type(exc).__name__}: {exc}"}
            return (
                result
                if isinstance(result, dict | list | str)
                else getattr(result, "__dict__", str(result))
            )
    return None


@bp.get("/hygiene")
def hygiene() -> str:
    try:
        module: Any = importlib.import_module("gatehouse.identity.report")
    except ImportError:
        module = None
    report = None
    if module is not None:
        for name in ("report_json", "build_report", "report"):
            fn = getattr(module, name, None)
            if callable(fn):
                report = fn()
                break
    body = render_template(
        "admin/hygiene.html", report=report, exists=module is not None, pretty=_pretty
    )
    db.session.rollback()
    return body


@bp.get("/audit")
def audit_log() -> str:
    before = request.args.get("before", type=int)
    rows = audit.entries(100, before)
    body = render_template("admin/audit.html", entries=[audit.entry_json(e) for e in rows])
    db.session.rollback()
    return body


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
