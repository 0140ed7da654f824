"""A lean path for the one hot read: `GET /api/members/<id>/access` answered from the cache.

Membership sites ask this at every login and page view. Through Flask the answer costs
several times the Redis read it is made of: a request context, `before_request` and
`after_request` hooks (request log, audit, metrics), the `require` decorator, the
SQLAlchemy session's rollback and teardown, a Response object. This WSGI middleware sits in
front of Flask and answers the common case itself: a token already in the process's token
cache (filled by `gatehouse.api.auth` on its first use, with the same 30 s lifetime) and a
cached access answer (one Redis `HGET`), returned as the stored bytes.

Anything else goes to Flask unchanged, which answers exactly as before: no or unknown or
not-yet-cached token (401, and the cache fills), a cache miss (recomputed from the
database), Redis down, another method, a path that is not exactly this route. So auth
semantics are the ones `require("reader")` has, because only a token `require` itself
accepted and cached is honoured here (reader and admin both may read).

Kept for this route: the cache hit counter (`gatehouse_access_cache_reads{result="hit"}`)
and the request log line, with the same fields the Flask hook writes. Not run: the audit
hook (it only records admin writes; this is a read) and the SQLAlchemy session (unused).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from flask import Flask

from gatehouse import metrics
from gatehouse.access import cache
from gatehouse.api.auth import cached_token
from gatehouse.request_log import log_request

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# Member ids are ours (26 hex chars); anything unusual takes the full path.
_ROUTE = re.compile(r"/api/members/([0-9A-Za-z_-]{1,64})/access")
ENDPOINT = "api_members.member_access"


class AccessFastPath:
    def __init__(self, app: Flask, wsgi_app: WSGIApp) -> None:
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "GET":
            match = _ROUTE.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None:
                answer = self._answer(match.group(1), environ, start_response)
                if answer is not None:
                    return answer
        return self.wsgi_app(environ, start_response)

    def _answer(
        self, member_id: str, environ: dict[str, Any], start_response: StartResponse
    ) -> list[bytes] | None:
        started = time.perf_counter()
        # The same parsing as `require`: "Bearer <token>", scheme case-insensitive.
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        found = cached_token(self.app, token)
        if found is None:
            return None  # unknown, expired from the cache or refused: Flask decides
        try:
            body = cache.read(member_id, self.app)
        except redis.RedisError:
            return None  # Flask's path answers from the database
        if body is None:
            return None  # a miss: Flask recomputes and fills the cache (and counts the miss)
        metrics.count_cache(hit=True)
        log_request("GET", environ.get("PATH_INFO"), ENDPOINT, 200, started, token_name=found[0])
        return json_answer(start_response, "200 OK", body)


def json_answer(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    """A JSON answer written straight to WSGI, for the lean paths in front of Flask."""
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def init_app(app: Flask) -> None:
    app.wsgi_app = AccessFastPath(app, app.wsgi_app)  # type: ignore[method-assign]
