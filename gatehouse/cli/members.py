"""flask members report | repair | explain | revoke | restore | all-access | refresh."""

from __future__ import annotations

import json
from typing import Any

import click
from flask.cli import AppGroup

from gatehouse.access.explain import explain as explain_access
from gatehouse.extensions import db
from gatehouse.identity import admin
from gatehouse.identity.admin import ActionResult, AdminError
from gatehouse.identity.repair import repair_by_email
from gatehouse.identity.report import build_report

members = AppGroup("members", help="Members: hygiene report, repair, explain, revoke/restore.")


def _table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    click.echo(f"{title} ({len(rows)})")
    if not rows:
        click.echo("  none")
        click.echo()
        return
    cells = [[str(c) if c is not None else "-" for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    click.echo("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        click.echo("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    click.echo()


@members.command("report")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of tables")
def report(as_json: bool) -> None:
    """Invalid contact ids, duplicate emails, subscribers with no live contact, unmatched events."""
    result = build_report()
    db.session.rollback()
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    _table(
        "Invalid contact ids (every link in that CRM deleted or merged)",
        ["member", "email", "crm", "contacts"],
        [
            [
                r.member_id,
                r.email,
                r.crm,
                ", ".join(
                    f"{c['contact_id']} {c['state']}"
                    + (f" into {c['merged_into']}" if c["merged_into"] else "")
                    for c in r.contacts
                ),
            ]
            for r in result.invalid_contact_ids
        ],
    )
    _table(
        "Duplicate emails",
        ["email", "members", "live contacts"],
        [
            [r.email, ", ".join(r.members) or "-", ", ".join(r.contacts) or "-"]
            for r in result.duplicate_emails
        ],
    )
    _table(
        "Members with a subscription in good standing but no live contact",
        ["member", "email", "subscriptions"],
        [
            [
                r.member_id,
                r.email,
                ", ".join(f"{s['id']} {s['product']} {s['status']}" for s in r.subscriptions),
            ]
            for r in result.subscribers_without_live_contact
        ],
    )
    _table(
        "Unmatched billing events",
        ["event", "source", "type", "occurred_at", "reason"],
        [
            [e.id, e.source, e.type, e.occurred_at, e.reason]
            for e in result.unmatched_billing_events
        ],
    )
    if result.unmatched_total > len(result.unmatched_billing_events):
        click.echo(f"  … {result.unmatched_total} unmatched events in all")
    if not result.clean:
        click.echo(
            "Fix: `flask --app wsgi members repair --by-email --dry-run` shows what it can relink."
        )


@members.command("repair")
@click.option("--by-email", is_flag=True, help="relink to the one live contact with the email")
@click.option("--dry-run", is_flag=True, help="show what would change; change nothing")
def repair(by_email: bool, dry_run: bool) -> None:
    """Relink members whose contact was deleted or merged away."""
    if not by_email:
        raise click.ClickException(
            "say how to repair: `flask --app wsgi members repair --by-email [--dry-run]`"
        )
    result = repair_by_email(dry_run=dry_run)
    verb = "Would relink" if dry_run else "Relinked"
    for fix in result.relinked:
        click.echo(
            f"{verb} member {fix.member_id} ({fix.email}) to {fix.contact}, "
            f"replacing {', '.join(fix.replaces)}"
        )
    for skip in result.skipped:
        click.echo(f"Skipped member {skip.member_id} ({skip.email or 'no email'}): {skip.reason}")
    click.echo(
        f"{verb} {len(result.relinked)} member(s), skipped {len(result.skipped)}"
        + (" (dry run: nothing changed)." if dry_run else ".")
    )


@members.command("explain")
@click.argument("member_id")
@click.option("--permission", "-p", required=True, help="e.g. course:gold")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def explain(member_id: str, permission: str, as_json: bool) -> None:
    """Why the member has (or lacks) a permission, and which events decided it."""
    answer = explain_access(member_id, permission)
    db.session.rollback()
    if answer is None:
        raise click.ClickException(
            f"no member {member_id!r}; find one with GET /api/members?email=…"
        )
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    mark = "GRANTED" if answer["granted"] else "NOT granted"
    click.echo(f"{permission}: {mark} — {answer['decided_by']}")
    click.echo(f"member {member_id} status={answer['status']} all_access={answer['all_access']}")
    if not answer["groups"]:
        click.echo("No group grants this permission.")
    for group in answer["groups"]:
        click.echo(f"group {group['name']}: {'matches' if group['matches'] else 'does not match'}")
        for crit in group["criteria"]:
            click.echo(f"  {crit['criterion']}: {'holds' if crit['holds'] else 'fails'}")
            for tag in crit.get("tags", []):
                click.echo(
                    f"    {tag['tag']} {'present' if tag['present'] else 'absent'}"
                    f"{_by(tag['asserted_by'])}"
                )
            for sub in crit.get("subscriptions", []):
                standing = "good standing" if sub["in_good_standing"] else "not in good standing"
                click.echo(
                    f"    {sub['provider']}:{sub['id']} {sub['product']} {sub['status']} "
                    f"({standing}){_by(sub['asserted_by'])}"
                )


def _by(event: dict[str, Any] | None) -> str:
    if not event:
        return " (no event recorded)"
    return f" (event {event['id']} from {event['source']} at {event['occurred_at']})"


def _action(call: Any) -> None:
    try:
        result: ActionResult = call()
    except AdminError as exc:
        raise click.ClickException(exc.detail) from None
    note = "" if result.changed else " (no change)"
    click.echo(
        f"Member {result.member_id}: status={result.status} all_access={result.all_access} "
        f"version={result.version}{note}"
    )


@members.command("revoke")
@click.argument("member_id")
def revoke(member_id: str) -> None:
    """Revoke all access (history, tags and subscriptions kept)."""
    _action(lambda: admin.revoke(member_id))


@members.command("restore")
@click.argument("member_id")
def restore(member_id: str) -> None:
    """Undo a revoke; an older revoke processed later does not undo this."""
    _action(lambda: admin.restore(member_id))


@members.command("all-access")
@click.argument("member_id")
@click.option("--off", is_flag=True, help="take the flag away again")
def all_access(member_id: str, off: bool) -> None:
    """Give a member every permission any group grants (for testing the site)."""
    _action(lambda: admin.set_all_access(member_id, not off))


@members.command("refresh")
@click.argument("member_id")
def refresh(member_id: str) -> None:
    """Recompute the member's cached access now."""
    _action(lambda: admin.refresh(member_id))


@members.command("password-token")
@click.argument("member_id")
def password_token(member_id: str) -> None:
    """Print a set-password token for the member (valid 7 days, until the password is set)."""
    from flask import current_app

    from gatehouse.passwords import token_for_member

    token = token_for_member(current_app.config["SECRET_KEY"], member_id)
    db.session.rollback()
    if token is None:
        raise click.ClickException(f"no member {member_id}; find it with GET /api/members?email=")
    click.echo(token)
