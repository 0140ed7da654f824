"""Admin actions on one member: revoke, restore, all-access, refresh.

The API and CLI call these and hold no logic of their own. Each public function is one
transaction: lock the member, change it, bump `access_version`, commit, then write the
cache. An audit log can wrap each function (they are the only way admins change members),
or, to write its row in the same transaction, call the matching `*_in_session` function,
add its row, and then `finish()`.

Revoke and restore are assertions like an event's: they take the time they are made
(`status_at = now`) with the tie-break key `admin`. So a `member.revoked` that happened
before an admin's restore, but is processed after it, does not revoke the member again; a
revoke that happens after the restore does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select

from gatehouse import audit
from gatehouse.access import cache
from gatehouse.extensions import db
from gatehouse.models import Member, utcnow

ADMIN_KEY = "admin"


class AdminError(Exception):
    """An admin action that cannot be done; `code` is the stable API error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


class MemberNotFound(AdminError):
    def __init__(self, member_id: str) -> None:
        super().__init__("not_found", f"no member {member_id!r}")


@dataclass(frozen=True)
class ActionResult:
    member_id: str
    action: str
    changed: bool
    status: str
    all_access: bool
    version: int


def lock(member_id: str) -> Member:
    member = db.session.execute(
        select(Member).where(Member.id == member_id).with_for_update()
    ).scalar_one_or_none()
    if member is None:
        raise MemberNotFound(member_id)
    if member.status == "merged":
        raise AdminError(
            "member_merged",
            f"member {member_id} was merged into {member.merged_into_id}; act on that member",
        )
    return member


def revoke_in_session(member: Member) -> bool:
    changed = member.status != "revoked"
    member.status = "revoked"
    member.status_at, member.status_key = utcnow(), ADMIN_KEY
    member.touch()
    return changed


def restore_in_session(member: Member) -> bool:
    changed = member.status != "active"
    member.status = "active"
    # Now, not the revoke's time: an older revoke processed later must not win over this.
    member.status_at, member.status_key = utcnow(), ADMIN_KEY
    member.touch()
    return changed


def set_all_access_in_session(member: Member, enabled: bool) -> bool:
    changed = member.all_access != enabled
    member.all_access = enabled
    member.touch()
    return changed


def finish(member_ids: Sequence[str]) -> None:
    """Commit, then write the cache (after the commit, so it never shows uncommitted state)."""
    db.session.commit()
    cache.refresh(list(member_ids))


def _result(member: Member, action: str, changed: bool) -> ActionResult:
    return ActionResult(
        member_id=member.id,
        action=action,
        changed=changed,
        status=member.status,
        all_access=member.all_access,
        version=member.access_version,
    )


def revoke(member_id: str) -> ActionResult:
    """Status `revoked`: no permissions at all; tags, links and subscriptions are kept."""
    member = lock(member_id)
    changed = revoke_in_session(member)
    result = _result(member, "revoke", changed)
    finish([member.id])
    return result


def restore(member_id: str) -> ActionResult:
    """Undo a revoke (an admin's or a CRM's)."""
    member = lock(member_id)
    changed = restore_in_session(member)
    result = _result(member, "restore", changed)
    finish([member.id])
    return result


def set_all_access(member_id: str, enabled: bool) -> ActionResult:
    """Give (or take away) every permission any group grants, for admins testing the site."""
    member = lock(member_id)
    changed = set_all_access_in_session(member, enabled)
    result = _result(member, "all_access_on" if enabled else "all_access_off", changed)
    finish([member.id])
    return result


def refresh(member_id: str) -> ActionResult:
    """Recompute and rewrite the member's cached access from the database; changes nothing else.

    The cache accepts a write of the same version, so no version bump is needed.
    """
    member = db.session.get(Member, member_id)
    if member is None:
        raise MemberNotFound(member_id)
    result = _result(member, "refresh", False)
    db.session.rollback()
    cache.refresh([member_id])
    return result


# The actions an admin runs by name (the admin page's buttons), with the member id alone.
MEMBER_ACTIONS: dict[str, Callable[[str], ActionResult]] = {
    "revoke": revoke,
    "restore": restore,
    "refresh": refresh,
}


def run_audited(action: str, member_id: str, call: Callable[[], ActionResult]) -> ActionResult:
    """Run an admin action for the current request (API or admin page): rolled back and
    re-raised on AdminError, else named for the request's audit entry."""
    try:
        result = call()
    except AdminError:
        db.session.rollback()
        raise
    audit.note(action, member_id, changed=result.changed)
    return result
