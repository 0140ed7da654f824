"""GET /openapi.json: the whole HTTP surface as an OpenAPI 3.0 document (apispec + marshmallow).

Paths are written out here rather than scraped from docstrings: every answer a view can
give is listed, so Schemathesis can hold the views to it (tests/security/). The HTML admin
pages under /admin are left out: they are a browser UI with a session cookie and CSRF, not
an API.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app, jsonify

from gatehouse.models import STATUSES
from gatehouse.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from gatehouse.schemas import api
from gatehouse.schemas.events import CanonicalEventSchema

bp = Blueprint("openapi", __name__)

READER: list[dict[str, list[str]]] = [{"readerToken": []}, {"adminToken": []}]
ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
ERROR = "Error"


def _json(schema: Any, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _error(description: str, **extra: Any) -> dict[str, Any]:
    return _json(ERROR, description, **extra)


RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
AUTH_ERRORS = {
    "401": _error(
        "no bearer token (`missing_token`) or an unknown one (`invalid_token`)",
        headers={"WWW-Authenticate": {"schema": {"type": "string"}}},
    ),
    "503": _error("the database did not answer (`unavailable`)", headers=RETRY_AFTER),
}
ADMIN_ERRORS = {**AUTH_ERRORS, "403": _error("a reader token on an admin route (`forbidden`)")}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


MEMBER_ID = _path_param("member_id", "a member id")
EVENT_ID = _path_param("event_id", "an event id")
FILTER_PARAMS = [
    _query("status", "event status", enum=list(STATUSES)),
    _query("source", "source slug"),
    _query("type", "canonical event type"),
    _query("contact", "<crm>:<id>"),
    _query("since", "received at or after (ISO 8601; UTC if no zone)"),
    _query("until", "received before (ISO 8601; UTC if no zone)"),
]


def _hook_operation() -> dict[str, Any]:
    commands = ["genpass", "updateuser", "addtag", "removetag", "revoke", "resthook"]
    return {
        "summary": "Receive a webhook from one source",
        "description": (
            "find source -> size and content type -> verify the raw bytes -> parse -> "
            "validate -> store -> commit -> enqueue -> answer. Which content type, signature "
            "headers and body a source takes depends on its kind; a wrongly signed request "
            "leaves no row and no job."
        ),
        "tags": ["webhooks"],
        "parameters": [
            {**_path_param("slug", "the source's slug"), "example": "keap"},
            *[_query(c, f"signed key for the `{c}` command (URL-key kinds)") for c in commands],
            _query("tag", "tag ids for addtag/removetag: 101,102"),
        ],
        "requestBody": {
            "required": True,
            "content": {
                # JSON kinds post their own provider's payloads; `standard` posts these.
                "application/json": {
                    "schema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/CanonicalEvent"},
                            {"type": "object"},
                            {"type": "array", "items": {"type": "object"}},
                        ]
                    }
                },
                "application/x-www-form-urlencoded": {"schema": "KeapForm"},
            },
        },
        "responses": {
            "200": {
                "description": "every event was already stored (`duplicate`), or a Keap REST "
                "hook handshake answered with its X-Hook-Secret header and an empty body",
                "content": {"application/json": {"schema": "HookAnswer"}},
                "headers": {"X-Hook-Secret": {"schema": {"type": "string"}}},
            },
            "202": _json("HookAnswer", "stored and queued (or left for the sweeper)"),
            "400": _error("body is not parseable JSON / form data (`malformed_body`)"),
            "401": _error("missing, malformed or wrong signature or key; stale timestamp"),
            "404": _error("no such source (`unknown_source`)"),
            "413": _error("body over GATEHOUSE_MAX_BODY (`body_too_large`)"),
            "415": _error("content type the kind does not take (`unsupported_media_type`)"),
            "422": _error("parsed, but not a valid event (`invalid_event`, field -> messages)"),
            "429": _error("HighLevel only: could not be stored; retry", headers=RETRY_AFTER),
            "503": _error("could not be stored durably (`unavailable`)", headers=RETRY_AFTER),
        },
    }


def _member_action(action: str, description: str, body: Any = None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": description,
        "tags": ["members"],
        "security": ADMIN,
        "parameters": [MEMBER_ID],
        "responses": {
            "200": _json("ActionResult", f"{action} done (or nothing to change)"),
            "404": _error("no such member (`not_found`)"),
            "409": _error("the member's state does not allow it"),
            **ADMIN_ERRORS,
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
        operation["responses"]["400"] = _error('not a JSON body {"enabled": true|false}')
    return operation


def _paths() -> dict[str, dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = {
        "/hooks/{slug}": {"post": _hook_operation()},
        "/api/members": {
            "get": {
                "summary": "Find members by email or by contact",
                "tags": ["members"],
                "security": READER,
                "parameters": [
                    _query("email", "the member's email"),
                    _query("contact", "<crm>:<id>, e.g. keap:2729"),
                ],
                "responses": {
                    "200": _json("MemberList", "the members found (perhaps none)"),
                    "400": _error("neither filter given, or contact not <crm>:<id>"),
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/members/{member_id}": {
            "get": {
                "summary": "One member",
                "tags": ["members"],
                "security": READER,
                "parameters": [MEMBER_ID],
                "responses": {
                    "200": _json("Member", "the member"),
                    "404": _error("no such member (`not_found`)"),
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/members/{member_id}/access": {
            "get": {
                "summary": "The member's access, from the cache",
                "tags": ["access"],
                "security": READER,
                "parameters": [MEMBER_ID],
                "responses": {
                    "200": _json("Access", "what the member may see"),
                    "404": _error("no such member (`not_found`)"),
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/access": {
            "get": {
                "summary": "Access by contact",
                "tags": ["access"],
                "security": READER,
                "parameters": [
                    {**_query("contact", "<crm>:<id>, e.g. keap:2729"), "required": True}
                ],
                "responses": {
                    "200": _json("Access", "what the contact's member may see"),
                    "400": _error("contact missing or not <crm>:<id>"),
                    "404": _error("no member for this contact (`not_found`)"),
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/members/{member_id}/access/explain": {
            "get": {
                "summary": "Which rule, tags, subscriptions and events decide one permission",
                "tags": ["access"],
                "security": READER,
                "parameters": [
                    MEMBER_ID,
                    {
                        **_query("permission", "e.g. course:gold", maxLength=128),
                        "required": True,
                    },
                ],
                "responses": {
                    "200": _json("Explain", "the evidence"),
                    "400": _error("permission missing or longer than 128 characters"),
                    "404": _error("no such member (`not_found`)"),
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/members/{member_id}/refresh": {
            "post": _member_action("refresh", "Recompute the member's access cache")
        },
        "/api/members/{member_id}/revoke": {
            "post": _member_action("revoke", "Revoke all of the member's access")
        },
        "/api/members/{member_id}/restore": {
            "post": _member_action("restore", "Restore a revoked member")
        },
        "/api/members/{member_id}/password-token": {
            "post": {
                "summary": "A set-password token for the member (valid 7 days, single use)",
                "tags": ["members"],
                "security": ADMIN,
                "parameters": [MEMBER_ID],
                "responses": {
                    "200": _json("PasswordToken", "give it to the member, e.g. in a link"),
                    "404": _error("no such member (`not_found`)"),
                    **ADMIN_ERRORS,
                },
            }
        },
        "/api/members/password": {
            "post": {
                "summary": "Set a member's password with their set-password token",
                "description": "For the membership site's backend: the member chose a "
                "password on a page reached with the token. Spending the token makes it, "
                "and every token handed out before it, stop working.",
                "tags": ["members"],
                "security": READER,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": "SetPasswordRequest"}},
                },
                "responses": {
                    "200": _json("PasswordSet", "the password is set"),
                    "400": _error(
                        "not a JSON body {token, password} (`bad_request`), a password not "
                        f"{MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters "
                        "(`bad_password`), or a token that is not genuine or expired "
                        "(`invalid_token`)"
                    ),
                    "409": _error("the token was spent already (`token_used`)"),
                    **AUTH_ERRORS,
                },
            }
        },
        "/api/members/{member_id}/all-access": {
            "post": _member_action(
                "all-access", "Turn all-access on or off", body="AllAccessRequest"
            )
        },
        "/api/events": {
            "get": {
                "summary": "Events, newest first",
                "tags": ["events"],
                "security": ADMIN,
                "parameters": [
                    *FILTER_PARAMS,
                    _query("limit", "1-500 (default 50)", pattern="^[0-9]+$"),
                    _query("cursor", "next_cursor from the previous page"),
                ],
                "responses": {
                    "200": _json("EventList", "one page of events"),
                    "400": _error("a filter, limit or cursor is wrong (`bad_request`)"),
                    **ADMIN_ERRORS,
                },
            }
        },
        "/api/events/{event_id}": {
            "get": {
                "summary": "One event with payload, headers and attempts",
                "tags": ["events"],
                "security": ADMIN,
                "parameters": [EVENT_ID],
                "responses": {
                    "200": _json("EventDetail", "the event"),
                    "404": _error("no such event (`not_found`)"),
                    **ADMIN_ERRORS,
                },
            }
        },
        "/api/events/{event_id}/replay": {
            "post": {
                "summary": "Run one stored event again (or preview what it would change)",
                "tags": ["events"],
                "security": ADMIN,
                "parameters": [EVENT_ID],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": "ReplayOneRequest"}},
                },
                "responses": {
                    "200": _json("DryRun", "dry run: the permission changes, nothing done"),
                    "202": _json("Event", "queued again"),
                    "400": _error("the body is not a JSON object"),
                    "404": _error("no such event (`not_found`)"),
                    **ADMIN_ERRORS,
                },
            }
        },
        "/api/events/replay": {
            "post": {
                "summary": "Replay every event matching the filters (or preview)",
                "tags": ["events"],
                "security": ADMIN,
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": "ReplayFilters"}},
                },
                "responses": {
                    "200": _json("DryRun", "dry run: the permission changes, nothing done"),
                    "202": _json("BulkReplayStarted", "started; follow /api/replays/{id}"),
                    "400": _error("the body is not a JSON object, or a filter is wrong"),
                    **ADMIN_ERRORS,
                },
            }
        },
        "/api/replays/{replay_id}": {
            "get": {
                "summary": "A bulk replay's progress",
                "tags": ["events"],
                "security": ADMIN,
                "parameters": [_path_param("replay_id", "from POST /api/events/replay")],
                "responses": {
                    "200": _json("Replay", "done, failed, remaining"),
                    "404": _error("no such replay (`not_found`)"),
                    **ADMIN_ERRORS,
                },
            }
        },
        "/api/audit": {
            "get": {
                "summary": "The audit log of admin actions, newest first",
                "tags": ["audit"],
                "security": ADMIN,
                "parameters": [
                    _query("limit", "1-500 (default 50)", pattern="^[0-9]+$"),
                    _query("before", "next_before from the previous page", pattern="^[0-9]+$"),
                ],
                "responses": {
                    "200": _json("AuditList", "one page of entries"),
                    "400": _error("limit or before is wrong (`bad_request`)"),
                    **ADMIN_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "The process is up",
                "tags": ["health"],
                "security": [],
                "responses": {"200": _json("Health", "up")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "The database and Redis answer",
                "tags": ["health"],
                "security": [],
                "responses": {
                    "200": _json("Ready", "both answer"),
                    "503": _json("Ready", "one of them does not"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["health"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "tags": ["health"],
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0 document")},
            }
        },
    }
    return paths


SCHEMAS: dict[str, type] = {
    ERROR: api.ErrorSchema,
    "HookAnswer": api.HookAnswerSchema,
    "CanonicalEvent": CanonicalEventSchema,
    "KeapForm": api.KeapFormSchema,
    "Member": api.MemberSchema,
    "MemberList": api.MemberListSchema,
    "Access": api.AccessSchema,
    "Explain": api.ExplainSchema,
    "ActionResult": api.ActionResultSchema,
    "AllAccessRequest": api.AllAccessRequestSchema,
    "PasswordToken": api.PasswordTokenSchema,
    "SetPasswordRequest": api.SetPasswordRequestSchema,
    "PasswordSet": api.PasswordSetSchema,
    "Event": api.EventSchema,
    "EventDetail": api.EventDetailSchema,
    "EventList": api.EventListSchema,
    "ReplayFilters": api.ReplayFiltersSchema,
    "ReplayOneRequest": api.ReplayOneRequestSchema,
    "DryRun": api.DryRunSchema,
    "BulkReplayStarted": api.BulkReplayStartedSchema,
    "Replay": api.ReplaySchema,
    "AuditList": api.AuditListSchema,
    "Health": api.HealthSchema,
    "Ready": api.ReadySchema,
}


def build_spec() -> dict[str, Any]:
    spec = APISpec(
        title="Gatehouse",
        version="1",
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={
            "description": "Webhooks in; members, access and events out. Every error is JSON "
            'with a stable code: {"error": "...", "detail": ...}.'
        },
        security=READER,
    )
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    for scheme in ("readerToken", "adminToken"):
        spec.components.security_scheme(
            scheme,
            {
                "type": "http",
                "scheme": "bearer",
                "description": f"`flask --app wsgi tokens create NAME --role "
                f"{scheme.removesuffix('Token')}`",
            },
        )
    for path, operations in _paths().items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def document(app: Flask) -> dict[str, Any]:
    """Built once per app: the document depends only on code."""
    found: dict[str, Any] | None = app.extensions.get("gatehouse.openapi")
    if found is None:
        found = build_spec()
        app.extensions["gatehouse.openapi"] = found
    return found


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(document(current_app))
