"""Managing sources: create, rotate, remove, and the URLs a sender is given."""

from __future__ import annotations

import re
from datetime import timedelta

from flask import current_app
from sqlalchemy import select

from gatehouse.crypto import SecretBox, new_plain_secret, new_standard_secret
from gatehouse.extensions import db
from gatehouse.models import Event, Source, SourceSecret, utcnow
from gatehouse.webhooks.senders import SENDERS
from gatehouse.webhooks.senders.keap_http_post import COMMANDS, make_key
from gatehouse.webhooks.senders.keap_rest_hook import hook_url_query

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class SourceError(ValueError):
    """What was wrong, said so that the user knows how to fix it."""


def _box() -> SecretBox:
    return SecretBox(current_app.config["SECRET_KEY"])


def base_url() -> str:
    return current_app.config["GATEHOUSE_PUBLIC_URL"] or "http://127.0.0.1:8000"


def hook_urls(source: Source, secret: str) -> list[str]:
    url = f"{base_url()}/hooks/{source.slug}"
    if source.kind == "keap-http-post":
        return [f"{url}?{cmd}={make_key(secret, source.slug, cmd)}" for cmd in COMMANDS]
    if source.kind == "keap-rest-hook":
        return [f"{url}?{hook_url_query(secret, source.slug)}"]
    return [url]


def new_secret_for(kind: str) -> str:
    return new_standard_secret() if kind == "standard" else new_plain_secret()


def add_source(
    slug: str, kind: str, crm: str | None, secret: str | None, public_key: str | None
) -> tuple[Source, str]:
    if not SLUG.match(slug):
        raise SourceError(
            f"slug {slug!r} is not valid: use 1-64 lower-case letters, digits, '-' or '_'"
        )
    if kind not in SENDERS:
        raise SourceError(f"unknown kind {kind!r}; choose one of: {', '.join(sorted(SENDERS))}")
    if db.session.execute(select(Source.id).where(Source.slug == slug)).first():
        raise SourceError(f"a source named {slug!r} exists; pick another slug or remove it first")
    if kind == "ghl" and not public_key:
        raise SourceError("a ghl source needs --public-key FILE (HighLevel's Ed25519 public key)")
    secret = secret or new_secret_for(kind)
    source = Source(slug=slug, kind=kind, crm=crm or slug, public_key=public_key)
    source.secrets.append(SourceSecret(encrypted=_box().seal(secret)))
    db.session.add(source)
    return source, secret


def get_source(slug: str) -> Source:
    source = db.session.execute(select(Source).where(Source.slug == slug)).scalar_one_or_none()
    if source is None:
        raise SourceError(f"no source named {slug!r}; `flask --app wsgi sources list` shows them")
    return source


def rotate_source(slug: str, secret: str | None, grace_hours: float) -> tuple[Source, str]:
    if grace_hours < 0:
        raise SourceError("--grace-hours must be 0 or more")
    source = get_source(slug)
    now = utcnow()
    until = now + timedelta(hours=grace_hours)
    for old in source.live_secrets(now):
        if old.expires_at is None or old.expires_at > until:
            old.expires_at = until
    secret = secret or new_secret_for(source.kind)
    source.secrets.append(SourceSecret(encrypted=_box().seal(secret)))
    return source, secret


def remove_source(slug: str) -> int:
    """Removes the source; its events stay for history unless there are none."""
    source = get_source(slug)
    count = db.session.execute(
        select(db.func.count()).select_from(Event).where(Event.source_id == source.id)
    ).scalar_one()
    if count:
        # Keep the history: disable the source by expiring every secret and renaming it.
        for s in source.live_secrets(utcnow()):
            s.expires_at = utcnow()
        source.slug = f"{source.slug}.removed.{source.id}"[:64]
    else:
        db.session.delete(source)
    return int(count)
