from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gatehouse.models.base import Base, new_id, utcnow

REPLAY_STATUSES = ("pending", "running", "finished", "failed")


class Replay(Base):
    """A bulk replay by filter; the background job counts its progress here."""

    __tablename__ = "replays"

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    # The filter as given ({"status", "source", "type", "contact", "since", "until"}).
    filters: Mapped[dict[str, Any]]
    # Events received after the request are not part of it: ids are time-sortable.
    max_event_id: Mapped[str | None] = mapped_column(String(26))
    matched: Mapped[int] = mapped_column(default=0)
    done: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    # The last event id handled: the job resumes after it if it is run again.
    cursor: Mapped[str] = mapped_column(String(26), default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    @property
    def remaining(self) -> int:
        if self.status == "finished":
            return 0  # events that stopped matching while it ran were not replayed
        return max(0, self.matched - self.done - self.failed)
