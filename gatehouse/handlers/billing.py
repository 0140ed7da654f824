"""`subscription.updated`: keep each subscription at its newest state and link it to a member.

A billing event names a provider customer (Stripe `cus_…`), not a CRM contact. The
customer is linked to a member by a Contact row in the provider's namespace
(crm = "stripe", contact_id = the customer id), found or made, in this order:

1. that link, if it exists (or the member the subscription already belongs to);
2. the event's own contact (a CRM that sends subscriptions, e.g. ClickFunnels);
3. `member_id` from the object's metadata (Stripe Checkout: also `client_reference_id`);
4. `contact_id` from the metadata, as "crm:id" (or a bare id when exactly one linked
   contact in any namespace has it);
5. the email on the checkout session or invoice, when exactly one member has it.

If none matches, the subscription's state is still recorded and the event ends
`unmatched`; when a later event links the customer, those events are queued again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult

from gatehouse.extensions import db
from gatehouse.handlers.contacts import lock_contact, lock_member
from gatehouse.handlers.outcome import Assertion, Outcome, Unmatched
from gatehouse.models import Contact, Event, Member, Source, Subscription

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def provider_of(event: Event, data: dict[str, Any]) -> str:
    """The billing namespace: named by the sender, else the source's CRM namespace."""
    if data.get("provider"):
        return str(data["provider"])
    source = db.session.get(Source, event.source_id)
    assert source is not None
    return source.crm


def _survivor(member: Member | None) -> Member | None:
    """Follow merges: billing for a merged-away member belongs to the one it became."""
    seen: set[str] = set()
    while member is not None and member.merged_into_id and member.id not in seen:
        seen.add(member.id)
        member = lock_member(member.merged_into_id)
    return member


def _by_contact_hint(hint: str, provider: str) -> Member | None:
    crm, sep, contact_id = hint.partition(":")
    if sep:
        contact = lock_contact(crm, contact_id, create=False)
        return lock_member(contact.member_id) if contact is not None else None
    owners = list(
        db.session.execute(
            select(Contact.member_id)
            .where(
                Contact.contact_id == hint,
                Contact.crm != provider,
                Contact.state == "live",
                Contact.member_id.is_not(None),
            )
            .limit(2)
        ).scalars()
    )
    return lock_member(owners[0]) if len(owners) == 1 else None


def _by_email(email: str) -> tuple[Member | None, str | None]:
    ids = list(
        db.session.execute(
            select(Member.id)
            .where(func.lower(Member.email) == email.lower(), Member.merged_into_id.is_(None))
            .order_by(Member.id)
            .limit(5)
        ).scalars()
    )
    if len(ids) > 1:
        return None, (
            f"{len(ids) if len(ids) < 5 else 'several'} members have the email {email}; "
            "not guessing which one pays: link the customer with metadata.member_id"
        )
    return (lock_member(ids[0]) if ids else None), None


def find_member(
    event: Event, data: dict[str, Any], provider: str, link: Contact | None
) -> tuple[Member | None, str]:
    """The member this billing event is about, and how it was found (or why not)."""
    if link is not None and link.member_id is not None:
        member = _survivor(lock_member(link.member_id))
        if member is not None:
            return member, "existing link"
    owner = db.session.execute(
        select(Subscription.member_id).where(
            Subscription.provider == provider, Subscription.subscription_id == data["id"]
        )
    ).scalar_one_or_none()
    if owner is not None:
        member = _survivor(lock_member(owner))
        if member is not None:
            return member, "subscription"
    contact = event.payload.get("contact")
    if contact is not None:
        row = lock_contact(contact["crm"], contact["id"], create=False)
        member = _survivor(lock_member(row.member_id)) if row is not None else None
        if member is not None:
            return member, f"contact {row.key}" if row is not None else "contact"
    if data.get("member_id"):
        member = _survivor(lock_member(str(data["member_id"])))
        if member is not None:
            return member, "metadata.member_id"
    if data.get("contact_id"):
        member = _survivor(_by_contact_hint(str(data["contact_id"]), provider))
        if member is not None:
            return member, "metadata.contact_id"
    if data.get("email"):
        member, ambiguous = _by_email(str(data["email"]))
        if ambiguous:
            return None, ambiguous
        member = _survivor(member)
        if member is not None:
            return member, "email"
    customer = data.get("customer")
    who = f"customer {provider}:{customer}" if customer else f"subscription {data['id']}"
    return None, (
        f"no member is linked to {who} (no link, metadata or matching email yet); "
        "processed again when the customer is linked"
    )


def lock_subscription(provider: str, subscription_id: str) -> Subscription:
    query = select(Subscription).where(
        Subscription.provider == provider, Subscription.subscription_id == subscription_id
    )
    sub = db.session.execute(query.with_for_update()).scalar_one_or_none()
    if sub is not None:
        return sub
    # A placeholder older than any event, so the first real assertion always wins.
    values = {
        "provider": provider,
        "subscription_id": subscription_id,
        "status": "incomplete",
        "asserted_at": EPOCH,
        "assert_key": "",
        "final": False,
        "good_key": "",
        "product_key": "",
    }
    dialect = db.engine.dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(Subscription).values(values).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(Subscription).values(values).on_conflict_do_nothing()
    db.session.execute(stmt)
    return db.session.execute(
        query.with_for_update().execution_options(populate_existing=True)
    ).scalar_one()


