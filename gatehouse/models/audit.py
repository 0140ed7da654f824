from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from gatehouse.models.base import Base, utcnow


class AuditEntry(Base):
    """One admin action: who (token name), what, on what, when, and how it ended."""

    __tablename__ = "audit_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    token_name: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(255))
    result: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any] | None]
