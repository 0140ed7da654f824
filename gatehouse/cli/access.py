from __future__ import annotations

from pathlib import Path

import click
from flask.cli import AppGroup
from sqlalchemy import select, update

from gatehouse.access.rules import RulesError, parse_rules_text
from gatehouse.extensions import db
from gatehouse.models import AccessRules, Member
from gatehouse.queue.enqueue import RECOMPUTE_MEMBERS, enqueue_call

access = AppGroup("access", help="Access rules: which tags and subscriptions grant what.")


def queue_recompute() -> None:
    try:
        enqueue_call(RECOMPUTE_MEMBERS, None, timeout=3600)
    except Exception as exc:  # noqa: BLE001 - any Redis failure gets the same advice
        raise click.ClickException(
            f"could not queue the recompute ({exc}); run `flask --app wsgi access recompute` "
            "when Redis answers"
        ) from None


@access.command("load")
@click.argument("file", type=click.Path(dir_okay=False))
def load(file: str) -> None:
    """Validate and activate a rules file; every member is recomputed in the background."""
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {file}: {exc}") from None
    try:
        rules = parse_rules_text(text)
    except RulesError as exc:
        lines = "\n".join(
            f"  {path}: {'; '.join(msgs)}" for path, msgs in sorted(exc.errors.items())
        )
        raise click.ClickException(f"{file} is not valid:\n{lines}") from None
    row = AccessRules(source_text=text, rules=rules)
    db.session.add(row)
    # Every cached answer is now out of date: new versions make the recompute win.
    db.session.execute(update(Member).values(access_version=Member.access_version + 1))
    db.session.commit()
    click.echo(f"Rules version {row.id} active ({len(rules['groups'])} group(s)).")
    queue_recompute()
    click.echo("Recomputing every member's access in the background.")


@access.command("show")
def show() -> None:
    """Print the active rules."""
    row = db.session.execute(
        select(AccessRules).order_by(AccessRules.id.desc()).limit(1)
    ).scalar_one_or_none()
    if row is None:
        raise click.ClickException("no rules loaded yet: flask --app wsgi access load FILE")
    click.echo(f"# version {row.id}, loaded {row.created_at:%Y-%m-%d %H:%M:%S}Z")
    click.echo(row.source_text.rstrip("\n"))


@access.command("recompute")
def recompute() -> None:
    """Queue a recompute of every member's cached access."""
    queue_recompute()
    click.echo("Recompute queued.")
