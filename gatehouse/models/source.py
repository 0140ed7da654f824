from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gatehouse.models.base import Base, utcnow


class Source(Base):
    """One sender: its kind, its secret(s) and the CRM namespace of its contact ids and tags."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    crm: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    secrets: Mapped[list[SourceSecret]] = relationship(
        back_populates="source", cascade="all, delete-orphan", order_by="SourceSecret.id"
    )

    def live_secrets(self, now: datetime) -> list[SourceSecret]:
        """The current secret first, then any older ones still inside their grace period."""
        live = [s for s in self.secrets if s.expires_at is None or s.expires_at > now]
        return sorted(live, key=lambda s: (s.expires_at is not None, -s.id))


class SourceSecret(Base):
    """A signing secret, encrypted at rest; `expires_at` is set when it is rotated out."""

    __tablename__ = "source_secrets"

    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), index=True)
    encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]

    source: Mapped[Source] = relationship(back_populates="secrets")
