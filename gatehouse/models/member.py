from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, String, Text, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gatehouse.models.base import Base, new_id, utcnow

EPOCH_KEY = ""  # tie-break of "no assertion yet"


class Member(Base):
    """A person with an account on the membership site."""

    __tablename__ = "members"

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    email: Mapped[str | None] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")
    # The assertion that set `status` (a revoke event, or an admin's revoke/restore).
    status_at: Mapped[datetime | None]
    status_key: Mapped[str] = mapped_column(String(255), default=EPOCH_KEY)
    all_access: Mapped[bool] = mapped_column(Boolean, default=False)
    password_hash: Mapped[str | None] = mapped_column(Text)
    # Bumped with every password (re)set so a set-password token works once.
    password_nonce: Mapped[int] = mapped_column(default=0)
    merged_into_id: Mapped[str | None] = mapped_column(ForeignKey("members.id"))
    # Grows with every change that can change the access answer; the cache keeps the
    # highest version it has seen, so a stale writer can never overwrite a newer answer.
    access_version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    contacts: Mapped[list[Contact]] = relationship(
        back_populates="member", order_by="Contact.id", foreign_keys="Contact.member_id"
    )

    def touch(self) -> None:
        self.access_version += 1


# Emails are kept as the sender wrote them and matched without case (Jane@Example.com is
# jane@example.com to every mail system a member uses).
Index("ix_members_email_lower", func.lower(Member.email))


class Contact(Base):
    """One contact in one CRM namespace, and the member it is linked to (if any).

    Contacts exist before their member: a tag event may arrive before the genpass that
    creates the account, and its assertion must not be lost.
    """

    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("crm", "contact_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    crm: Mapped[str] = mapped_column(String(64))
    contact_id: Mapped[str] = mapped_column(String(128))
    member_id: Mapped[str | None] = mapped_column(ForeignKey("members.id"), index=True)
    # live | deleted | merged
    state: Mapped[str] = mapped_column(String(16), default="live")
    state_at: Mapped[datetime | None]
    state_key: Mapped[str] = mapped_column(String(255), default=EPOCH_KEY)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    profile_at: Mapped[datetime | None]
    profile_key: Mapped[str] = mapped_column(String(255), default=EPOCH_KEY)
    # Latest revoke assertion seen for this contact, applied to its member when linked.
    revoked_at: Mapped[datetime | None]
    revoked_key: Mapped[str] = mapped_column(String(255), default=EPOCH_KEY)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    member: Mapped[Member | None] = relationship(
        back_populates="contacts", foreign_keys=[member_id]
    )

    @property
    def key(self) -> str:
        return f"{self.crm}:{self.contact_id}"


class ContactTag(Base):
    """The latest assertion about one tag on one contact (explicit or from a snapshot).

    Invariant: every row of a contact is at least as new as its latest snapshot, so a new
    assertion wins exactly when it is newer than the row (or, with no row, the snapshot).
    """

    __tablename__ = "contact_tags"

    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    present: Mapped[bool] = mapped_column(Boolean)
    asserted_at: Mapped[datetime]
    assert_key: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str | None] = mapped_column(String(26))


class TagSnapshot(Base):
    """The newest full tag list seen for a contact; older snapshots can no longer matter."""

    __tablename__ = "tag_snapshots"

    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    asserted_at: Mapped[datetime]
    assert_key: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str | None] = mapped_column(String(26))
    tags: Mapped[list[Any]]


# The partial index's condition; the grace query's own `status = 'past_due'` implies it.
_PAST_DUE = text("status = 'past_due'")


class Subscription(Base):
    """A billing subscription, kept at the state of the newest event about it."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("provider", "subscription_id"),
        Index("ix_subscriptions_customer", "provider", "customer_id"),
        # The grace check (queue.grace.due_in_database) runs once a minute on every site:
        # the few past_due rows, found without reading every subscription.
        Index(
            "ix_subscriptions_past_due_since",
            "past_due_since",
            sqlite_where=_PAST_DUE,
            postgresql_where=_PAST_DUE,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    subscription_id: Mapped[str] = mapped_column(String(128))
    customer_id: Mapped[str | None] = mapped_column(String(128))
    member_id: Mapped[str | None] = mapped_column(ForeignKey("members.id"), index=True)
    product: Mapped[str | None] = mapped_column(String(128))
    # The newest event that named a product (events without one say nothing about it).
    product_at: Mapped[datetime | None]
    product_key: Mapped[str] = mapped_column(String(255), default=EPOCH_KEY, server_default="")
    status: Mapped[str] = mapped_column(String(32))
    current_period_end: Mapped[datetime | None]
    past_due_since: Mapped[datetime | None]
    asserted_at: Mapped[datetime]
    assert_key: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str | None] = mapped_column(String(26))
    # The status came from a final assertion (Stripe: canceled, incomplete_expired); it
    # outranks every non-final one, whatever the order they arrive in.
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    # The newest assertion of a status other than past_due, and the past_due assertions
    # newer than it ([[iso time, key], ...]): `past_due_since` is the earliest of those,
    # so it does not depend on the order events arrive in.
    good_at: Mapped[datetime | None]
    good_key: Mapped[str] = mapped_column(String(255), default=EPOCH_KEY)
    past_due_marks: Mapped[list[Any] | None]
