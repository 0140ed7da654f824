"""`contact.fetch`: a Keap REST hook named a contact by id; fetch it and apply what Keap holds.

The fetch happens before any row is locked, so a slow Keap never holds a contact's lock.
The fetched tags are a snapshot asserted at the hook's timestamp: what Keap holds then is
at least as new as the change the hook announced.
"""

from __future__ import annotations

from typing import Any

from gatehouse.handlers.contacts import (
    apply_profile,
    lock_contact,
    lock_member,
    sync_member_profile,
)
from gatehouse.handlers.outcome import Assertion, Outcome, Skip
from gatehouse.handlers.tags import apply_snapshot
from gatehouse.integrations.keap import KeapClient, configured_client
from gatehouse.models import Event


def fetch_contact(
    event: Event, when: Assertion, outcome: Outcome, client: KeapClient | None = None
) -> None:
    data: dict[str, Any] = event.payload["contact"]
    client = client or configured_client()
    if client is None:
        raise Skip(
            f"contact {data['crm']}:{data['id']} must be fetched from Keap, but no Keap API "
            "credentials are configured: set KEAP_API_TOKEN (and KEAP_API_BASE_URL) and replay"
        )
    fetched = client.get_contact(str(data["id"]))
    if fetched is None:
        raise Skip(f"Keap has no contact {data['id']} any more; its delete event will follow")
    contact = lock_contact(data["crm"], data["id"])
    assert contact is not None
    member = lock_member(contact.member_id)
    profile = {
        "email": fetched.email,
        "first_name": fetched.first_name,
        "last_name": fetched.last_name,
    }
    if apply_profile(contact, profile, when) and member is not None:
        sync_member_profile(member)
    added, removed = apply_snapshot(contact, fetched.tag_ids, when)
    if member is None:
        raise Skip(
            f"no member is linked to contact {contact.key}; its state is kept for when one is"
        )
    if (added or removed) and contact.state == "live":
        member.touch()
        outcome.note(
            member.id,
            "tags",
            contact=contact.key,
            added=[f"{contact.crm}:{t}" for t in sorted(added)],
            removed=[f"{contact.crm}:{t}" for t in sorted(removed)],
        )
