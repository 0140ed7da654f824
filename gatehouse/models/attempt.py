from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gatehouse.models.base import Base, utcnow


class EventAttempt(Base):
    """One run of an event's job: when it ran and, if it failed, why (kept for admins)."""

    __tablename__ = "event_attempts"
    __table_args__ = (Index("ix_event_attempts_event_id_number", "event_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(26), ForeignKey("events.id", ondelete="CASCADE"))
    number: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
