"""Source lookups for the hot path, cached per process for a few seconds.

A rotation or removal takes effect within `TTL` seconds; a secret's own expiry is checked
on every request, so a rotated-out secret stops working on time.
"""

from __future__ import annotations

import time

from flask import Flask, current_app
from sqlalchemy import select

from gatehouse.crypto import SecretBox
from gatehouse.extensions import db
from gatehouse.models import Source, utcnow
from gatehouse.webhooks.senders.base import SourceInfo

TTL = 5.0


def _box(app: Flask) -> SecretBox:
    box = app.extensions.get("gatehouse.secretbox")
    if box is None:
        box = app.extensions["gatehouse.secretbox"] = SecretBox(app.config["SECRET_KEY"])
    return box


def load_source(slug: str) -> tuple[SourceInfo, float | None] | None:
    """Read a source and its live secrets; also returns when the next secret expires."""
    source = db.session.execute(select(Source).where(Source.slug == slug)).scalar_one_or_none()
    if source is None:
        return None
    now = utcnow()
    live = source.live_secrets(now)
    box = _box(current_app)
    info = SourceInfo(
        id=source.id,
        slug=source.slug,
        kind=source.kind,
        crm=source.crm,
        secrets=tuple(box.open(s.encrypted) for s in live),
        public_key=source.public_key,
    )
    expiries = [s.expires_at.timestamp() for s in live if s.expires_at is not None]
    return info, min(expiries) if expiries else None


def cached_source(app: Flask, slug: str) -> SourceInfo | None:
    """The source if this process has it cached and fresh; no database, no app context."""
    cache: dict[str, tuple[float, SourceInfo | None]] | None = app.extensions.get(
        "gatehouse.sources"
    )
    hit = cache.get(slug) if cache is not None else None
    if hit is None or hit[0] <= time.monotonic():
        return None
    return hit[1]


def find_source(slug: str) -> SourceInfo | None:
    from gatehouse.sources import SLUG

    if not SLUG.match(slug):
        # No source can have it (and PostgreSQL refuses a NUL in a query): unknown, not 503.
        return None
    cache: dict[str, tuple[float, SourceInfo | None]] = current_app.extensions.setdefault(
        "gatehouse.sources", {}
    )
    now = time.monotonic()
    hit = cache.get(slug)
    if hit is not None and hit[0] > now:
        return hit[1]
    loaded = load_source(slug)
    db.session.rollback()  # end the read transaction; the store step opens its own
    info = loaded[0] if loaded else None
    expires = now + TTL
    if loaded and loaded[1] is not None:
        # Never serve a secret past its grace period from the cache.
        expires = min(expires, now + max(0.0, loaded[1] - time.time()))
    if len(cache) > 10_000:
        cache.clear()  # slugs probed by a scanner must not grow memory without bound
    cache[slug] = (expires, info)
    return info


def forget_sources(app: Flask | None = None) -> None:
    (app or current_app).extensions.pop("gatehouse.sources", None)
