"""`make run`: start Redis if none answers at REDIS_URL, then web + worker with honcho, as
many queue workers as `gatehouse.serving.QUEUE_WORKERS` (two).

Ctrl-C stops everything this started (honcho stops its processes, Redis among them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import redis
from dotenv import dotenv_values

from gatehouse.devtools import redis_server_binary
from gatehouse.serving import QUEUE_WORKERS

ROOT = Path(__file__).resolve().parent.parent


def honcho_command(honcho: str, procfile: Path) -> list[str]:
    """honcho starting every process of `procfile`, the worker QUEUE_WORKERS times."""
    return [honcho, "-d", str(ROOT), "-f", str(procfile), "start", "-c", f"worker={QUEUE_WORKERS}"]


def main() -> int:
    env = {**dotenv_values(ROOT / ".env"), **os.environ}
    url = env.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    lines = [
        line
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line.split(":")[0] in ("web", "worker")
    ]
    # honcho gives each process its own $PORT; locally the web answers where the README says.
    port = env.get("GATEHOUSE_PORT") or "8000"
    lines = [line.replace("${PORT:-8000}", port) for line in lines]
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        print(f"Redis answers at {url}")
    except redis.RedisError:
        parsed = urlparse(url)
        if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            print(
                f"Nothing answers at REDIS_URL={url} and it is not local: "
                "start it, or unset REDIS_URL"
            )
            return 1
        data = ROOT / "instance" / "redis"
        data.mkdir(parents=True, exist_ok=True)
        port = parsed.port or 6379
        lines.insert(
            0,
            f"redis: {redis_server_binary()} --port {port} --bind 127.0.0.1 --dir {data} "
            "--appendonly yes --save ''",
        )
        print(f"Starting Redis on 127.0.0.1:{port} (data in {data})")
    procfile = ROOT / "instance" / "Procfile.run"
    procfile.parent.mkdir(exist_ok=True)
    procfile.write_text("\n".join(lines) + "\n")
    bin_dir = Path(sys.executable).parent
    # The Procfile names gunicorn and flask: make the venv's copies the ones found.
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    honcho = str(bin_dir / "honcho")
    os.execv(honcho, honcho_command(honcho, procfile))
    return 0  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main())
