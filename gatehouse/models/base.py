from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, registry


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A 26-character id that sorts by creation time (ms), then randomness."""
    millis = int(time.time() * 1000)
    return f"{millis:012x}{os.urandom(7).hex()}"


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, always returns aware UTC (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Gatehouse stores only aware UTC times")
        return value.astimezone(UTC).replace(tzinfo=None)

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # SQLite keeps these as text and compares them as text, so the text must be
        # exactly SQLAlchemy's DATETIME format ("2026-11-23 22:33:52.508364"), which is
        # what isoformat gives in C. SQLAlchemy's formatter built it from a dict, per value:
        # three values per stored event, about six per applied one (its event, attempt,
        # tags and member).
        def process(value: datetime | None) -> str | None:
            naive = self.process_bind_param(value, dialect)
            return None if naive is None else naive.isoformat(" ", "microseconds")

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    registry = registry(
        metadata=MetaData(naming_convention=NAMING),
        type_annotation_map={
            datetime: UTCDateTime(),
            dict[str, Any]: JSON(),
            list[Any]: JSON(),
        },
    )
