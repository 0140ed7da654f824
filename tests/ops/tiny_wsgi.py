"""A WSGI app for the web-server tests: the server's behaviour, not the app's, is tested."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/unread":
        body = b"answered without reading the body"  # as an early rejection does
    else:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = b"read %d bytes" % len(environ["wsgi.input"].read(length))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
