"""Keap REST Hooks: thin `object_keys` payloads, authenticated by a signed key in the URL.

Keap cannot sign, so the hook URL carries an itsdangerous key bound to this source and the
one command `resthook` (`?resthook=KEY`). The subscription handshake (an empty POST with
`X-Hook-Secret`) is answered only on a URL with a valid key.

Payloads name contacts by id only. A `contact.add|edit` becomes an internal
`contact.fetch` event: a worker fetches the contact from Keap's API
(gatehouse.handlers.keap_fetch), since the receive path must answer fast and never call out.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Response

from gatehouse.webhooks.errors import InvalidEvent, InvalidSignature
from gatehouse.webhooks.senders.base import (
    BaseSender,
    CanonicalEvent,
    Inbound,
    SourceInfo,
    canonical,
    parse_json,
)
from gatehouse.webhooks.senders.keap_http_post import make_key, verify_key

COMMAND = "resthook"
FETCH_TYPE = "contact.fetch"
MAX_OBJECTS = 1000

# Known Keap keys that do not affect access (or whose object shape is unconfirmed).
IGNORED: dict[str, str] = {
    "contactGroup.applied": "its object shape is unconfirmed; subscribe to contact.edit",
    "contactGroup.removed": "its object shape is unconfirmed; subscribe to contact.edit",
    "invoice.add": "Keap billing is not used for access",
    "invoice.edit": "Keap billing is not used for access",
    "invoice.delete": "Keap billing is not used for access",
    "invoice.payment.add": "Keap billing is not used for access",
    "invoice.payment.edit": "Keap billing is not used for access",
    "invoice.payment.delete": "Keap billing is not used for access",
    "order.add": "Keap billing is not used for access",
    "order.edit": "Keap billing is not used for access",
    "order.delete": "Keap billing is not used for access",
    "subscription.add": "Keap billing is not used for access",
    "subscription.edit": "Keap billing is not used for access",
    "subscription.delete": "Keap billing is not used for access",
}


def hook_url_query(secret: str, slug: str) -> str:
    return f"{COMMAND}={make_key(secret, slug, COMMAND)}"


def _fetch(contact_id: str) -> dict[str, Any]:
    return {"type": FETCH_TYPE, "contact": {"id": contact_id}}


def _deleted(contact_id: str) -> dict[str, Any]:
    return {"type": "contact.deleted", "contact": {"id": contact_id}}


TRANSLATORS: dict[str, Callable[[str], dict[str, Any]]] = {
    "contact.add": _fetch,
    "contact.edit": _fetch,
    "contact.delete": _deleted,
}


def _timestamp(raw: Any, index: int) -> datetime:
    if not isinstance(raw, str):
        raise InvalidEvent({f"object_keys.{index}.timestamp": ["required"]})
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEvent({f"object_keys.{index}.timestamp": ["an ISO 8601 date-time"]}) from None
    if when.tzinfo is None:
        raise InvalidEvent({f"object_keys.{index}.timestamp": ["needs a time zone"]})
    return when


class KeapRestHookSender(BaseSender):
    kind = "keap-rest-hook"

    def _check_key(self, inbound: Inbound, source: SourceInfo) -> None:
        key = inbound.query.get(COMMAND)
        if not key:
            raise InvalidSignature(f"no {COMMAND} key in the URL")
        if not verify_key(source.secrets, source.slug, COMMAND, key):
            raise InvalidSignature(f"the key is not valid for {COMMAND} on this source")

    def handshake(self, inbound: Inbound, source: SourceInfo) -> Response | None:
        secret = inbound.headers.get("x-hook-secret")
        if secret is None or inbound.body.strip():
            return None
        # Without this check anyone could subscribe a hook to our URL in someone's name.
        self._check_key(inbound, source)
        response = Response(status=200)
        response.headers["X-Hook-Secret"] = secret
        return response

    def verify(self, inbound: Inbound, source: SourceInfo, tolerance: int) -> None:
        self._check_key(inbound, source)

    def parse(self, inbound: Inbound) -> Any:
        return parse_json(inbound.body)

    def translate(self, parsed: Any, inbound: Inbound, source: SourceInfo) -> list[CanonicalEvent]:
        if not isinstance(parsed, dict):
            raise InvalidEvent({"_schema": ["a Keap REST hook posts one JSON object"]})
        event_key = parsed.get("event_key")
        objects = parsed.get("object_keys")
        if not isinstance(event_key, str) or not event_key:
            raise InvalidEvent({"event_key": ["required"]})
        if not isinstance(objects, list):
            raise InvalidEvent({"object_keys": ["a list of objects"]})
        if len(objects) > MAX_OBJECTS:
            raise InvalidEvent({"object_keys": [f"at most {MAX_OBJECTS} objects"]})
        translator = TRANSLATORS.get(event_key)
        events = []
        for index, obj in enumerate(objects):
            if not isinstance(obj, dict) or obj.get("id") in (None, ""):
                raise InvalidEvent({f"object_keys.{index}.id": ["required"]})
            object_id = str(obj["id"])
            when = _timestamp(obj.get("timestamp"), index)
            external_id = f"{event_key}:{object_id}:{obj['timestamp']}"[:255]
            events.append(self._one(event_key, translator, object_id, when, external_id, source))
        return events

    def _one(
        self,
        event_key: str,
        translator: Callable[[str], dict[str, Any]] | None,
        object_id: str,
        when: datetime,
        external_id: str,
        source: SourceInfo,
    ) -> CanonicalEvent:
        if translator is _fetch:
            # An internal type (not a canonical one a standard source may post): build it here.
            contact = {"id": object_id, "crm": source.crm}
            if not 1 <= len(object_id) <= 128:
                raise InvalidEvent({"object_keys.id": ["1 to 128 characters"]})
            return CanonicalEvent(
                type=FETCH_TYPE,
                external_id=external_id,
                occurred_at=when,
                payload={"type": FETCH_TYPE, "contact": contact, "event_key": event_key},
                contact_key=f"{source.crm}:{object_id}",
            )
        reason = None
        if translator is not None:
            data = translator(object_id)
        else:
            data = {"type": f"keap.{event_key}"[:64]}
            if event_key in IGNORED:
                reason = f"Keap {event_key} is ignored: {IGNORED[event_key]}"
        event = canonical(data, crm=source.crm, external_id=external_id, occurred_at=when)
        if reason is not None:
            event.skip_reason = reason
        return event