def _marks(sub: Subscription) -> list[tuple[datetime, str]]:
    return [(datetime.fromisoformat(at), key) for at, key in (sub.past_due_marks or [])]


def apply_assertion(sub: Subscription, data: dict[str, Any], when: Assertion) -> None:
    """Fold one event's statement about the subscription into its row, in any order.

    The status is the newest assertion's, except that a final one (canceled) outranks
    every non-final one. `past_due_since` is the earliest past_due assertion newer than
    the newest assertion of any other status: the moment the current past_due run began.
    """
    status = str(data["status"])
    marks = _marks(sub)
    mine = (when.at, when.key)
    if status == "past_due":
        if when.newer_than(sub.good_at, sub.good_key) and mine not in marks:
            marks.append(mine)
    elif when.newer_than(sub.good_at, sub.good_key):
        sub.good_at, sub.good_key = when.at, when.key
        marks = [m for m in marks if m > mine]
    sub.past_due_marks = [[at.isoformat(), key] for at, key in sorted(marks)] or None

    final = bool(data.get("final"))
    if (final, when.at, when.key) > (sub.final, sub.asserted_at, sub.assert_key):
        sub.status, sub.final = status, final
        sub.asserted_at, sub.assert_key, sub.event_id = when.at, when.key, when.event_id
        if data.get("current_period_end"):
            sub.current_period_end = datetime.fromisoformat(str(data["current_period_end"]))
    if data.get("product") and when.newer_than(sub.product_at, sub.product_key):
        sub.product = str(data["product"])
        sub.product_at, sub.product_key = when.at, when.key
    if sub.customer_id is None and data.get("customer"):
        sub.customer_id = str(data["customer"])
    sub.past_due_since = marks[0][0] if sub.status == "past_due" and marks else None


def _rerun(ids: list[str]) -> list[str]:
    """Hand events back to the relay (`received`): it queues them once this transaction
    commits, like any newly stored event; nothing is queued for a rolled-back batch."""
    if ids:
        db.session.execute(update(Event).where(Event.id.in_(ids)).values(status="received"))
    return ids


def _requeue_unmatched(link: Contact, except_id: str) -> list[str]:
    """Events left unmatched for this customer: run them again once this one commits."""
    ids = list(
        db.session.execute(
            select(Event.id).where(
                Event.contact_key == link.key, Event.status == "unmatched", Event.id != except_id
            )
        ).scalars()
    )
    return _rerun(ids)


def _names(member: Member, contact: Contact, payload: dict[str, Any]) -> bool:
    data: dict[str, Any] = payload.get("subscription") or {}
    named = payload.get("contact") or {}
    email = (member.email or "").lower()
    return bool(
        (email and str(data.get("email") or "").lower() == email)
        or (named.get("crm"), named.get("id")) == (contact.crm, contact.contact_id)
        or data.get("member_id") == member.id
        or data.get("contact_id") in (contact.key, contact.contact_id)
    )


def requeue_unmatched_for(member: Member, contact: Contact) -> list[str]:
    """A member just came to exist: re-run the billing events that were looking for it.

    Only the events that name it (email, contact, metadata) are re-run; each, once matched,
    links its customer, which re-runs that customer's other unmatched events in turn.
    """
    rows = db.session.execute(
        select(Event.id, Event.payload).where(
            Event.status == "unmatched", Event.type == "subscription.updated"
        )
    ).all()
    return _rerun([event_id for event_id, payload in rows if _names(member, contact, payload)])


def subscription_updated(event: Event, when: Assertion, outcome: Outcome) -> None:
    data: dict[str, Any] = event.payload["subscription"]
    provider = provider_of(event, data)
    customer = data.get("customer")
    # The link row is locked first: every event about one customer runs one at a time.
    link = lock_contact(provider, str(customer)) if customer else None
    member, how = find_member(event, data, provider, link)
    sub = lock_subscription(provider, str(data["id"]))
    before = (sub.status, sub.product, sub.past_due_since, sub.member_id)
    apply_assertion(sub, data, when)

    if member is None:
        if link is not None:
            event.contact_key = link.key[:160]
        raise Unmatched(how)

    if link is not None and link.member_id != member.id:
        link.member_id = member.id
        adopted: CursorResult[Any] = db.session.execute(  # type: ignore[assignment]
            update(Subscription)
            .where(
                Subscription.provider == provider,
                Subscription.customer_id == str(customer),
                Subscription.member_id.is_(None),
                Subscription.id != sub.id,
            )
            .values(member_id=member.id)
        )
        requeued = _requeue_unmatched(link, event.id)
        member.touch()
        outcome.note(
            member.id,
            "customer linked",
            contact=link.key,
            by=how,
            subscriptions_adopted=adopted.rowcount or 0,
            events_requeued=requeued,
        )

    previous = lock_member(sub.member_id) if sub.member_id not in (None, member.id) else None
    sub.member_id = member.id
    if (sub.status, sub.product, sub.past_due_since, sub.member_id) != before:
        member.touch()
        outcome.note(
            member.id,
            "subscription",
            subscription=f"{provider}:{sub.subscription_id}",
            status=sub.status,
            product=sub.product,
            past_due_since=sub.past_due_since.isoformat() if sub.past_due_since else None,
        )
        if previous is not None:
            previous.touch()
            outcome.note(previous.id, "subscription moved", to=member.id)
