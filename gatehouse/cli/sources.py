from __future__ import annotations

from pathlib import Path

import click
from flask.cli import AppGroup
from sqlalchemy import select

from gatehouse.extensions import db
from gatehouse.models import Source, utcnow
from gatehouse.sources import SourceError, add_source, hook_urls, remove_source, rotate_source
from gatehouse.webhooks.senders import SENDERS

sources = AppGroup("sources", help="Senders: their kind, secret(s) and CRM namespace.")


def _fail(exc: Exception) -> click.ClickException:
    db.session.rollback()
    return click.ClickException(str(exc))


@sources.command("add")
@click.argument("slug")
@click.option("--kind", required=True, help="standard, keap-http-post, stripe, hubspot, ghl, …")
@click.option("--crm", default=None, help="namespace of contact ids and tags (default: the slug)")
@click.option("--secret", default=None, help="the sender's signing secret (default: generate one)")
@click.option(
    "--public-key",
    "public_key_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="file with the sender's public key (ghl)",
)
def add(
    slug: str, kind: str, crm: str | None, secret: str | None, public_key_file: str | None
) -> None:
    """Create a source and print the URL(s) to paste into the sender."""
    public_key = None
    if public_key_file:
        try:
            public_key = Path(public_key_file).read_text().strip()
        except OSError as exc:
            raise click.ClickException(
                f"cannot read --public-key {public_key_file}: {exc.strerror}"
            ) from None
    try:
        source, chosen = add_source(slug, kind, crm, secret, public_key)
        db.session.commit()
    except SourceError as exc:
        raise _fail(exc) from None
    click.echo(f"Source {source.slug} ({source.kind}, crm {source.crm}) created.")
    if secret is None and kind != "ghl":
        click.echo(f"Secret (shown once, store it in the sender): {chosen}")
        _warn_if_issued(source.slug, kind)
    click.echo("Webhook URL(s):")
    for url in hook_urls(source, chosen):
        click.echo(f"  {url}")


@sources.command("list")
def list_() -> None:
    """List sources (secrets are never shown)."""
    rows = db.session.execute(select(Source).order_by(Source.slug)).scalars().all()
    if not rows:
        click.echo("No sources yet: flask --app wsgi sources add SLUG --kind KIND")
        return
    now = utcnow()
    click.echo(f"{'slug':<24} {'kind':<16} {'crm':<16} secrets")
    for s in rows:
        live = s.live_secrets(now)
        grace = [x for x in live if x.expires_at is not None]
        note = f"{len(live)} live"
        if grace:
            until = min(x.expires_at for x in grace if x.expires_at)
            note += f", {len(grace)} in grace until {until:%Y-%m-%d %H:%M}Z"
        click.echo(f"{s.slug:<24} {s.kind:<16} {s.crm:<16} {note}")


@sources.command("rotate")
@click.argument("slug")
@click.option("--secret", default=None, help="the new secret (default: generate one)")
@click.option(
    "--grace-hours",
    default=24.0,
    show_default=True,
    type=float,
    help="how long the old secret keeps working",
)
def rotate(slug: str, secret: str | None, grace_hours: float) -> None:
    """Add a new secret; the old one keeps working for the grace period."""
    try:
        source, chosen = rotate_source(slug, secret, grace_hours)
        db.session.commit()
    except SourceError as exc:
        raise _fail(exc) from None
    click.echo(
        f"Source {source.slug}: new secret active; "
        f"old secret(s) work for {grace_hours:g} more hour(s)."
    )
    if secret is None:
        click.echo(f"New secret (shown once): {chosen}")
        _warn_if_issued(source.slug, source.kind)
    click.echo("Webhook URL(s):")
    for url in hook_urls(source, chosen):
        click.echo(f"  {url}")


@sources.command("remove")
@click.argument("slug")
def remove(slug: str) -> None:
    """Remove a source; its stored events are kept."""
    try:
        kept = remove_source(slug)
        db.session.commit()
    except SourceError as exc:
        raise _fail(exc) from None
    suffix = f"; its {kept} event(s) are kept for history" if kept else ""
    click.echo(f"Source {slug} removed{suffix}.")


def _warn_if_issued(slug: str, kind: str) -> None:
    """The sender issues its own secret: a generated one fails every signature (401)."""
    issued = SENDERS[kind].issued_secret
    if issued:
        click.echo(
            f"Warning: {kind} signs with a secret it issues itself, {issued}; the generated "
            f"one above fails every signature until you run `flask --app wsgi sources rotate "
            f"{slug} --secret SECRET --grace-hours 0` with it.",
            err=True,
        )
