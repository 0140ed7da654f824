"""`UTCDateTime` on SQLite writes exactly SQLAlchemy's own DATETIME text: SQLite compares
stored times as text, so one differing character would misorder events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import DateTime

from gatehouse.models.base import UTCDateTime

DIALECT = sqlite.dialect()
OURS = UTCDateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
STOCK = DateTime().dialect_impl(DIALECT).bind_processor(DIALECT)

TIMES = [
    datetime(2026, 11, 23, 22, 33, 52, 508364, tzinfo=UTC),
    datetime(2026, 11, 23, 22, 33, 52, tzinfo=UTC),  # no microseconds: still six zeros
    datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    datetime(1, 1, 1, 0, 0, 0, tzinfo=UTC),  # a four-digit year, zero-padded
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 3, 28, 23, 30, tzinfo=timezone(timedelta(hours=-7))),  # the next day in UTC
]


@pytest.mark.parametrize("when", TIMES, ids=str)
def test_sqlite_text_is_sqlalchemys_datetime_text_of_the_utc_time(when: datetime) -> None:
    assert OURS is not None and STOCK is not None
    assert OURS(when) == STOCK(when.astimezone(UTC).replace(tzinfo=None))


def test_none_stays_null_and_a_naive_time_is_refused() -> None:
    assert OURS is not None
    assert OURS(None) is None
    with pytest.raises(ValueError, match="naive"):
        OURS(datetime(2026, 11, 23, 12, 0))
