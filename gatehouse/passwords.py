"""Passwords for new members: a random one (hash only) and a single-use set-password token.

The token is handed out by the admin API (`POST /api/members/<id>/password-token`) and the
CLI (`members password-token`), and spent by the site's backend with the member's chosen
password (`POST /api/members/password`). It carries the member's `password_nonce`, which
setting a password bumps: a token works once, and every older token stops working then.
"""

from __future__ import annotations

import secrets
from typing import Any

from argon2 import PasswordHasher
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import select

from gatehouse.extensions import db
from gatehouse.models import Member

SET_PASSWORD_SALT = "gatehouse.set-password"
SET_PASSWORD_MAX_AGE = 7 * 24 * 3600
# A new member's password is 256 random bits that nobody ever learns (they set their own
# with the set-password token). Key stretching protects guessable passwords only; for this
# one it would add half a second under load between a genpass and the first access answer.
# The parameters travel inside the hash, so any argon2 verifier still reads it.
_UNGUESSABLE = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
# A password a person chose: argon2's recommended (RFC 9106 low-memory) parameters.
_CHOSEN = PasswordHasher()
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # hashing cost grows with it; nobody types more


class PasswordError(Exception):
    """A set-password request that cannot be done; `code` is the stable API error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def random_password_hash() -> str:
    return _UNGUESSABLE.hash(secrets.token_urlsafe(32))


def set_password_token(secret_key: str, member_id: str, nonce: int) -> str:
    return str(URLSafeTimedSerializer(secret_key, salt=SET_PASSWORD_SALT).dumps([member_id, nonce]))


def read_set_password_token(secret_key: str, token: str) -> tuple[str, int] | None:
    """(member id, nonce) if the token is genuine and fresh; the caller checks the nonce."""
    try:
        data: Any = URLSafeTimedSerializer(secret_key, salt=SET_PASSWORD_SALT).loads(
            token, max_age=SET_PASSWORD_MAX_AGE
        )
    except (BadSignature, SignatureExpired):
        return None
    if not (isinstance(data, list) and len(data) == 2):
        return None
    return str(data[0]), int(data[1])


def token_for_member(secret_key: str, member_id: str) -> str | None:
    """A set-password token for the member, or None if there is no such member."""
    member = db.session.get(Member, member_id)
    if member is None or member.status == "merged":
        return None
    return set_password_token(secret_key, member.id, member.password_nonce)


def set_password_with_token(secret_key: str, token: str, password: str) -> str:
    """Set the member's password if the token is genuine, fresh and unspent; returns the
    member id. The caller commits."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise PasswordError(
            "bad_password",
            f"the password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters",
        )
    read = read_set_password_token(secret_key, token)
    if read is None:
        raise PasswordError(
            "invalid_token", "the token is not genuine or has expired; ask for a new one"
        )
    member_id, nonce = read
    # Hashed before the row is locked: a chosen password's hash takes tens of milliseconds.
    password_hash = _CHOSEN.hash(password)
    member = db.session.execute(
        select(Member).where(Member.id == member_id).with_for_update()
    ).scalar_one_or_none()
    if member is None or member.status == "merged":
        raise PasswordError("invalid_token", "the token's member no longer exists")
    if member.password_nonce != nonce:
        raise PasswordError(
            "token_used", "the token was spent (the password was set since); ask for a new one"
        )
    member.password_hash = password_hash
    member.password_nonce = nonce + 1
    return member.id
