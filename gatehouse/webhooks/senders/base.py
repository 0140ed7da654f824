"""What every sender module provides: verify raw bytes, parse, translate to canonical events."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from flask import Response
from marshmallow import ValidationError

from gatehouse.schemas.events import load_canonical
from gatehouse.webhooks.errors import InvalidEvent, MalformedBody


@dataclass(frozen=True)
class Inbound:
    """The request as received, detached from Flask so senders are plain functions of it."""

    method: str
    # As the sender called it (GATEHOUSE_PUBLIC_URL applied behind a proxy); "" unless the
    # sender's `signs_url`.
    url: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    media_type: str  # lower-cased, without parameters
    received_at: datetime


@dataclass(frozen=True)
class SourceInfo:
    id: int
    slug: str
    kind: str
    crm: str
    secrets: tuple[str, ...]  # current first, then those in their rotation grace period
    public_key: str | None = None


@dataclass
class CanonicalEvent:
    type: str
    external_id: str
    occurred_at: datetime
    payload: dict[str, Any]
    skip_reason: str | None = None
    contact_key: str | None = field(default=None)
    # Set by `canonical()`, which has already walked the payload for unstorable text (senders
    # add only constants to it afterwards).
    payload_checked: bool = False


class Sender(Protocol):
    kind: ClassVar[str]
    issued_secret: ClassVar[str]
    media_types: ClassVar[frozenset[str]]
    # HighLevel retries only on 429, so it is told 429 when we cannot store.
    unavailable_status: ClassVar[int]
    # Whether `verify` reads Inbound.url (left empty otherwise: building it is not free).
    signs_url: ClassVar[bool]

    def handshake(self, inbound: Inbound, source: SourceInfo) -> Response | None: ...

    def verify(self, inbound: Inbound, source: SourceInfo, tolerance: int) -> None: ...

    def parse(self, inbound: Inbound) -> Any: ...

    def translate(
        self, parsed: Any, inbound: Inbound, source: SourceInfo
    ) -> list[CanonicalEvent]: ...


def parse_json(body: bytes) -> Any:
    """The body as JSON, or MalformedBody (400): never an exception that would answer 500."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"body is not JSON: {exc}") from None
    except RecursionError:
        # Nesting deeper than the interpreter's stack (e.g. 100k '[') is no one's event.
        raise MalformedBody("body is not JSON we accept: nested too deeply") from None


class BaseSender:
    kind: ClassVar[str] = ""
    # Where the signing secret comes from when the sender issues it (Gatehouse cannot make
    # one up: a generated secret would fail every signature); empty: Gatehouse generates it.
    issued_secret: ClassVar[str] = ""
    media_types: ClassVar[frozenset[str]] = frozenset({"application/json"})
    unavailable_status: ClassVar[int] = 503
    signs_url: ClassVar[bool] = False

    def handshake(self, inbound: Inbound, source: SourceInfo) -> Response | None:
        return None


def canonical(
    data: dict[str, Any],
    *,
    crm: str,
    external_id: str,
    occurred_at: datetime,
    field_prefix: str = "",
) -> CanonicalEvent:
    """Validate a canonical event dict and bind its contact to the source's CRM namespace.

    Unknown types come back with a skip reason: stored and shown, never silently dropped.
    """
    try:
        event = load_canonical(data)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise InvalidEvent(_prefixed(messages, field_prefix)) from None
    from gatehouse.schemas.events import CANONICAL_TYPES

    unstorable = _unstorable_fields(event)
    if unstorable:
        # Storing would fail (PostgreSQL text holds no NUL; neither database takes a lone
        # surrogate): answering 503 would have the sender retry a poison event forever.
        message = ["must be UTF-8 text without NUL characters"]
        raise InvalidEvent(_prefixed({name: message for name in unstorable}, field_prefix))
    when = event.pop("occurred_at", None) or occurred_at
    try:
        when = when.astimezone(UTC)
    except OverflowError:
        # e.g. 0001-01-01T00:00:00+05:00: valid ISO 8601, but no UTC instant exists for it.
        outside = {"occurred_at": ["is outside the range of representable times"]}
        raise InvalidEvent(_prefixed(outside, field_prefix)) from None
    contact = event.get("contact")
    if contact is not None:
        contact["crm"] = crm
    sub = event.get("subscription")
    if sub is not None and sub.get("current_period_end") is not None:
        sub["current_period_end"] = sub["current_period_end"].isoformat()
    skip = None
    if event["type"] not in CANONICAL_TYPES:
        skip = f"event type {event['type']!r} is not handled by Gatehouse"
    return CanonicalEvent(
        type=event["type"],
        external_id=external_id,
        occurred_at=when,
        payload=event,
        skip_reason=skip,
        contact_key=f"{crm}:{contact['id']}" if contact else None,
        payload_checked=True,
    )


def check_storable(events: list[CanonicalEvent]) -> None:
    """Refuse (422) events whose id, type, contact or payload no database can store.

    Some senders build events without `canonical()` (skipped types, internal fetches), and
    ids come from headers: a NUL there made PostgreSQL refuse the insert, answered 503, and
    the sender would retry a poison event forever.
    """
    for index, event in enumerate(events):
        fields: dict[str, Any] = {
            "event id": event.external_id,
            "type": event.type,
            "contact": event.contact_key or "",
            "reason": event.skip_reason or "",
        }
        if not event.payload_checked:  # canonical() walked it already (the hot path)
            fields["payload"] = event.payload
        bad = [name for name, value in fields.items() if _unstorable_fields(value, name)]
        if bad:
            prefix = f"{index}." if len(events) > 1 else ""
            message = ["must be UTF-8 text without NUL characters"]
            raise InvalidEvent({f"{prefix}{name}": message for name in bad})


def _prefixed(messages: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in messages.items()} if prefix else messages


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
        return False
    return True


def _unstorable_fields(value: Any, path: str = "") -> list[str]:
    """Top-level field names holding text no database can store (NUL, lone surrogates)."""
    if isinstance(value, str):
        return [] if _storable(value) else [path]
    if isinstance(value, dict):
        found: list[str] = []
        for key, item in value.items():
            if _unstorable_fields(item, path or str(key)) or not _storable(str(key)):
                found.append(path or str(key))
        return sorted(set(found))
    if isinstance(value, list | tuple):
        return [path] if any(_unstorable_fields(item, path) for item in value) else []
    return []
