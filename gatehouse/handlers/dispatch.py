"""Canonical event type -> handler. Senders translate; handlers know only canonical events."""

from __future__ import annotations

from collections.abc import Callable

from gatehouse.handlers import billing, contact_events, merges
from gatehouse.handlers.keap_fetch import fetch_contact
from gatehouse.handlers.outcome import Assertion, Outcome
from gatehouse.models import Event

Handler = Callable[[Event, Assertion, Outcome], None]

HANDLERS: dict[str, Handler] = {
    "member.provision": contact_events.provision,
    "contact.updated": contact_events.contact_updated,
    "contact.tags_set": contact_events.tags_set,
    "contact.tag_added": contact_events.tag_added,
    "contact.tag_removed": contact_events.tag_removed,
    "contact.deleted": contact_events.deleted,
    "member.revoked": contact_events.revoked,
    "subscription.updated": billing.subscription_updated,
    "contact.merged": merges.merged,
    "contact.fetch": fetch_contact,
}
