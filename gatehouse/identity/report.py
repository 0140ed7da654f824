"""The contact-hygiene report: what the CRM changed under members that an admin should see.

- invalid contact ids: a member's links in one CRM are all deleted or merged (none live);
  that CRM's tags no longer count for it ("Some users have invalid contact ID").
- duplicate emails: one email on several accounts, or on several live contacts of one CRM
  (CRMs allow that; email is not the key, so Gatehouse reports rather than guesses).
- subscribers without a live contact: a subscription in good standing, but no live link in
  any CRM; billing customer links (a contact in a billing provider's namespace) do not count.
- unmatched billing events: events left `unmatched` (no member found for their customer yet).

Merged-away members (status `merged`) are history and are left out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from gatehouse.access.rules import SubscriptionState, in_good_standing
from gatehouse.access.state import active_rules
from gatehouse.extensions import db
from gatehouse.models import Contact, Event, Member, Source, Subscription, utcnow

LIMIT = 1000  # rows per section; a report is for reading, the counts say how many in all


def _iso(when: datetime | None) -> str | None:
    return when.isoformat().replace("+00:00", "Z") if when else None


@dataclass(frozen=True)
class InvalidContact:
    member_id: str
    email: str | None
    crm: str
    contacts: list[dict[str, Any]]  # {"contact_id", "state", "merged_into"}


@dataclass(frozen=True)
class DuplicateEmail:
    email: str
    members: list[str]
    contacts: list[str]  # "crm:id" of live contacts sharing it within one CRM


@dataclass(frozen=True)
class SubscriberWithoutContact:
    member_id: str
    email: str | None
    subscriptions: list[dict[str, Any]]


@dataclass(frozen=True)
class UnmatchedEvent:
    id: str
    source: str
    type: str
    occurred_at: str | None
    reason: str | None


@dataclass
class Report:
    invalid_contact_ids: list[InvalidContact] = field(default_factory=list)
    duplicate_emails: list[DuplicateEmail] = field(default_factory=list)
    subscribers_without_live_contact: list[SubscriberWithoutContact] = field(default_factory=list)
    unmatched_billing_events: list[UnmatchedEvent] = field(default_factory=list)
    unmatched_total: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["counts"] = {
            "invalid_contact_ids": len(self.invalid_contact_ids),
            "duplicate_emails": len(self.duplicate_emails),
            "subscribers_without_live_contact": len(self.subscribers_without_live_contact),
            "unmatched_billing_events": self.unmatched_total,
        }
        del data["unmatched_total"]
        return data

    @property
    def clean(self) -> bool:
        return not (
            self.invalid_contact_ids
            or self.duplicate_emails
            or self.subscribers_without_live_contact
            or self.unmatched_total
        )


def billing_namespaces() -> set[str]:
    return set(db.session.execute(select(Subscription.provider).distinct()).scalars())


def invalid_contact_ids(billing: set[str]) -> list[InvalidContact]:
    rows = db.session.execute(
        select(Contact, Member.email)
        .join(Member, Member.id == Contact.member_id)
        .where(Member.status != "merged")
        .order_by(Contact.member_id, Contact.crm, Contact.contact_id)
    ).all()
    by_link: dict[tuple[str, str], list[Contact]] = defaultdict(list)
    emails: dict[str, str | None] = {}
    for contact, email in rows:
        by_link[(str(contact.member_id), contact.crm)].append(contact)
        emails[str(contact.member_id)] = email
    out = []
    ids = {c.id: c for contacts in by_link.values() for c in contacts}
    for (member_id, crm), contacts in by_link.items():
        if crm in billing or any(c.state == "live" for c in contacts):
            continue
        described = []
        for c in contacts:
            into = ids.get(c.merged_into_id) if c.merged_into_id else None
            if into is None and c.merged_into_id is not None:
                into = db.session.get(Contact, c.merged_into_id)
            described.append(
                {
                    "contact_id": c.contact_id,
                    "state": c.state,
                    "merged_into": into.contact_id if into is not None else None,
                }
            )
        out.append(InvalidContact(member_id, emails[member_id], crm, described))
        if len(out) >= LIMIT:
            break
    return out


def duplicate_emails() -> list[DuplicateEmail]:
    members: dict[str, list[str]] = defaultdict(list)
    for member_id, email in db.session.execute(
        select(Member.id, func.lower(Member.email))
        .where(Member.status != "merged", Member.email.is_not(None))
        .order_by(Member.id)
    ):
        members[email].append(member_id)
    contacts: dict[str, list[str]] = defaultdict(list)
    per_crm: dict[tuple[str, str], int] = defaultdict(int)
    for crm, contact_id, email in db.session.execute(
        select(Contact.crm, Contact.contact_id, func.lower(Contact.email))
        .where(Contact.state == "live", Contact.email.is_not(None))
        .order_by(Contact.crm, Contact.contact_id)
    ):
        contacts[email].append(f"{crm}:{contact_id}")
        per_crm[(email, crm)] += 1
    duplicated_in_crm = {email for (email, _), n in per_crm.items() if n > 1}
    out = []
    for email in sorted(set(members) | set(contacts)):
        if len(members.get(email, ())) > 1 or email in duplicated_in_crm:
            out.append(DuplicateEmail(email, members.get(email, []), contacts.get(email, [])))
            if len(out) >= LIMIT:
                break
    return out


def subscribers_without_live_contact(
    billing: set[str], now: datetime
) -> list[SubscriberWithoutContact]:
    rules = active_rules()
    subs: dict[str, list[Subscription]] = defaultdict(list)
    for sub in db.session.execute(
        select(Subscription)
        .where(Subscription.member_id.is_not(None))
        .order_by(Subscription.member_id, Subscription.id)
    ).scalars():
        state = SubscriptionState(sub.product, sub.status, sub.past_due_since)
        if in_good_standing(state, rules, now):
            subs[str(sub.member_id)].append(sub)
    if not subs:
        return []
    live_crm = select(Contact.member_id).where(
        Contact.member_id.in_(list(subs)), Contact.state == "live"
    )
    if billing:
        live_crm = live_crm.where(Contact.crm.not_in(billing))
    linked = set(db.session.execute(live_crm).scalars())
    out = []
    members = {
        m.id: m
        for m in db.session.execute(
            select(Member).where(Member.id.in_(list(subs)), Member.status != "merged")
        ).scalars()
    }
    for member_id in sorted(set(members) - linked):
        out.append(
            SubscriberWithoutContact(
                member_id,
                members[member_id].email,
                [
                    {
                        "provider": s.provider,
                        "id": s.subscription_id,
                        "product": s.product,
                        "status": s.status,
                    }
                    for s in subs[member_id]
                ],
            )
        )
        if len(out) >= LIMIT:
            break
    return out


def unmatched_events() -> tuple[list[UnmatchedEvent], int]:
    total = int(
        db.session.execute(
            select(func.count()).select_from(Event).where(Event.status == "unmatched")
        ).scalar_one()
    )
    rows = db.session.execute(
        select(Event, Source.slug)
        .join(Source, Source.id == Event.source_id)
        .where(Event.status == "unmatched")
        .order_by(Event.occurred_at, Event.id)
        .limit(LIMIT)
    ).all()
    events = [UnmatchedEvent(e.id, slug, e.type, _iso(e.occurred_at), e.reason) for e, slug in rows]
    return events, total


def build_report(now: datetime | None = None) -> Report:
    now = now or utcnow()
    billing = billing_namespaces()
    unmatched, total = unmatched_events()
    return Report(
        invalid_contact_ids=invalid_contact_ids(billing),
        duplicate_emails=duplicate_emails(),
        subscribers_without_live_contact=subscribers_without_live_contact(billing, now),
        unmatched_billing_events=unmatched,
        unmatched_total=total,
    )


def report_json(now: datetime | None = None) -> dict[str, Any]:
    """The report as JSON-ready data (the CLI's --json and the admin page)."""
    return build_report(now).as_dict()
