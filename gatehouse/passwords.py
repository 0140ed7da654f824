"""Passwords for new members: a random one (hash only) and a single-use set-password token."""

from __future__ import annotations

import secrets
from typing import Any

from argon2 import PasswordHasher
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

SET_PASSWORD_SALT = "gatehouse.set-password"
SET_PASSWORD_MAX_AGE = 7 * 24 * 3600
# A new member's password is 256 random bits that nobody ever learns (they set their own
# with the set-password token). Key stretching protects guessable passwords only; for this
# one it would add half a second under load between a genpass and the first access answer.
# The parameters travel inside the hash, so any argon2 verifier still reads it.
_UNGUESSABLE = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


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
