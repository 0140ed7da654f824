"""HighLevel (GoHighLevel) webhooks: Ed25519 `X-GHL-Signature` over the raw body.

The source's `public_key` holds HighLevel's published key, PEM or base64 of the 32 raw
bytes. Several keys may be given (several PEM blocks, or one base64 key per line) so a
key HighLevel is rotating out keeps working while both are configured.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gatehouse.webhooks.errors import InvalidEvent, InvalidSignature
from gatehouse.webhooks.senders.base import (
    BaseSender,
    CanonicalEvent,
    Inbound,
    SourceInfo,
    canonical,
    parse_json,
)

log = logging.getLogger("gatehouse.webhooks")
PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)

# Known HighLevel types that do not affect access; stored `skipped` with this reason.
IGNORED: dict[str, str] = {
    "ContactDndUpdate": "do-not-disturb settings do not affect access",
    "NoteCreate": "notes do not affect access",
    "NoteUpdate": "notes do not affect access",
    "NoteDelete": "notes do not affect access",
    "TaskCreate": "tasks do not affect access",
    "TaskComplete": "tasks do not affect access",
    "TaskDelete": "tasks do not affect access",
    "OpportunityCreate": "opportunities do not affect access",
    "OpportunityUpdate": "opportunities do not affect access",
    "OpportunityDelete": "opportunities do not affect access",
    "OpportunityStatusUpdate": "opportunities do not affect access",
    "OpportunityStageUpdate": "opportunities do not affect access",
    "InboundMessage": "messages do not affect access",
    "OutboundMessage": "messages do not affect access",
}


class PublicKeyError(ValueError):
    """The configured public key cannot be read."""


def load_public_keys(text: str) -> list[Ed25519PublicKey]:
    """Every Ed25519 key in `text`: PEM blocks, else base64 raw keys one per line."""
    keys: list[Ed25519PublicKey] = []
    blocks = PEM_BLOCK.findall(text)
    if blocks:
        for block in blocks:
            key = load_pem_public_key(block.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise PublicKeyError("a PEM public key is not an Ed25519 key")
            keys.append(key)
        return keys
    for line in text.split():
        try:
            raw = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise PublicKeyError("the public key is neither PEM nor base64") from None
        if len(raw) != 32:
            raise PublicKeyError("a raw Ed25519 public key is 32 bytes")
        keys.append(Ed25519PublicKey.from_public_bytes(raw))
    if not keys:
        raise PublicKeyError("no public key configured")
    return keys


def _profile(data: dict[str, Any]) -> dict[str, Any]:
    contact: dict[str, Any] = {"id": str(data["id"])}
    for wire, name in (("email", "email"), ("firstName", "first_name"), ("lastName", "last_name")):
        value = data.get(wire)
        if isinstance(value, str) and value.strip():
            contact[name] = value.strip()
    return contact


def _tags(data: dict[str, Any]) -> list[str] | None:
    tags = data.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidEvent({"tags": ["a list of tag names"]})
    return [t.strip() for t in tags if t.strip()]


def _updated(data: dict[str, Any]) -> dict[str, Any]:
    # ContactCreate/Update only update the contact: members are created by provisioning.
    event: dict[str, Any] = {"type": "contact.updated", "contact": _profile(data)}
    tags = _tags(data)
    if tags is not None:
        event["tags"] = tags  # HighLevel sends the full list: a snapshot
    return event


def _tags_set(data: dict[str, Any]) -> dict[str, Any]:
    tags = _tags(data)
    if tags is None:
        raise InvalidEvent({"tags": ["ContactTagUpdate needs the contact's tags"]})
    return {"type": "contact.tags_set", "contact": _profile(data), "tags": tags}


def _deleted(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "contact.deleted", "contact": {"id": str(data["id"])}}


TRANSLATORS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ContactCreate": _updated,
    "ContactUpdate": _updated,
    "ContactTagUpdate": _tags_set,
    "ContactDelete": _deleted,
}


def external_id(data: dict[str, Any], body: bytes) -> str:
    """webhookId, else id + type + dateUpdated, else the body's hash.

    Nothing is signed with a time, and a retry repeats the body byte for byte, so the
    hash still makes a redelivery a duplicate.
    """
    if data.get("webhookId"):
        return str(data["webhookId"])[:255]
    if data.get("id") and data.get("dateUpdated"):
        return f"{data['id']}:{data['type']}:{data['dateUpdated']}"[:255]
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _occurred_at(data: dict[str, Any], fallback: datetime) -> datetime:
    for name in ("dateUpdated", "timestamp", "dateAdded"):
        raw = data.get(name)
        if not isinstance(raw, str):
            continue
        try:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent({name: ["an ISO 8601 date-time"]}) from None
        if when.tzinfo is None:
            raise InvalidEvent({name: ["needs a time zone"]})
        return when
    return fallback


class GhlSender(BaseSender):
    kind = "ghl"
    # HighLevel retries only on 429.
    unavailable_status = 429

    def verify(self, inbound: Inbound, source: SourceInfo, tolerance: int) -> None:
        header = inbound.headers.get("x-ghl-signature")
        if not header:
            raise InvalidSignature("missing X-GHL-Signature header")
        try:
            signature = base64.b64decode(header, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSignature("X-GHL-Signature is not base64") from None
        try:
            keys = load_public_keys(source.public_key or "")
        except (PublicKeyError, ValueError) as exc:
            log.warning("webhook.ghl_public_key_unreadable", extra={"source": source.slug})
            raise InvalidSignature(
                f"the source's public key cannot be used ({exc}); add the source again "
                "with --public-key FILE"
            ) from None
        for key in keys:
            try:
                key.verify(signature, inbound.body)
                return
            except CryptoInvalidSignature:
                continue
        raise InvalidSignature("X-GHL-Signature does not match")

    def parse(self, inbound: Inbound) -> Any:
        return parse_json(inbound.body)

    def translate(self, parsed: Any, inbound: Inbound, source: SourceInfo) -> list[CanonicalEvent]:
        if not isinstance(parsed, dict):
            raise InvalidEvent({"_schema": ["HighLevel posts one JSON object"]})
        kind = parsed.get("type")
        if not isinstance(kind, str) or not kind:
            raise InvalidEvent({"type": ["required"]})
        when = _occurred_at(parsed, inbound.received_at)
        ext = external_id(parsed, inbound.body)
        translator = TRANSLATORS.get(kind)
        reason = None
        if translator is not None:
            if parsed.get("id") is None:
                raise InvalidEvent({"id": ["the contact id is required"]})
            data = translator(parsed)
        else:
            data = {"type": f"ghl.{kind}"[:64]}
            # Only Contact* events name a contact in `id`; others name their own object.
            if kind.startswith("Contact") and parsed.get("id") is not None:
                data["contact"] = {"id": str(parsed["id"])}
            if kind in IGNORED:
                reason = f"HighLevel {kind} is ignored: {IGNORED[kind]}"
        event = canonical(data, crm=source.crm, external_id=ext, occurred_at=when)
        if reason is not None:
            event.skip_reason = reason
        return [event]
