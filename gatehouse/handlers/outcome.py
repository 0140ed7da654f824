from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gatehouse.models import Event


class Skip(Exception):
    """Nothing to do for this event; the reason is kept on the event."""


class Unmatched(Exception):
    """The event names something no member is linked to yet; it is re-run when one is."""


@dataclass
class Assertion:
    """When an event asserted something, and its deterministic tie-break."""

    at: datetime
    key: str
    event_id: str | None

    @classmethod
    def of(cls, event: Event) -> Assertion:
        return cls(at=event.occurred_at, key=event.external_id, event_id=event.id)

    def newer_than(self, at: datetime | None, key: str) -> bool:
        if at is None:
            return True
        return (self.at, self.key) > (at, key)


@dataclass
class Outcome:
    """What one event did: members whose access may have changed, and a summary for admins."""

    touched: set[str] = field(default_factory=set)
    changes: list[dict[str, Any]] = field(default_factory=list)

    def note(self, member_id: str | None, what: str, **details: Any) -> None:
        entry: dict[str, Any] = {"what": what, **details}
        if member_id is not None:
            entry["member_id"] = member_id
            self.touched.add(member_id)
        self.changes.append(entry)

    def effects(self) -> dict[str, Any]:
        return {"members": sorted(self.touched), "changes": self.changes}


@dataclass
class BatchOutcome:
    """What a batch did, in the shapes `jobs.process_events` reports: each event's result,
    what the metrics count per finished event, and every member whose cache is to be written."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    finished: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, event_ids: Sequence[str], found: Collection[str]) -> BatchOutcome:
        """Begun with the result of each id the database does not have."""
        return cls(
            results={i: {"event": i, "status": "missing"} for i in event_ids if i not in found}
        )

    def add(self, event_id: str, status: str, counts: tuple[Any, ...], touched: set[str]) -> None:
        self.results[event_id] = {"event": event_id, "status": status, "members": sorted(touched)}
        self.finished.append((event_id, counts))
        self.touched |= touched
