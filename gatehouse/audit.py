"""The audit log: every admin action, by token name, with what it was done to and how it ended.

It is written by one `after_request` hook rather than by each view, so admin actions other
packages add (member revoke/restore/all-access…) are audited without them doing anything:
every state-changing request made with an admin token (API bearer token or admin page
session) is recorded. A view may name its action and add details through `note()`.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, request
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from gatehouse.extensions import db
from gatehouse.models import AuditEntry

log = logging.getLogger("gatehouse.audit")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def note(action: str, target: str | None = None, **detail: Any) -> None:
    """Name the current request's action for the audit log (else it is METHOD + route)."""
    g.audit_action = action
    if target is not None:
        g.audit_target = target
    g.audit_detail = {**getattr(g, "audit_detail", {}), **detail}


def record(
    token_name: str,
    action: str,
    target: str | None,
    result: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one entry in its own transaction (the action's own work is already committed)."""
    db.session.rollback()
    db.session.add(
        AuditEntry(
            token_name=token_name, action=action, target=target, result=result, detail=detail
        )
    )
    db.session.commit()


def _result(response: Response) -> str:
    if response.status_code < 400:
        return "ok"
    body = response.get_json(silent=True)
    code = body.get("error") if isinstance(body, dict) else None
    return str(code or response.status_code)[:32]


def _after(response: Response) -> Response:
    if request.method not in WRITE_METHODS or getattr(g, "token_role", None) != "admin":
        return response
    if getattr(g, "audit_skip", False):
        return response
    rule = request.url_rule.rule if request.url_rule else request.path
    action = getattr(g, "audit_action", None) or f"{request.method} {rule}"
    target = getattr(g, "audit_target", None)
    if target is None and request.view_args:
        target = ",".join(f"{v}" for v in request.view_args.values())[:255]
    try:
        record(g.token_name, action, target, _result(response), getattr(g, "audit_detail", None))
    except SQLAlchemyError:
        db.session.rollback()
        # The action happened; losing its audit line must be loud, not a failed request.
        log.error("audit.write_failed", extra={"action": action, "target": target})
    return response


def _reset() -> None:
    # `g` lives as long as the app context, which a request may share (tests, CLI-driven
    # calls): who acted and what they did must never carry over to the next request.
    for name in ("audit_action", "audit_target", "audit_detail", "token_name", "token_role"):
        g.pop(name, None)


def init_app(app: Flask) -> None:
    app.before_request(_reset)
    app.after_request(_after)


def entries(limit: int = 100, before: int | None = None) -> list[AuditEntry]:
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    return list(db.session.execute(query).scalars())


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at.isoformat().replace("+00:00", "Z"),
        "token": entry.token_name,
        "action": entry.action,
        "target": entry.target,
        "result": entry.result,
        "detail": entry.detail,
    }
