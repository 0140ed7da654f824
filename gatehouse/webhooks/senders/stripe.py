"""Stripe: `Stripe-Signature` over `t.body`; billing objects become `subscription.updated`.

Each Stripe event is a snapshot of one object at `event.created`, delivered at least once
and in any order, so every translation states the subscription's whole status as of then
and handlers keep the newest (see gatehouse/handlers/billing.py).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gatehouse.schemas.events import SUBSCRIPTION_STATUSES
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

# Statuses Stripe never moves a subscription out of.
FINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})
STATUSES = SUBSCRIPTION_STATUSES

# Known event types that never change access: stored as `skipped` saying so, so that
# subscribing to more events than needed in the dashboard is harmless and visible.
IGNORED = frozenset(
    {
        "customer.created",
        "customer.updated",
        # Stripe cancels the customer's subscriptions first and sends their own events.
        "customer.deleted",
        "customer.subscription.trial_will_end",
        "customer.subscription.pending_update_applied",
        "customer.subscription.pending_update_expired",
        "checkout.session.expired",
        # The subscription's own `customer.subscription.updated` carries the new status.
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
        "invoice.created",
        "invoice.deleted",
        "invoice.finalized",
        "invoice.finalization_failed",
        "invoice.marked_uncollectible",
        "invoice.overdue",
        "invoice.payment_action_required",
        # Sent together with `invoice.paid`, which is the one translated.
        "invoice.payment_succeeded",
        "invoice.sent",
        "invoice.upcoming",
        "invoice.updated",
        "invoice.voided",
        "invoice.will_be_due",
        "invoiceitem.created",
        "payment_intent.created",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.requires_action",
        "payment_method.attached",
        "payment_method.detached",
        "charge.succeeded",
        "charge.failed",
        "charge.refunded",
        "charge.captured",
        "charge.updated",
    }
)


def parse_signature_header(header: str) -> tuple[str | None, list[bytes]]:
    """`t=<unix>,v1=<hex>[,v1=<hex>…][,v0=…]` -> (t, v1 signatures); other schemes ignored."""
    timestamp: str | None = None
    signatures: list[bytes] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and timestamp is None:
            timestamp = value
        elif name == "v1":
            try:
                signatures.append(binascii.unhexlify(value))
            except (binascii.Error, ValueError):
                continue  # one garbled entry must not hide a valid one next to it
    return timestamp, signatures


def _id_of(value: Any) -> str | None:
    """An id field that may be a plain id or an expanded object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def _dig(obj: Any, *path: str | int) -> Any:
    for step in path:
        if isinstance(step, int):
            if not isinstance(obj, list) or len(obj) <= step:
                return None
            obj = obj[step]
        else:
            if not isinstance(obj, dict):
                return None
            obj = obj.get(step)
    return obj


