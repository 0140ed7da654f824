"""One JSON log line per request: method, route, status, duration, and who (token name).

The path is logged without its query string: Keap and keap-rest-hook sources carry their
key in the URL, and a query string may hold anything a sender chose to put there.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

log = logging.getLogger("gatehouse.request")


def _start() -> None:
    g.request_started = time.perf_counter()


def log_request(
    method: str,
    path: str | None,
    endpoint: str | None,
    status: int,
    started: float | None,
    **extra: str,
) -> None:
    """The request line; also written by the lean paths in front of Flask (`fastpath`)."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields = {
        "method": method,
        "path": path,
        "endpoint": endpoint,
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
        **extra,
    }
    log.info("request", extra=fields)


def _finish(response: Response) -> Response:
    extra = {}
    if request.view_args and "slug" in request.view_args:
        extra["source"] = request.view_args["slug"]
    if getattr(g, "token_name", None):
        extra["token_name"] = g.token_name
    log_request(
        request.method,
        request.path,
        request.endpoint,
        response.status_code,
        getattr(g, "request_started", None),
        **extra,
    )
    return response


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
