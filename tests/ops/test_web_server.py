"""The Procfile's web server: gunicorn's sync worker that closes a finished connection at
once (`gatehouse.serving`), and lingers only when request bytes were left unread."""

from __future__ import annotations

import http.client
import os
import runpy
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, gunicorn_serving


def _serve(tmp_path: Path, *options: str) -> Iterator[int]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    with gunicorn_serving("tests.ops.tiny_wsgi:app", *options, "--workers", "1", env=env) as port:
        yield port


@pytest.fixture
def procfile_server(tmp_path: Path) -> Iterator[int]:
    """gunicorn started as the Procfile's `web` starts it (its config file)."""
    yield from _serve(tmp_path, "--config", "gunicorn.conf.py")


@pytest.fixture
def stock_server(tmp_path: Path) -> Iterator[int]:
    yield from _serve(tmp_path, "--worker-class", "sync")


def _read_answer(conn: socket.socket) -> tuple[int, bytes]:
    """Read one answer's status and body, leaving the connection open."""
    answer = http.client.HTTPResponse(conn)
    answer.begin()
    return answer.status, answer.read()


def _post(port: int, path: str, body: bytes) -> socket.socket:
    """Send a whole POST on a connection of its own, and leave the answer to the caller."""
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(
        b"POST %s HTTP/1.1\r\nHost: gatehouse\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body)) + body
    )
    return conn


def _second_request_seconds(port: int) -> float:
    """A client reads its answer and keeps its end open; how long the next client waits."""
    holder = socket.create_connection(("127.0.0.1", port))
    try:
        holder.sendall(b"GET / HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
        assert _read_answer(holder)[0] == 200
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
            assert answer.status == 200
        return time.perf_counter() - started
    finally:
        holder.close()


def test_a_client_that_keeps_its_connection_open_does_not_hold_the_worker(
    procfile_server: int,
) -> None:
    assert _second_request_seconds(procfile_server) < 0.5


def test_the_stock_sync_worker_waits_for_that_client(stock_server: int) -> None:
    """What the Procfile's worker class is for: gunicorn's own sync worker lingers (up to
    2 s) on the open connection before it serves anyone else. If a gunicorn upgrade stops
    doing so, this fails and `gatehouse.serving` can go."""
    assert _second_request_seconds(stock_server) > 1.5


def test_unread_request_bytes_still_get_a_graceful_close(procfile_server: int) -> None:
    """An answer sent before the body was read (an early rejection). Closed at once with
    bytes unread, the connection would end in a reset instead of the server's FIN; some
    clients then drop an answer they have not read yet."""
    conn = _post(procfile_server, "/unread", b"x" * 60_000)
    try:
        time.sleep(0.3)  # the server has answered and ended its side by now
        status, body = _read_answer(conn)
        conn.settimeout(2)
        assert conn.recv(1) == b""  # a FIN, not ConnectionResetError
    finally:
        conn.close()
    assert status == 200
    assert body == b"answered without reading the body"


def test_a_read_body_is_answered_and_closed(procfile_server: int) -> None:
    conn = _post(procfile_server, "/read", b"y" * 60_000)
    try:
        status, body = _read_answer(conn)
        conn.settimeout(2)
        assert conn.recv(1) == b""  # the server's end is closed, with nothing left to read
    finally:
        conn.close()
    assert status == 200
    assert body == b"read 60000 bytes"


@pytest.mark.parametrize(("concurrency", "expected"), [("", 2), ("7", 7)])
def test_the_procfile_config_runs_two_workers_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, concurrency: str, expected: int
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    monkeypatch.setenv("WEB_CONCURRENCY", concurrency)
    settings = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    assert settings["workers"] == expected
    assert settings["worker_class"] == "gatehouse.serving.GroupCommitWorker"


def test_make_run_starts_the_queue_workers_the_deployment_counts_on(tmp_path: Path) -> None:
    """The lag figures in docs/benchmarks.md were measured with QUEUE_WORKERS workers beside
    the web: `make run` (scripts/run.py) must start that many."""
    import subprocess
    import sys

    from gatehouse.serving import QUEUE_WORKERS
    from scripts.run import honcho_command

    procfile = tmp_path / "Procfile"
    procfile.write_text("worker: echo up-$PORT && sleep 1\n")
    honcho = str(Path(sys.executable).parent / "honcho")
    done = subprocess.run(
        honcho_command(honcho, procfile), capture_output=True, text=True, timeout=30
    )
    # honcho prints "<time> <process> | <output>".
    started = {line.split()[1] for line in done.stdout.splitlines() if " up-" in line}
    assert QUEUE_WORKERS == 2
    assert started == {f"worker.{k}" for k in range(1, QUEUE_WORKERS + 1)}
