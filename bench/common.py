"""Real processes on loopback for the benchmarks and the chaos run.

Everything started here is registered in one `Stack`; leaving the `with` block, an
exception, Ctrl-C or SIGTERM stops all of it (each process runs in its own session so
its children go too).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from gatehouse.devtools import free_port, redis_server_binary
from gatehouse.serving import WEB_WORKERS, WORKER_CLASS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SECRET_KEY = "bench-secret-key-not-for-production-0123456789"
# The same server settings for the app and for the hello-world baseline.
GUNICORN_WORKERS = int(os.environ.get("BENCH_GUNICORN_WORKERS") or WEB_WORKERS)  # the Procfile's
# gunicorn.conf.py's worker class (gunicorn's sync worker, closing a finished connection at once:
# gatehouse.serving); BENCH_GUNICORN_CLASS=sync measures gunicorn's own.
GUNICORN_CLASS = os.environ.get("BENCH_GUNICORN_CLASS", WORKER_CLASS)
GUNICORN_THREADS = int(os.environ.get("BENCH_GUNICORN_THREADS", "1"))


def tool(name: str) -> str:
    """A console script of this venv (flask, gunicorn, rq), else from PATH."""
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: run `make install-dev` first")
    return found


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=str(ROOT),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10) -> None:
        if self.popen is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait(5)
        self.popen = None

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        if self.popen is None:
            return
        self.signal(signal.SIGKILL)
        self.popen.wait(5)
        self.popen = None

    def wait(self, timeout: float | None = None) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Stack:
    """Owns a temp directory and every process started for one run."""

    def __init__(self, keep: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gatehouse-bench-"))
        self.keep = keep
        self.procs: list[Proc] = []
        self._closed = False
        atexit.register(self.close)
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.close()
        raise SystemExit(128 + signum)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(5)
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, env, self.dir / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def forget(self, proc: Proc) -> None:
        if proc in self.procs:
            self.procs.remove(proc)


class RedisProc:
    def __init__(self, stack: Stack, appendonly: bool = False) -> None:
        self.stack = stack
        self.port = free_port()
        self.appendonly = appendonly
        self.datadir = stack.dir / "redis"
        self.datadir.mkdir(exist_ok=True)
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10)

    def start(self) -> RedisProc:
        argv = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            str(self.datadir),
        ]
        self.proc = self.stack.spawn("redis", argv, dict(os.environ))
        client = self.client()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start:\n{self.proc.tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.stack.forget(self.proc)
            self.proc = None


def app_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": SECRET_KEY,
            "GATEHOUSE_LOG_LEVEL": "WARNING",
            "FLASK_APP": "wsgi",
            "PYTHONPATH": str(ROOT),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.update(extra)
    return env


def app_config(env: dict[str, str]) -> dict[str, Any]:
    """The same settings the processes get, for building an app inside this process."""
    names = [k for k in env if k.startswith("GATEHOUSE_")]
    config: dict[str, Any] = {
        "DATABASE_URL": env["DATABASE_URL"],
        "REDIS_URL": env["REDIS_URL"],
        "SECRET_KEY": env["SECRET_KEY"],
    }
    for name in names:
        value = env[name]
        config[name] = int(value) if value.isdigit() else value
    if "GATEHOUSE_RETRY_INTERVALS" in config:
        raw = str(config["GATEHOUSE_RETRY_INTERVALS"])
        config["GATEHOUSE_RETRY_INTERVALS"] = [int(x) for x in raw.split(",") if x.strip()]
    return config


def sqlite_url(stack: Stack) -> str:
    return f"sqlite:///{stack.dir / 'gatehouse.db'}"


def create_schema(database_url: str, redis_url: str, env: dict[str, str]) -> None:
    """A fresh schema from the models (create_all), in a child process.

    create_all rather than `db upgrade`: models change faster than migrations during
    development, and the benchmark must measure the code as it is.
    """
    code = (
        "from gatehouse import create_app\n"
        "from gatehouse.extensions import db\n"
        "app = create_app()\n"
        "with app.app_context():\n"
        "    db.drop_all()\n"
        "    db.create_all()\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT), check=True)


def wait_http(url: str, proc: Proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback only
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not answer {url}:\n{proc.tail()}")


def start_gunicorn(
    stack: Stack,
    app_spec: str,
    env: dict[str, str],
    name: str = "gunicorn",
    port: int | None = None,
    workers: int = GUNICORN_WORKERS,
    worker_class: str = GUNICORN_CLASS,
) -> tuple[Proc, int]:
    port = port or free_port()
    argv = [
        tool("gunicorn"),
        app_spec,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--threads",
        str(GUNICORN_THREADS),
        "--backlog",
        "2048",
        "--timeout",
        "60",
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
    ]
    proc = stack.spawn(name, argv, env)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return proc, port


def start_worker(stack: Stack, env: dict[str, str], name: str, burst: bool = False) -> Proc:
    argv = [tool("flask"), "--app", "wsgi", "worker"]
    if burst:
        argv += ["--burst", "--without-scheduler"]
    return stack.spawn(name, argv, env)


def flask_cli(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [tool("flask"), "--app", "wsgi", *args],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class RssSampler:
    """Peak RSS per role, sampled every 100 ms from the processes' trees."""

    roles: dict[str, list[Proc]] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, role: str, proc: Proc) -> None:
        self.roles.setdefault(role, []).append(proc)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for role, procs in list(self.roles.items()):
                for proc in list(procs):
                    if not proc.alive():
                        continue
                    try:
                        root = psutil.Process(proc.pid)
                        # gunicorn's workers are its children; an RQ worker may fork its scheduler.
                        targets = [root, *root.children()]
                        for p in targets:
                            mb = p.memory_info().rss / 1_048_576
                            if mb > self.peaks.get(role, 0.0):
                                self.peaks[role] = mb
                    except psutil.Error:
                        continue
            self._stop.wait(0.1)

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)


def dump_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    yield box
    box.append(time.perf_counter() - start)
