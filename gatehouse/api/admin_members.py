"""Admin actions on members and the explain endpoint; thin over identity.admin and access.explain.

POST /api/members/<id>/revoke | /restore | /refresh      (admin)
POST /api/members/<id>/all-access  {"enabled": true}      (admin)
POST /api/members/<id>/password-token                    (admin)
GET  /api/members/<id>/access/explain?permission=P        (reader)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from gatehouse import audit, passwords
from gatehouse.access.explain import explain
from gatehouse.api.auth import require
from gatehouse.errors import json_error
from gatehouse.extensions import db
from gatehouse.identity import admin
from gatehouse.identity.admin import ActionResult, AdminError

bp = Blueprint("api_admin_members", __name__, url_prefix="/api")


def _run(member_id: str, action: str, call: Callable[[], ActionResult]) -> Any:
    try:
        result = admin.run_audited(action, member_id, call)
    except AdminError as exc:
        return json_error(404 if exc.code == "not_found" else 409, exc.code, exc.detail)
    return jsonify(asdict(result))


@bp.post("/members/<member_id>/revoke")
@require("admin")
def revoke(member_id: str) -> Any:
    return _run(member_id, "member.revoke", lambda: admin.revoke(member_id))


@bp.post("/members/<member_id>/restore")
@require("admin")
def restore(member_id: str) -> Any:
    return _run(member_id, "member.restore", lambda: admin.restore(member_id))


@bp.post("/members/<member_id>/refresh")
@require("admin")
def refresh(member_id: str) -> Any:
    return _run(member_id, "member.refresh", lambda: admin.refresh(member_id))


@bp.post("/members/<member_id>/all-access")
@require("admin")
def all_access(member_id: str) -> Any:
    body = request.get_json(silent=True)
    enabled = body.get("enabled") if isinstance(body, dict) else None
    if not isinstance(enabled, bool):
        return json_error(
            400, "bad_request", 'send a JSON body {"enabled": true} or {"enabled": false}'
        )
    action = "member.all_access_on" if enabled else "member.all_access_off"
    return _run(member_id, action, lambda: admin.set_all_access(member_id, enabled))


@bp.post("/members/<member_id>/password-token")
@require("admin")
def password_token(member_id: str) -> Any:
    token = passwords.token_for_member(current_app.config["SECRET_KEY"], member_id)
    db.session.rollback()
    if token is None:
        return json_error(404, "not_found", f"no member {member_id!r}")
    audit.note("member.password_token", member_id)
    return jsonify(
        {"member_id": member_id, "token": token, "expires_in": passwords.SET_PASSWORD_MAX_AGE}
    )


@bp.get("/members/<member_id>/access/explain")
@require("reader")
def explain_access(member_id: str) -> Any:
    permission = (request.args.get("permission") or "").strip()
    if not permission:
        return json_error(400, "bad_request", "name the permission: ?permission=course:gold")
    if len(permission) > 128:
        return json_error(400, "bad_request", "a permission is at most 128 characters")
    answer = explain(member_id, permission)
    db.session.rollback()
    if answer is None:
        return json_error(404, "not_found", f"no member {member_id!r}")
    return jsonify(answer)
