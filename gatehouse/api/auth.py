"""Bearer tokens: reader or admin. Lookups are cached per process for a short while."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, g, request
from sqlalchemy import select

from gatehouse.crypto import hash_token
from gatehouse.errors import json_error
from gatehouse.extensions import db
from gatehouse.models import ApiToken

TOKEN_CACHE_TTL = 30.0
F = TypeVar("F", bound=Callable[..., Any])


def _lookup(token: str) -> tuple[str, str] | None:
    digest = hash_token(token)
    cache: dict[str, tuple[float, tuple[str, str] | None]] = current_app.extensions.setdefault(
        "gatehouse.tokens", {}
    )
    now = time.monotonic()
    hit = cache.get(digest)
    if hit is not None and hit[0] > now:
        return hit[1]
    row = db.session.execute(
        select(ApiToken.name, ApiToken.role).where(ApiToken.token_hash == digest)
    ).first()
    db.session.rollback()
    found = (row[0], row[1]) if row else None
    if len(cache) > 10_000:
        cache.clear()
    cache[digest] = (now + TOKEN_CACHE_TTL, found)
    return found


def cached_token(app: Flask, token: str) -> tuple[str, str] | None:
    """(name, role) if this token is known from a recent lookup, else None; no database.

    For the lean read path (`gatehouse.fastpath`): it honours only what `_lookup` itself
    found and cached, within the same lifetime, and leaves every other case to `require`.
    """
    cache = app.extensions.get("gatehouse.tokens")
    if not cache:
        return None
    hit = cache.get(hash_token(token))
    if hit is None or hit[0] <= time.monotonic():
        return None
    found: tuple[str, str] | None = hit[1]
    return found


def forget_tokens() -> None:
    current_app.extensions.pop("gatehouse.tokens", None)


def require(role: str) -> Callable[[F], F]:
    """Admin tokens may do everything a reader may."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return _deny(401, "missing_token", "send Authorization: Bearer <token>")
            found = _lookup(token.strip())
            if found is None:
                return _deny(401, "invalid_token", "the token is not known")
            name, token_role = found
            if role == "admin" and token_role != "admin":
                return _deny(403, "forbidden", "this needs an admin token")
            g.token_name, g.token_role = name, token_role
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorate


def _deny(status: int, code: str, detail: str) -> Any:
    body, status = json_error(status, code, detail)
    return body, status, {"WWW-Authenticate": "Bearer"} if status == 401 else {}
