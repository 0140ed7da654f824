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


def _finish(response: Response) -> Response:
    started = getattr(g, "request_started", None)
    fields = {
        "method": request.method,
        "path": request.path,
        "endpoint": request.endpoint,
        "status": response.status_code,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
    }
    if request.view_args and "slug" in request.view_args:
        fields["source"] = request.view_args["slug"]
    if getattr(g, "token_name", None):
        fields["token_name"] = g.token_name
    log.info("request", extra=fields)
    return response


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