def _from_unix(value: Any) -> datetime | None:
    """A positive unix timestamp as a datetime; None for anything else, 10**20 included."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _timestamp(value: Any) -> str | None:
    when = _from_unix(value)
    return when.isoformat() if when else None


def _hints(metadata: Any, client_reference_id: Any = None) -> dict[str, str]:
    """Linking hints from metadata; malformed values are dropped, not rejected, because
    a 4xx would make Stripe retry a payload that can never change for three days."""
    hints: dict[str, str] = {}
    if isinstance(metadata, dict):
        for name in ("contact_id", "member_id"):
            value = metadata.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                text = str(value).strip()
                if text and len(text) <= (160 if name == "contact_id" else 128):
                    hints[name] = text
    if "member_id" not in hints and isinstance(client_reference_id, str):
        ref = client_reference_id.strip()
        if ref and len(ref) <= 128:
            hints["member_id"] = ref
    return hints


def _email(*candidates: Any) -> str | None:
    for value in candidates:
        if isinstance(value, str) and "@" in value and len(value) <= 320:
            return value.strip()
    return None


def _item_product(item: Any) -> str | None:
    return (
        _id_of(_dig(item, "price", "product"))
        or _id_of(_dig(item, "plan", "product"))
        or _id_of(_dig(item, "pricing", "price_details", "product"))
    )


def from_subscription(obj: dict[str, Any], stripe_type: str) -> dict[str, Any] | str:
    status = obj.get("status")
    if stripe_type == "customer.subscription.deleted":
        status = "canceled"  # the object may still say its last status on old API versions
    if not isinstance(status, str) or status not in STATUSES:
        # A list or object here is unhashable: checked first so it is skipped, not a 500.
        return f"subscription status {status!r} is not one Gatehouse knows"
    first_item = _dig(obj, "items", "data", 0)
    return {
        "id": _id_of(obj.get("id")),
        "status": status,
        "product": _item_product(first_item) or _id_of(_dig(obj, "plan", "product")),
        # Top level before API version 2025-03-31, on each item after.
        "current_period_end": _timestamp(obj.get("current_period_end"))
        or _timestamp(_dig(first_item, "current_period_end")),
        "customer": _id_of(obj.get("customer")),
        **_hints(obj.get("metadata")),
    }


def _invoice_subscription(obj: dict[str, Any]) -> str | None:
    return (
        _id_of(obj.get("subscription"))
        or _id_of(_dig(obj, "parent", "subscription_details", "subscription"))
        or _id_of(_dig(obj, "lines", "data", 0, "subscription"))
        or _id_of(
            _dig(obj, "lines", "data", 0, "parent", "subscription_item_details", "subscription")
        )
    )


def from_invoice(obj: dict[str, Any], stripe_type: str) -> dict[str, Any] | str:
    sub_id = _invoice_subscription(obj)
    if sub_id is None:
        return "the invoice is not for a subscription; nothing to grant"
    if stripe_type == "invoice.paid":
        status = "active"
    elif obj.get("billing_reason") == "subscription_create":
        status = "incomplete"  # the first payment failed: Stripe never granted it
    else:
        status = "past_due"
    metadata = _dig(obj, "parent", "subscription_details", "metadata") or _dig(
        obj, "subscription_details", "metadata"
    )
    return {
        "id": sub_id,
        "status": status,
        "product": _item_product(_dig(obj, "lines", "data", 0)),
        "customer": _id_of(obj.get("customer")),
        "email": _email(obj.get("customer_email")),
        **_hints(metadata),
    }


def from_checkout(obj: dict[str, Any], stripe_type: str) -> dict[str, Any] | str:
    sub_id = _id_of(obj.get("subscription"))
    if sub_id is None:
        return "the checkout session has no subscription (a one-time payment); nothing to grant"
    paid = obj.get("payment_status") in ("paid", "no_payment_required")
    return {
        "id": sub_id,
        "status": "active" if paid else "incomplete",
        "customer": _id_of(obj.get("customer")),
        "email": _email(_dig(obj, "customer_details", "email"), obj.get("customer_email")),
        **_hints(obj.get("metadata"), obj.get("client_reference_id")),
    }


Translator = Callable[[dict[str, Any], str], "dict[str, Any] | str"]

TRANSLATORS: dict[str, Translator] = {
    "customer.subscription.created": from_subscription,
    "customer.subscription.updated": from_subscription,
    "customer.subscription.deleted": from_subscription,
    "customer.subscription.paused": from_subscription,
    "customer.subscription.resumed": from_subscription,
    "invoice.paid": from_invoice,
    "invoice.payment_failed": from_invoice,
    "checkout.session.completed": from_checkout,
}


def _envelope(parsed: Any) -> tuple[str, str, datetime, dict[str, Any]]:
    if not isinstance(parsed, dict):
        raise InvalidEvent({"_schema": ["a Stripe event must be a JSON object"]})
    errors: dict[str, list[str]] = {}
    event_id, kind, created = parsed.get("id"), parsed.get("type"), parsed.get("created")
    obj = _dig(parsed, "data", "object")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 255:
        errors["id"] = ["the Stripe event id (evt_…) is required"]
    if not isinstance(kind, str) or not 0 < len(kind) <= 64:
        errors["type"] = ["the Stripe event type is required"]
    when = _from_unix(created)
    if when is None:
        errors["created"] = ["a unix timestamp is required"]
    if not isinstance(obj, dict):
        errors["data.object"] = ["the event's object is required"]
    if errors:
        raise InvalidEvent(errors)
    assert isinstance(obj, dict) and when is not None
    return str(event_id), str(kind), when, obj


class StripeSender(BaseSender):
    kind = "stripe"
    issued_secret = (
        "the endpoint's signing secret, whsec_… (Stripe dashboard → Developers → Webhooks → "
        "the endpoint → Signing secret)"
    )

    def verify(self, inbound: Inbound, source: SourceInfo, tolerance: int) -> None:
        header = inbound.headers.get("stripe-signature")
        if not header:
            raise InvalidSignature("missing Stripe-Signature header")
        timestamp, provided = parse_signature_header(header)
        if not provided:
            raise InvalidSignature("no v1 signature in Stripe-Signature")
        check_timestamp(timestamp, tolerance)
        signed = f"{timestamp}.".encode() + inbound.body
        # The key is the whsec_ string itself, not its base64 payload (unlike Standard Webhooks).
        expected = (hmac_sha256(s.encode(), signed) for s in source.secrets)
        if not any_signature_matches(expected, provided):
            raise InvalidSignature("signature does not match")

    def parse(self, inbound: Inbound) -> Any:
        return parse_json(inbound.body)

    def translate(self, parsed: Any, inbound: Inbound, source: SourceInfo) -> list[CanonicalEvent]:
        event_id, kind, created, obj = _envelope(parsed)
        translator = TRANSLATORS.get(kind)
        if translator is None:
            reason = (
                f"Stripe event type {kind!r} is ignored: it does not change access"
                if kind in IGNORED
                else f"Stripe event type {kind!r} is not handled by Gatehouse"
            )
            return [self._skipped(kind, event_id, created, obj, reason)]
        result = translator(obj, kind)
        if isinstance(result, str):
            return [self._skipped(kind, event_id, created, obj, result)]
        subscription = {k: v for k, v in result.items() if v is not None}
        subscription["provider"] = source.crm
        if subscription["status"] in FINAL_STATUSES:
            subscription["final"] = True
        event = canonical(
            {"type": "subscription.updated", "subscription": subscription},
            crm=source.crm,
            external_id=event_id,
            occurred_at=created,
            field_prefix="data.object.",
        )
        event.payload["stripe_type"] = kind
        customer = subscription.get("customer")
        if customer:
            # Unmatched events are found again by this key when the customer gets linked.
            event.contact_key = f"{source.crm}:{customer}"[:160]
        return [event]

    @staticmethod
    def _skipped(
        kind: str, event_id: str, created: datetime, obj: dict[str, Any], reason: str
    ) -> CanonicalEvent:
        return CanonicalEvent(
            type=kind,
            external_id=event_id,
            occurred_at=created,
            payload={"type": kind, "object": {"id": obj.get("id"), "object": obj.get("object")}},
            skip_reason=reason,
        )
