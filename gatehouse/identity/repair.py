"""Repair by email: relink members whose CRM contact was deleted or merged away.

For each account whose links in one CRM are all deleted or merged (the report's "invalid
contact id"), look for live contacts in that CRM with the account's email (case-insensitive):

- exactly one, linked to no account: relink it (its recorded tags count again, the access
  version is bumped and the cache rewritten);
- none, several, or one already linked to another account: skip it and say why. Email is not
  the key, so Gatehouse never guesses between two candidates or takes a contact from
  another account.

A dry run answers the same plan and changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select

from gatehouse.access import cache
from gatehouse.extensions import db
from gatehouse.handlers.contacts import apply_contact_revocation, sync_member_profile
from gatehouse.handlers.outcome import Outcome
from gatehouse.identity.report import billing_namespaces, invalid_contact_ids
from gatehouse.models import Contact, Member


@dataclass(frozen=True)
class Relink:
    member_id: str
    email: str
    contact: str  # "crm:id" now linked
    replaces: list[str]  # "crm:id (state)" of the dead links


@dataclass(frozen=True)
class Skipped:
    member_id: str
    email: str | None
    crm: str
    reason: str


@dataclass
class RepairResult:
    dry_run: bool
    relinked: list[Relink] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _live_with_email(crm: str, email: str) -> list[Contact]:
    return list(
        db.session.execute(
            select(Contact)
            .where(
                Contact.crm == crm,
                Contact.state == "live",
                func.lower(Contact.email) == email.lower(),
            )
            .order_by(Contact.id)
        ).scalars()
    )


def plan() -> tuple[list[tuple[str, Contact, list[str]]], list[Skipped]]:
    """(member id, contact to link, dead links it replaces) per fixable account; the skips."""
    fixes: list[tuple[str, Contact, list[str]]] = []
    skipped: list[Skipped] = []
    for invalid in invalid_contact_ids(billing_namespaces()):
        dead = [f"{invalid.crm}:{c['contact_id']} ({c['state']})" for c in invalid.contacts]

        def skip(reason: str, invalid: Any = invalid) -> None:
            skipped.append(Skipped(invalid.member_id, invalid.email, invalid.crm, reason))

        if not invalid.email:
            skip("the member has no email to match on")
            continue
        found = _live_with_email(invalid.crm, invalid.email)
        if not found:
            skip(f"no live {invalid.crm} contact has the email {invalid.email}")
            continue
        if len(found) > 1:
            keys = ", ".join(c.key for c in found)
            skip(
                f"{len(found)} live {invalid.crm} contacts have this email ({keys}); "
                "link one by hand or merge them in the CRM"
            )
            continue
        (candidate,) = found
        if candidate.member_id is not None:
            skip(f"{candidate.key} has the email but is linked to member {candidate.member_id}")
            continue
        fixes.append((invalid.member_id, candidate, dead))
    # Two accounts with one email competing for one contact: neither gets it.
    claims: dict[int, list[str]] = {}
    for member_id, candidate, _ in fixes:
        claims.setdefault(candidate.id, []).append(member_id)
    kept = []
    for member_id, candidate, dead in fixes:
        rivals = [m for m in claims[candidate.id] if m != member_id]
        if rivals:
            skipped.append(
                Skipped(
                    member_id,
                    candidate.email,
                    candidate.crm,
                    f"{candidate.key} has the email of member(s) {', '.join(rivals)} too; "
                    "duplicate accounts, link one by hand",
                )
            )
        else:
            kept.append((member_id, candidate, dead))
    return kept, skipped


def repair_by_email(dry_run: bool = False) -> RepairResult:
    fixes, skipped = plan()
    result = RepairResult(dry_run=dry_run, skipped=skipped)
    touched: list[str] = []
    for member_id, candidate, dead in fixes:
        email = candidate.email or ""
        if dry_run:
            result.relinked.append(Relink(member_id, email, candidate.key, dead))
            continue
        # Under locks, in the handlers' order (contact, then member); re-checked because an
        # event may have linked the contact since the plan was read.
        contact = db.session.execute(
            select(Contact)
            .where(Contact.id == candidate.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).scalar_one()
        member = db.session.execute(
            select(Member)
            .where(Member.id == member_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).scalar_one()
        if contact.state != "live" or contact.member_id is not None or member.status == "merged":
            result.skipped.append(
                Skipped(member_id, member.email, contact.crm, f"{contact.key} changed meanwhile")
            )
            continue
        contact.member_id = member.id
        member.touch()
        db.session.flush()
        db.session.refresh(member, ["contacts"])
        sync_member_profile(member)
        apply_contact_revocation(contact, member, Outcome())
        touched.append(member.id)
        result.relinked.append(Relink(member_id, email, contact.key, dead))
    if dry_run:
        db.session.rollback()
        return result
    db.session.commit()
    if touched:
        cache.refresh(touched)
    return result
