from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Text
from sqlalchemy.orm import Mapped, mapped_column

from gatehouse.models.base import Base, utcnow


class AccessRules(Base):
    """Every loaded version of the access rules; the highest id is the active one."""

    __tablename__ = "access_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    source_text: Mapped[str] = mapped_column(Text)
    rules: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
