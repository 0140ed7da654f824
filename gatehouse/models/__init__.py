"""SQLAlchemy 2 typed models. Model methods never commit: the caller owns the transaction."""

from gatehouse.models.attempt import EventAttempt
from gatehouse.models.audit import AuditEntry
from gatehouse.models.base import Base, new_id, utcnow
from gatehouse.models.event import FINAL_STATUSES, STATUSES, Event
from gatehouse.models.member import Contact, ContactTag, Member, Subscription, TagSnapshot
from gatehouse.models.replay import Replay
from gatehouse.models.rules import AccessRules
from gatehouse.models.source import Source, SourceSecret
from gatehouse.models.token import ROLES, ApiToken

__all__ = [
    "FINAL_STATUSES",
    "ROLES",
    "STATUSES",
    "AccessRules",
    "ApiToken",
    "AuditEntry",
    "Base",
    "Contact",
    "ContactTag",
    "Event",
    "EventAttempt",
    "Member",
    "Replay",
    "Source",
    "SourceSecret",
    "Subscription",
    "TagSnapshot",
    "new_id",
    "utcnow",
]
