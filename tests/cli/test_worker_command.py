"""`flask --app wsgi worker` stops on SIGTERM, as honcho and systemd expect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flask import Flask
from rq import Worker

from gatehouse.extensions import redis_client

REPO = Path(__file__).resolve().parents[2]


def test_worker_command_exits_on_sigterm_while_idle(app: Flask) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": app.config["REDIS_URL"],
        "SECRET_KEY": app.config["SECRET_KEY"],
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "worker"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not Worker.all(connection=redis_client.get(app)):
            assert time.monotonic() < deadline, "the worker did not start"
            assert proc.poll() is None, "the worker exited at start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
