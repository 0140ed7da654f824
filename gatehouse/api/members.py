"""/api/members and /api/access: what the membership site reads."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from gatehouse import passwords
from gatehouse.access import cache
from gatehouse.api.auth import require
from gatehouse.errors import json_error
from gatehouse.extensions import db
from gatehouse.handlers.tags import present_tags
from gatehouse.models import Contact, Member, Subscription

bp = Blueprint("api_members", __name__, url_prefix="/api")
log = logging.getLogger("gatehouse.api")


def not_found() -> tuple[Response, int]:
    return jsonify({"error": "not_found"}), 404


def bad_request(detail: str) -> tuple[Response, int]:
    return json_error(400, "bad_request", detail)


def parse_contact(raw: str | None) -> tuple[str, str] | None:
    if not raw or ":" not in raw:
        return None
    crm, _, contact_id = raw.partition(":")
    return (crm, contact_id) if crm and contact_id else None


def member_for_contact(crm: str, contact_id: str) -> Member | None:
    contact = db.session.execute(
        select(Contact).where(Contact.crm == crm, Contact.contact_id == contact_id)
    ).scalar_one_or_none()
    seen: set[int] = set()
    # A merged-away id still answers for its survivor.
    while contact is not None and contact.state == "merged" and contact.merged_into_id:
        if contact.id in seen:
            break
        seen.add(contact.id)
        contact = db.session.get(Contact, contact.merged_into_id)
    if contact is None or contact.member_id is None:
        return None
    return db.session.get(Member, contact.member_id)


def member_json(member: Member) -> dict[str, Any]:
    tags: list[str] = []
    for contact in member.contacts:
        if contact.state == "live":
            tags.extend(f"{contact.crm}:{t}" for t in present_tags(contact))
    subs = db.session.execute(
        select(Subscription).where(Subscription.member_id == member.id).order_by(Subscription.id)
    ).scalars()
    return {
        "id": member.id,
        "email": member.email,
        "name": member.name,
        "status": member.status,
        "all_access": member.all_access,
        "merged_into": member.merged_into_id,
        "contacts": [
            {"crm": c.crm, "contact_id": c.contact_id, "state": c.state} for c in member.contacts
        ],
        "tags": sorted(tags),
        "subscriptions": [
            {
                "provider": s.provider,
                "id": s.subscription_id,
                "product": s.product,
                "status": s.status,
                "current_period_end": s.current_period_end.isoformat()
                if s.current_period_end
                else None,
            }
            for s in subs
        ],
    }


@bp.post("/members/password")
@require("reader")
def set_password() -> Any:
    body = request.get_json(silent=True)
    token = body.get("token") if isinstance(body, dict) else None
    password = body.get("password") if isinstance(body, dict) else None
    if not isinstance(token, str) or not isinstance(password, str):
        return bad_request('send a JSON body {"token": "...", "password": "..."}')
    try:
        member_id = passwords.set_password_with_token(
            current_app.config["SECRET_KEY"], token, password
        )
    except passwords.PasswordError as exc:
        db.session.rollback()
        return json_error(409 if exc.code == "token_used" else 400, exc.code, exc.detail)
    db.session.commit()
    log.info("member.password_set", extra={"member": member_id})
    return jsonify({"member_id": member_id, "status": "password_set"})


@bp.get("/members")
@require("reader")
def list_members() -> Any:
    email = request.args.get("email")
    contact = request.args.get("contact")
    if email:
        members = (
            db.session.execute(
                select(Member)
                .where(func.lower(Member.email) == email.strip().lower())
                .options(selectinload(Member.contacts))
                .order_by(Member.id)
                .limit(100)
            )
            .scalars()
            .all()
        )
    elif contact:
        parsed = parse_contact(contact)
        if parsed is None:
            return bad_request("contact must look like <crm>:<id>, e.g. keap:2729")
        found = member_for_contact(*parsed)
        members = [found] if found else []
    else:
        return bad_request("filter by ?email= or ?contact=<crm>:<id>")
    return jsonify({"members": [member_json(m) for m in members]})


@bp.get("/members/<member_id>")
@require("reader")
def get_member(member_id: str) -> Any:
    member = db.session.get(Member, member_id)
    if member is None:
        return not_found()
    return jsonify(member_json(member))


def _access_response(body: bytes) -> Response:
    return Response(body, status=200, mimetype="application/json")


@bp.get("/members/<member_id>/access")
@require("reader")
def member_access(member_id: str) -> Any:
    body = cache.read_or_compute(member_id)
    db.session.rollback()
    if body is None:
        return not_found()
    return _access_response(body)


@bp.get("/access")
@require("reader")
def access_by_contact() -> Any:
    parsed = parse_contact(request.args.get("contact"))
    if parsed is None:
        return bad_request("contact must look like <crm>:<id>, e.g. keap:2729")
    member = member_for_contact(*parsed)
    if member is None:
        return not_found()
    body = cache.read_or_compute(member.id)
    db.session.rollback()
    if body is None:
        return not_found()
    return _access_response(body)
