"""Filters over the event inbox, shared by the events API, the admin page, the CLI and replays."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select

from gatehouse.extensions import db
from gatehouse.models import STATUSES, Event, EventAttempt, Source

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
# Headers dropped again when shown, whatever the receive path stored: defence in depth.
_SECRET_WORDS = ("signature", "secret", "authorization", "cookie", "token", "key", "password")


class FilterError(ValueError):
    """A filter value is wrong; the message says which and how to write it."""


def parse_time(name: str, raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(
            f"{name} must be an ISO 8601 time, e.g. 2026-01-31T22:00:00Z; got {raw!r}"
        ) from None
    # A time without a zone is read as UTC: every time Gatehouse shows is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class EventFilter:
    status: str | None = None
    source: str | None = None
    type: str | None = None
    contact: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(cls, raw: Any) -> EventFilter:
        """From query arguments or a JSON object; empty values mean "any"."""
        if not isinstance(raw, dict) and not hasattr(raw, "get"):
            raise FilterError("filters must be a JSON object")

        def text(name: str) -> str | None:
            value = raw.get(name)
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise FilterError(f"{name} must be a string")
            return value.strip() or None

        status = text("status")
        if status is not None and status not in STATUSES:
            raise FilterError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        contact = text("contact")
        if contact is not None:
            crm, _, contact_id = contact.partition(":")
            if not crm or not contact_id:
                raise FilterError("contact must look like <crm>:<id>, e.g. keap:2729")
        since, until = text("since"), text("until")
        return cls(
            status=status,
            source=text("source"),
            type=text("type"),
            contact=contact,
            since=parse_time("since", since) if since else None,
            until=parse_time("until", until) if until else None,
        )

    def as_dict(self) -> dict[str, str]:
        return {
            k: (v.isoformat().replace("+00:00", "Z") if isinstance(v, datetime) else v)
            for k, v in asdict(self).items()
            if v is not None
        }

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.status:
            query = query.where(Event.status == self.status)
        if self.source:
            source_id = select(Source.id).where(Source.slug == self.source).scalar_subquery()
            query = query.where(Event.source_id == source_id)
        if self.type:
            query = query.where(Event.type == self.type)
        if self.contact:
            query = query.where(Event.contact_key == self.contact)
        if self.since:
            query = query.where(Event.received_at >= self.since)
        if self.until:
            query = query.where(Event.received_at < self.until)
        return query


def encode_cursor(event_id: str) -> str:
    return base64.urlsafe_b64encode(event_id.encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> str:
    try:
        value = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (ValueError, UnicodeDecodeError):  # binascii.Error, and non-ASCII text
        raise FilterError("cursor is not one this API gave out; start without it") from None
    if not value or len(value) > 26 or not value.isalnum():
        raise FilterError("cursor is not one this API gave out; start without it")
    return value


def parse_limit(raw: Any) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        raise FilterError(f"limit must be a number from 1 to {MAX_LIMIT}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise FilterError(f"limit must be a number from 1 to {MAX_LIMIT}")
    return limit


def page(filters: EventFilter, limit: int, cursor: str | None) -> tuple[list[Event], str | None]:
    """Newest first; ids sort by receive time, so the cursor is the last id shown."""
    query = filters.apply(select(Event)).order_by(Event.id.desc()).limit(limit + 1)
    if cursor:
        query = query.where(Event.id < decode_cursor(cursor))
    rows = list(db.session.execute(query).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].id) if more and rows else None


def count(filters: EventFilter, max_id: str | None = None) -> int:
    query = filters.apply(select(func.count()).select_from(Event))
    if max_id is not None:
        query = query.where(Event.id <= max_id)
    return int(db.session.execute(query).scalar_one())


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def slugs() -> dict[int, str]:
    return {i: s for i, s in db.session.execute(select(Source.id, Source.slug))}


def event_json(event: Event, source_slugs: dict[int, str]) -> dict[str, Any]:
    return {
        "id": event.id,
        "source": source_slugs.get(event.source_id, str(event.source_id)),
        "external_id": event.external_id,
        "type": event.type,
        "contact": event.contact_key,
        "occurred_at": iso(event.occurred_at),
        "received_at": iso(event.received_at),
        "processed_at": iso(event.processed_at),
        "status": event.status,
        "reason": event.reason,
        "attempts": event.attempts,
        "last_error": event.last_error,
        "deliveries": event.deliveries,
        "effects": event.effects,
    }


def safe_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    return {
        k: v
        for k, v in (headers or {}).items()
        if not any(word in k.lower() for word in _SECRET_WORDS)
    }


def event_detail(event: Event, source_slugs: dict[int, str]) -> dict[str, Any]:
    attempts = db.session.execute(
        select(EventAttempt)
        .where(EventAttempt.event_id == event.id)
        .order_by(EventAttempt.number, EventAttempt.id)
    ).scalars()
    return {
        **event_json(event, source_slugs),
        "payload": event.payload,
        "headers": safe_headers(event.headers),
        "attempt_log": [
            {
                "number": a.number,
                "started_at": iso(a.started_at),
                "finished_at": iso(a.finished_at),
                "error": a.error,
            }
            for a in attempts
        ],
    }
