"""Load generation: wrk for throughput, a Python client for paced and recorded posts.

wrk is the load generator for every req/s figure: it is written in C and needs a small
fraction of a core for thousands of requests per second, so on a 2-core machine it takes
far less CPU from the server under test than a Python generator would, and the ceiling it
measures is the server's. Webhook signatures cannot be computed in wrk's Lua, so the
requests are signed beforehand (one distinct `webhook-id` each, signed by the
`standardwebhooks` package) and wrk replays them; the signed timestamps stay inside the
300 s tolerance because each file is written right before its run.

The Python client (`post_all`) is for what wrk cannot do: pacing at a fixed rate, and
remembering each answer (the lag measurement and the chaos run).
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook

from bench.common import ROOT

LUA = ROOT / "bench" / "requests.lua"
PACED_LUA = ROOT / "bench" / "paced.lua"


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Answer:
    status: int
    body: bytes
    sent: float  # perf_counter when the request was written
    answered: float  # perf_counter when the answer was read


def sign_standard(secret: str, msg_id: str, body: bytes, when: datetime | None = None) -> dict:
    when = when or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body.decode()),
        "content-type": "application/json",
    }


def standard_request(slug: str, secret: str, msg_id: str, event: dict[str, Any]) -> Req:
    body = json.dumps(event, separators=(",", ":")).encode()
    return Req("POST", f"/hooks/{slug}", sign_standard(secret, msg_id, body), body)


def write_requests(path: Path, reqs: Sequence[Req]) -> Path:
    with path.open("w") as out:
        for r in reqs:
            headers = "\x1f".join(f"{k}: {v}" for k, v in r.headers.items())
            body = r.body.decode()
            assert "\t" not in body and "\n" not in body
            out.write(f"{r.method}\t{r.path}\t{headers}\t{body}\n")
    return path


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    wrapped: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "errors": self.errors,
        }


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(port: int, file: Path, seconds: int, connections: int, threads: int = 2) -> WrkResult:
    if not have_wrk():
        raise SystemExit("wrk is not installed: sudo apt-get install -y wrk")
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}",
        "--",
        str(file),
        str(threads),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    match = re.search(r"WRKJSON (\{.*\})", done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed:\n{done.stdout}\n{done.stderr}")
    data = json.loads(match.group(1))
    secs = data["duration_us"] / 1e6
    errors = sum(
        data[k]
        for k in (
            "status_errors",
            "connect_errors",
            "read_errors",
            "write_errors",
            "timeouts",
        )
    )
    return WrkResult(
        requests=data["requests"],
        seconds=secs,
        rps=data["requests"] / secs,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        wrapped=data["wrapped_threads"] > 0,
    )


@dataclass
class Paced:
    """A paced wrk run: when each answer arrived (perf_counter clock), and wrk's latency."""

    answers: list[tuple[int, float, bytes]]  # status, answered at, body
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]  # wrk's: connect, read, write, timeout


def post_paced(
    port: int, reqs: Sequence[Req], rate: float, workdir: Path, connections: int = 8
) -> Paced:
    """Send every request once at `rate` a second from wrk (paced.lua), and record each
    answer's arrival. A Python poster cost the machine about 0.4 ms of CPU per post, a
    quarter of a core at the lag run's rate, taken from the server it measured."""
    if not have_wrk():
        raise SystemExit("wrk is not installed: sudo apt-get install -y wrk")
    file = write_requests(workdir / "paced.txt", reqs)
    out = workdir / "paced-answers.txt"
    out.unlink(missing_ok=True)
    expected = len(reqs) / rate
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{int(expected) + 90}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(PACED_LUA),
        f"http://127.0.0.1:{port}",
        "--",
        str(file),
        str(rate),
        str(out),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + expected + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.25)
            if out.exists() and out.read_bytes().count(b"\n") >= len(reqs):
                break
    finally:
        proc.send_signal(signal.SIGINT)  # wrk stops and reports
        stdout, stderr = proc.communicate(timeout=30)
    match = re.search(r"WRKJSON (\{.*\})", stdout)
    if match is None:
        raise RuntimeError(f"wrk failed:\n{stdout}\n{stderr}")
    data = json.loads(match.group(1))
    answers = []
    for line in out.read_bytes().splitlines():
        status, at, body = line.split(b"\t", 2)
        answers.append((int(status), float(at), body))
    errors = {
        k.removesuffix("_errors"): data[k]
        for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
    }
    return Paced(answers, data["p50_us"] / 1000, data["p99_us"] / 1000, errors)


def post_all(
    port: int,
    reqs: Sequence[Req | Callable[[], Req]],
    concurrency: int = 8,
    rate: float | None = None,
    on_sent: Callable[[int], None] | None = None,
    retry_refused: float = 0.0,
) -> list[Answer | None]:
    """Send every request once (keep-alive, `concurrency` threads); `rate` paces the starts.

    A callable is called at send time (signatures with a fresh timestamp, as a sender's retry).

    A request that cannot be sent (connection refused while a server restarts) is retried
    for `retry_refused` seconds, then recorded as None: not accepted.
    """
    answers: list[Answer | None] = [None] * len(reqs)
    lock = threading.Lock()
    cursor = [0]
    start = time.perf_counter()

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        while True:
            with lock:
                i = cursor[0]
                cursor[0] += 1
            if i >= len(reqs):
                break
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            item = reqs[i]
            r = item() if callable(item) else item
            deadline = time.perf_counter() + retry_refused
            while True:
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    sent = time.perf_counter()
                    if on_sent:
                        on_sent(i)
                    conn.request(r.method, r.path, body=r.body or None, headers=r.headers)
                    resp = conn.getresponse()
                    body = resp.read()
                    answers[i] = Answer(resp.status, body, sent, time.perf_counter())
                    break
                except (OSError, http.client.HTTPException):
                    if conn is not None:
                        conn.close()
                    conn = None
                    if time.perf_counter() > deadline:
                        break
                    time.sleep(0.05)
        if conn is not None:
            conn.close()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return answers
