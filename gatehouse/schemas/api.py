"""Response and request bodies of the HTTP API, as marshmallow schemas.

They exist to describe the API in the OpenAPI document (gatehouse.openapi); the views build
their answers by hand. Tests hold the two together: Schemathesis checks every answer
against these schemas (tests/security/test_schemathesis.py).
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from gatehouse.models import STATUSES
from gatehouse.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "stable error code"})
    # A sentence, or for `invalid_event` a mapping of field -> messages.
    detail = fields.Raw(metadata={"description": "what is wrong and how to fix it"})


class HookAnswerSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["accepted", "duplicate"]))
    events = fields.List(fields.String(), required=True)


class ContactRefSchema(Schema):
    crm = fields.String(required=True)
    contact_id = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(["live", "deleted", "merged"]))


class MemberSubscriptionSchema(Schema):
    provider = fields.String(required=True)
    id = fields.String(required=True)
    product = fields.String(required=True, allow_none=True)
    status = fields.String(required=True)
    current_period_end = fields.String(required=True, allow_none=True)


class MemberSchema(Schema):
    id = fields.String(required=True)
    email = fields.String(required=True, allow_none=True)
    name = fields.String(required=True, allow_none=True)
    status = fields.String(required=True)
    all_access = fields.Boolean(required=True)
    merged_into = fields.String(required=True, allow_none=True)
    contacts = fields.List(fields.Nested(ContactRefSchema), required=True)
    tags = fields.List(fields.String(), required=True)
    subscriptions = fields.List(fields.Nested(MemberSubscriptionSchema), required=True)


class MemberListSchema(Schema):
    members = fields.List(fields.Nested(MemberSchema), required=True)


class AccessSchema(Schema):
    member_id = fields.String(required=True)
    status = fields.String(required=True)
    groups = fields.List(fields.String(), required=True)
    permissions = fields.List(fields.String(), required=True)
    sections = fields.List(fields.String(), required=True)
    landing = fields.String(required=True, allow_none=True)
    version = fields.Integer(required=True)
    computed_at = fields.String(required=True)


class ExplainSchema(Schema):
    member_id = fields.String(required=True)
    permission = fields.String(required=True)
    granted = fields.Boolean(required=True)
    decided_by = fields.String(required=True)
    status = fields.String(required=True)
    all_access = fields.Boolean(required=True)
    merged_into = fields.String(required=True, allow_none=True)
    public = fields.Boolean(required=True)
    rules_version = fields.Integer(required=True, allow_none=True)
    groups = fields.List(fields.Dict(), required=True)
    computed_at = fields.String(required=True)


class ActionResultSchema(Schema):
    member_id = fields.String(required=True)
    action = fields.String(required=True)
    changed = fields.Boolean(required=True)
    status = fields.String(required=True)
    all_access = fields.Boolean(required=True)
    version = fields.Integer(required=True)


class PasswordTokenSchema(Schema):
    member_id = fields.String(required=True)
    token = fields.String(required=True, metadata={"description": "single use"})
    expires_in = fields.Integer(required=True, metadata={"description": "seconds"})


class SetPasswordRequestSchema(Schema):
    token = fields.String(required=True, metadata={"description": "a set-password token"})
    password = fields.String(
        required=True,
        validate=validate.Length(min=MIN_PASSWORD_LENGTH, max=MAX_PASSWORD_LENGTH),
        metadata={"writeOnly": True},
    )


class PasswordSetSchema(Schema):
    member_id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["password_set"]))


class AllAccessRequestSchema(Schema):
    enabled = fields.Boolean(required=True)


class EventSchema(Schema):
    id = fields.String(required=True)
    source = fields.String(required=True)
    external_id = fields.String(required=True)
    type = fields.String(required=True)
    contact = fields.String(required=True, allow_none=True)
    occurred_at = fields.String(required=True, allow_none=True)
    received_at = fields.String(required=True, allow_none=True)
    processed_at = fields.String(required=True, allow_none=True)
    status = fields.String(required=True, validate=validate.OneOf(list(STATUSES)))
    reason = fields.String(required=True, allow_none=True)
    attempts = fields.Integer(required=True)
    last_error = fields.String(required=True, allow_none=True)
    deliveries = fields.Integer(required=True)
    effects = fields.Raw(required=True, allow_none=True)


class AttemptSchema(Schema):
    number = fields.Integer(required=True)
    started_at = fields.String(required=True, allow_none=True)
    finished_at = fields.String(required=True, allow_none=True)
    error = fields.String(required=True, allow_none=True)


class EventDetailSchema(EventSchema):
    payload = fields.Dict(required=True)
    headers = fields.Dict(required=True)
    attempt_log = fields.List(fields.Nested(AttemptSchema), required=True)


class EventListSchema(Schema):
    events = fields.List(fields.Nested(EventSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class ReplayFiltersSchema(Schema):
    status = fields.String(validate=validate.OneOf(list(STATUSES)))
    source = fields.String()
    type = fields.String()
    contact = fields.String(metadata={"description": "<crm>:<id>"})
    since = fields.String(metadata={"description": "ISO 8601 time; UTC if no zone"})
    until = fields.String(metadata={"description": "ISO 8601 time; UTC if no zone"})
    dry_run = fields.Boolean()


class ReplayOneRequestSchema(Schema):
    dry_run = fields.Boolean()


class PermissionChangeSchema(Schema):
    member_id = fields.String(required=True)
    new_member = fields.Boolean(required=True)
    added = fields.List(fields.String(), required=True)
    removed = fields.List(fields.String(), required=True)


class ReplayErrorSchema(Schema):
    event_id = fields.String(required=True)
    error = fields.String(required=True)


class DryRunSchema(Schema):
    dry_run = fields.Boolean(required=True)
    matched = fields.Integer(required=True)
    changes = fields.List(fields.Nested(PermissionChangeSchema), required=True)
    errors = fields.List(fields.Nested(ReplayErrorSchema), required=True)


class BulkReplayStartedSchema(Schema):
    replay_id = fields.String(required=True)
    matched = fields.Integer(required=True)


class ReplaySchema(Schema):
    replay_id = fields.String(required=True)
    status = fields.String(required=True)
    filters = fields.Dict(required=True, allow_none=True)
    matched = fields.Integer(required=True)
    done = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    remaining = fields.Integer(required=True)
    requested_by = fields.String(required=True, allow_none=True)
    created_at = fields.String(required=True)
    finished_at = fields.String(required=True, allow_none=True)
    error = fields.String(required=True, allow_none=True)


class AuditEntrySchema(Schema):
    id = fields.Integer(required=True)
    at = fields.String(required=True)
    token = fields.String(required=True, allow_none=True)
    action = fields.String(required=True)
    target = fields.String(required=True, allow_none=True)
    result = fields.String(required=True, allow_none=True)
    detail = fields.Raw(required=True, allow_none=True)


class AuditListSchema(Schema):
    entries = fields.List(fields.Nested(AuditEntrySchema), required=True)
    next_before = fields.Integer(required=True, allow_none=True)


class HealthSchema(Schema):
    status = fields.String(required=True)


class ReadyChecksSchema(Schema):
    database = fields.String(required=True, validate=validate.OneOf(["ok", "unavailable"]))
    redis = fields.String(required=True, validate=validate.OneOf(["ok", "unavailable"]))


class ReadySchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ready", "unavailable"]))
    checks = fields.Nested(ReadyChecksSchema, required=True)


class KeapFormSchema(Schema):
    """What a Keap campaign HTTP Post sends (field names are matched case-insensitively)."""

    contactId = fields.String(metadata={"description": "also ContactId, Id or Contact0Id"})
    Email = fields.String()
    FirstName = fields.String()
    LastName = fields.String()
    Groups = fields.String(metadata={"description": "comma-separated tag ids: the full list"})
    tag = fields.String(metadata={"description": "for addtag/removetag, if not in the URL"})
