"""Canonical events: the one format every sender is translated into before it is stored."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

MAX_TAGS = 5000
_id = validate.Length(min=1, max=128)
_tag = fields.String(validate=validate.Length(min=1, max=128))

# Stripe's subscription statuses, which every billing sender is translated into.
SUBSCRIPTION_STATUSES = frozenset(
    {
        "active",
        "trialing",
        "past_due",
        "incomplete",
        "incomplete_expired",
        "paused",
        "unpaid",
        "canceled",
    }
)

CANONICAL_TYPES = (
    "member.provision",
    "contact.updated",
    "contact.tags_set",
    "contact.tag_added",
    "contact.tag_removed",
    "contact.merged",
    "contact.deleted",
    "subscription.updated",
    "member.revoked",
)
CONTACT_TYPES = frozenset(CANONICAL_TYPES) - {"subscription.updated"}


class ContactSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True, validate=_id)
    email = fields.Email(load_default=None, allow_none=True, validate=validate.Length(max=320))
    first_name = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=100)
    )
    last_name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=100))


class SubscriptionSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True, validate=_id)
    product = fields.String(load_default=None, allow_none=True, validate=_id)
    status = fields.String(
        required=True,
        validate=validate.OneOf(sorted(SUBSCRIPTION_STATUSES)),
    )
    current_period_end = fields.AwareDateTime(load_default=None, allow_none=True)
    # The provider's customer id (Stripe `cus_…`) and what may link it to a member.
    customer = fields.String(load_default=None, allow_none=True, validate=_id)
    email = fields.Email(load_default=None, allow_none=True)
    # Which billing namespace the ids belong to; defaults to the source's crm.
    provider = fields.String(load_default=None, allow_none=True, validate=_id)
    # Hints that link a customer seen for the first time to a member (metadata on the
    # provider's object): a contact as "crm:id" (or a bare id, used when unambiguous) and
    # a Gatehouse member id.
    contact_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 160))
    member_id = fields.String(load_default=None, allow_none=True, validate=_id)
    # The provider says this status can never change again (Stripe: canceled,
    # incomplete_expired), so it outranks any non-final assertion whatever its time.
    final = fields.Boolean(load_default=None, allow_none=True)


class CanonicalEventSchema(Schema):
    """The body of a `standard` webhook, and what each sender's translation produces."""

    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True, validate=validate.Length(min=1, max=64))
    occurred_at = fields.AwareDateTime(load_default=None, allow_none=True)
    contact = fields.Nested(ContactSchema, load_default=None)
    tags = fields.List(_tag, load_default=None, validate=validate.Length(max=MAX_TAGS))
    tag = fields.String(load_default=None, validate=validate.Length(min=1, max=128))
    merged_ids = fields.List(fields.String(validate=_id), load_default=None)
    subscription = fields.Nested(SubscriptionSchema, load_default=None)

    @validates_schema
    def _fields_for_type(self, data: dict[str, Any], **_: Any) -> None:
        kind = data.get("type")
        if kind not in CANONICAL_TYPES:
            return  # unknown types are stored as skipped, not rejected
        if kind in CONTACT_TYPES and data.get("contact") is None:
            raise ValidationError("required for this event type", "contact")
        if kind in ("contact.tag_added", "contact.tag_removed") and not (
            data.get("tag") or data.get("tags")
        ):
            raise ValidationError("a tag is required for this event type", "tag")
        if kind == "contact.tags_set" and data.get("tags") is None:
            raise ValidationError("the full tag list is required for contact.tags_set", "tags")
        if kind == "contact.merged" and not data.get("merged_ids"):
            raise ValidationError("name the merged-away contact ids", "merged_ids")
        if kind == "subscription.updated" and data.get("subscription") is None:
            raise ValidationError("required for this event type", "subscription")


canonical_event_schema = CanonicalEventSchema()


def load_canonical(data: Any) -> dict[str, Any]:
    """Validate one canonical event; raises marshmallow.ValidationError with field messages."""
    if not isinstance(data, dict):
        raise ValidationError({"_schema": ["an event must be a JSON object"]})
    loaded = _plain_tag_change(data)
    if loaded is not None:
        return loaded
    loaded = canonical_event_schema.load(data)
    return {k: v for k, v in loaded.items() if v is not None}


_TAG_CHANGES = frozenset({"contact.tag_added", "contact.tag_removed"})
_PLAIN_TAG_CHANGE_KEYS = frozenset({"type", "contact", "tag"})
# The nested contact as the schema loads it: its fields in declared order, absent ones None.
_CONTACT_FIELDS = tuple(ContactSchema().fields)
_ID_MAX = next(v.max for v in ContactSchema().fields["id"].validators if hasattr(v, "max"))
_TAG_MAX = next(v.max for v in CanonicalEventSchema().fields["tag"].validators if hasattr(v, "max"))


def _plain_tag_change(data: dict[str, Any]) -> dict[str, Any] | None:
    """`{"type": "contact.tag_added" | "contact.tag_removed", "contact": {"id": …}, "tag": …}`,
    valid, loaded exactly as the schema loads it; None for anything else (the schema decides).

    A burst (a campaign tagging 50,000 contacts) is almost all this one shape, and the
    schema's general walk over its eleven fields is an eighth of an accepted request's CPU.
    `tests/webhooks/test_canonical_schema.py` checks, over generated near-misses, that this
    never accepts what the schema would not and never loads anything differently.
    """
    if data.keys() != _PLAIN_TAG_CHANGE_KEYS:
        return None
    kind, contact, tag = data["type"], data["contact"], data["tag"]
    if kind.__class__ is not str or kind not in _TAG_CHANGES:
        return None
    if tag.__class__ is not str or not 0 < len(tag) <= _TAG_MAX:
        return None
    if contact.__class__ is not dict or contact.keys() != {"id"}:
        return None
    contact_id = contact["id"]
    if contact_id.__class__ is not str or not 0 < len(contact_id) <= _ID_MAX:
        return None
    loaded_contact = dict.fromkeys(_CONTACT_FIELDS)
    loaded_contact["id"] = contact_id
    return {"type": kind, "contact": loaded_contact, "tag": tag}
