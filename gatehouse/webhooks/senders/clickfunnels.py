"""ClickFunnels 2.0 webhooks: hex HMAC-SHA256 over f"{timestamp}.{body}".

Tags are identified by their ClickFunnels id (stable across renames): a rule names
`clickfunnels:<tag id>`. Subscription events become canonical `subscription.updated`
with the ClickFunnels contact as the customer, in the source's namespace.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from gatehouse.webhooks.errors import InvalidEvent, InvalidSignature
from gatehouse.webhooks.senders.base import (
    BaseSender,
    CanonicalEvent,
    Inbound,
    SourceInfo,
    canonical,
    parse_json,
)
from gatehouse.webhooks.signatures import any_signature_matches, check_timestamp, hmac_sha256

# The status a subscription event type asserts; other subscription.* types carry their
# status in the data (`service_status` or `status`).
STATUS_BY_EVENT = {
    "subscription.activated": "active",
    "subscription.reactivated": "active",
    "subscription.canceled": "canceled",
    "subscription.churned": "canceled",
    "subscription.paused": "paused",
}
# A churned subscription has ended for good; a canceled one may still be reactivated.
FINAL_EVENTS = frozenset({"subscription.churned"})
STATUS_BY_VALUE = {
    "active": "active",
    "trialing": "trialing",
    "in_trial": "trialing",
    "trial": "trialing",
    "past_due": "past_due",
    "unpaid": "unpaid",
    "paused": "paused",
    "canceled": "canceled",
    "cancelled": "canceled",
    "churned": "canceled",
    "incomplete": "incomplete",
}

# Known types that do not affect access; stored `skipped` with this reason.
IGNORED: dict[str, str] = {
    "order.completed": "orders grant nothing by themselves; subscriptions and tags do",
    "order.created": "orders grant nothing by themselves; subscriptions and tags do",
    "order.updated": "orders grant nothing by themselves; subscriptions and tags do",
    "invoice.paid": "invoices do not change access; subscription events do",
    "invoice.created": "invoices do not change access; subscription events do",
    "invoice.updated": "invoices do not change access; subscription events do",
    "invoice.payment_failed": "invoices do not change access; subscription events do",
    "invoice.refunded": "invoices do not change access; subscription events do",
}


def _id(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    if value is None or isinstance(value, bool) or value == "":
        return None
    return str(value)


def _profile(data: dict[str, Any]) -> dict[str, Any]:
    contact_id = _id(data.get("id"))
    if contact_id is None:
        raise InvalidEvent({"data.id": ["the contact id is required"]})
    contact: dict[str, Any] = {"id": contact_id}
    for wire, name in (
        ("email_address", "email"),
        ("first_name", "first_name"),
        ("last_name", "last_name"),
    ):
        value = data.get(wire)
        if isinstance(value, str) and value.strip():
            contact[name] = value.strip()
    return contact


def _tag_ids(tags: Any) -> list[str]:
    if not isinstance(tags, list):
        raise InvalidEvent({"data.tags": ["a list of tags"]})
    ids = [_id(t) for t in tags]
    if any(t is None for t in ids):
        raise InvalidEvent({"data.tags": ["every tag needs an id"]})
    return [t for t in ids if t is not None]


def _contact_updated(data: dict[str, Any], _type: str) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "contact.updated", "contact": _profile(data)}
    if data.get("tags") is not None:
        event["tags"] = _tag_ids(data["tags"])  # the contact's full list: a snapshot
    return event


def _contact_deleted(data: dict[str, Any], _type: str) -> dict[str, Any]:
    return {"type": "contact.deleted", "contact": _profile(data)}


def _applied_tag(data: dict[str, Any], event_type: str) -> dict[str, Any]:
    contact_id = _id(data.get("contact")) or _id(data.get("contact_id"))
    tag = _id(data.get("tag")) or _id(data.get("tag_id"))
    if contact_id is None or tag is None:
        raise InvalidEvent({"data": ["an applied tag needs contact_id and tag_id"]})
    kind = "contact.tag_added" if event_type.endswith(".created") else "contact.tag_removed"
    return {"type": kind, "contact": {"id": contact_id}, "tag": tag}


def _product(data: dict[str, Any]) -> str | None:
    found = _id(data.get("product_id")) or _id(data.get("product"))
    if found:
        return found
    for items in ("line_items", "products"):
        rows = data.get(items)
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            return _id(rows[0].get("product_id")) or _id(rows[0].get("product"))
    return None


def _subscription(data: dict[str, Any], event_type: str) -> dict[str, Any]:
    sub_id = _id(data.get("id"))
    if sub_id is None:
        raise InvalidEvent({"data.id": ["the subscription id is required"]})
    status = STATUS_BY_EVENT.get(event_type)
    if status is None:
        raw = data.get("service_status") or data.get("status")
        status = STATUS_BY_VALUE.get(str(raw).lower()) if raw is not None else None
    if status is None:
        raise InvalidEvent(
            {"data.service_status": [f"cannot tell the subscription's status from {event_type}"]}
        )
    contact = data.get("contact") if isinstance(data.get("contact"), dict) else {}
    customer = _id(data.get("contact_id")) or _id(contact)
    email = contact.get("email_address") if isinstance(contact, dict) else None
    subscription: dict[str, Any] = {
        "id": sub_id,
        "status": status,
        "product": _product(data),
        "customer": customer,
        "email": email or None,
        "current_period_end": data.get("current_period_end") or data.get("next_charge_at"),
    }
    if event_type in FINAL_EVENTS:
        subscription["final"] = True
    event: dict[str, Any] = {"type": "subscription.updated", "subscription": subscription}
    if customer is not None:
        # The subscriber is a contact of this CRM: billing links through it.
        event["contact"] = {"id": customer}
    return event


TRANSLATORS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "contact.created": _contact_updated,
    "contact.updated": _contact_updated,
    "contact.identified": _contact_updated,
    "contact.deleted": _contact_deleted,
    "contact/applied_tag.created": _applied_tag,
    "contact/applied_tag.deleted": _applied_tag,
}


def _translator(event_type: str) -> Callable[[dict[str, Any], str], dict[str, Any]] | None:
    if event_type in TRANSLATORS:
        return TRANSLATORS[event_type]
    if event_type.startswith("subscription.") and event_type.count(".") == 1:
        return _subscription
    return None


def _occurred_at(envelope: dict[str, Any], fallback: datetime) -> datetime:
    raw = envelope.get("created_at")
    if not isinstance(raw, str):
        return fallback
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEvent({"created_at": ["an ISO 8601 date-time"]}) from None
    if when.tzinfo is None:
        raise InvalidEvent({"created_at": ["needs a time zone"]})
    return when


class ClickFunnelsSender(BaseSender):
    kind = "clickfunnels"

    def verify(self, inbound: Inbound, source: SourceInfo, tolerance: int) -> None:
        header = inbound.headers.get("x-webhook-clickfunnels-signature")
        if not header:
            raise InvalidSignature("missing X-Webhook-ClickFunnels-Signature header")
        raw_ts = inbound.headers.get("x-webhook-clickfunnels-timestamp")
        # The unit is unconfirmed: a 13-digit value is taken as milliseconds.
        millis = raw_ts is not None and len(raw_ts.strip()) >= 13
        check_timestamp(raw_ts, tolerance, millis=millis)
        try:
            provided = bytes.fromhex(header.strip())
        except ValueError:
            raise InvalidSignature("X-Webhook-ClickFunnels-Signature is not hex") from None
        signed = f"{(raw_ts or '').strip()}.".encode() + inbound.body
        expected = (hmac_sha256(s.encode(), signed) for s in source.secrets)
        if not any_signature_matches(expected, [provided]):
            raise InvalidSignature("X-Webhook-ClickFunnels-Signature does not match")

    def parse(self, inbound: Inbound) -> Any:
        return parse_json(inbound.body)

    def translate(self, parsed: Any, inbound: Inbound, source: SourceInfo) -> list[CanonicalEvent]:
        if not isinstance(parsed, dict):
            raise InvalidEvent({"_schema": ["ClickFunnels posts one JSON object"]})
        event_id = _id(parsed.get("event_id"))
        event_type = parsed.get("event_type")
        if event_id is None:
            raise InvalidEvent({"event_id": ["required"]})
        if not isinstance(event_type, str) or not event_type:
            raise InvalidEvent({"event_type": ["required"]})
        data = parsed.get("data")
        if not isinstance(data, dict):
            raise InvalidEvent({"data": ["an object"]})
        when = _occurred_at(parsed, inbound.received_at)
        translator = _translator(event_type)
        reason = None
        if translator is not None:
            canonical_data = translator(data, event_type)
            if canonical_data["type"] == "subscription.updated":
                # Billing ids live in this source's namespace, like its contacts.
                canonical_data["subscription"]["provider"] = source.crm
        else:
            canonical_data = {"type": f"clickfunnels.{event_type}"[:64]}
            if event_type in IGNORED:
                reason = f"ClickFunnels {event_type} is ignored: {IGNORED[event_type]}"
        event = canonical(
            canonical_data, crm=source.crm, external_id=event_id[:255], occurred_at=when
        )
        if reason is not None:
            event.skip_reason = reason
        return [event]
