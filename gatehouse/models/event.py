from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gatehouse.models.base import Base, new_id, utcnow

# received: stored and answered, waiting for the relay; queued: the relay claimed it and its
# job exists or is being created; processing: a worker took it; then one of the final states.
STATUSES = ("received", "queued", "processing", "processed", "skipped", "unmatched", "failed")
FINAL_STATUSES = ("processed", "skipped", "unmatched", "failed")


class Event(Base):
    """The durable inbox: one row per (source, external id), written before we answer 2xx."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("source_id", "external_id"),
        Index("ix_events_status_received_at", "status", "received_at"),
        Index("ix_events_contact_key", "contact_key"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="RESTRICT"))
    external_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(64), index=True)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="received")
    attempts: Mapped[int] = mapped_column(default=0)
    deliveries: Mapped[int] = mapped_column(default=1)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Why an event was skipped or left unmatched; kept for admins.
    reason: Mapped[str | None] = mapped_column(Text)
    # "crm:contact_id" of the contact the event is about, for filtering and support.
    contact_key: Mapped[str | None] = mapped_column(String(160))
    payload: Mapped[dict[str, Any]]
    headers: Mapped[dict[str, Any] | None]
    effects: Mapped[dict[str, Any] | None]
    processed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
