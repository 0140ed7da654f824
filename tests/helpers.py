"""Helpers shared by the tests: sources, tokens, signing with the providers' libraries, worker."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from standardwebhooks import Webhook

from gatehouse.crypto import hash_token, new_token
from gatehouse.devtools import free_port
from gatehouse.extensions import db
from gatehouse.logs import JsonFormatter
from gatehouse.models import ApiToken
from gatehouse.queue.worker import GatehouseWorker
from gatehouse.sources import add_source
from gatehouse.webhooks.senders.keap_http_post import make_key


def create_source(slug: str, kind: str, crm: str | None = None, secret: str | None = None) -> str:
    _, chosen = add_source(slug, kind, crm, secret, None)
    db.session.commit()
    return chosen


def create_token(role: str, name: str | None = None) -> str:
    token = new_token()
    db.session.add(ApiToken(name=name or f"{role}-token", role=role, token_hash=hash_token(token)))
    db.session.commit()
    return token


def standard_headers(
    secret: str, msg_id: str, body: bytes, when: datetime | None = None
) -> dict[str, str]:
    """Signed by the `standardwebhooks` package: the independent reference."""
    when = when or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def post_standard(
    client: FlaskClient, slug: str, secret: str, event: dict[str, Any], msg_id: str, **kw: Any
) -> Any:
    body = json.dumps(event).encode()
    return client.post(
        f"/hooks/{slug}", data=body, headers=standard_headers(secret, msg_id, body, **kw)
    )


def keap_url(slug: str, secret: str, command: str, **params: str) -> str:
    query = f"{command}={make_key(secret, slug, command)}"
    for name, value in params.items():
        query += f"&{name}={value}"
    return f"/hooks/{slug}?{query}"


def run_worker(app: Flask) -> None:
    """Drain the queue with the real worker class, in burst mode."""
    GatehouseWorker(app).work(burst=True, with_scheduler=False, logging_level="WARNING")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def load_fixture(provider: str, name: str) -> Any:
    """A real-shaped payload from tests/fixtures/<provider>/<name>.json."""
    from pathlib import Path

    path = Path(__file__).parent / "fixtures" / provider / f"{name}.json"
    return json.loads(path.read_text())


def rq_job_keys(app: Flask) -> list[bytes]:
    """Every RQ job hash in Redis: a refused request must leave none."""
    from gatehouse.extensions import redis_client

    return sorted(redis_client.get(app).keys("rq:job:*"))


def event_count() -> int:
    from sqlalchemy import func, select

    from gatehouse.models import Event

    count = db.session.execute(select(func.count()).select_from(Event)).scalar_one()
    db.session.rollback()
    return int(count)


@contextmanager
def refusing_inserts(table: str) -> Iterator[None]:
    """Make the database really refuse inserts into `table` (a trigger), as a failing disk
    would."""
    trigger = f"refuse_{table}"
    if db.engine.dialect.name == "sqlite":
        db.session.execute(
            text(
                f"CREATE TRIGGER {trigger} BEFORE INSERT ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
            )
        )
    else:
        db.session.execute(
            text(
                f"CREATE OR REPLACE FUNCTION {trigger}() RETURNS trigger AS $$ "
                "BEGIN RAISE EXCEPTION 'disk I/O error'; END $$ LANGUAGE plpgsql"
            )
        )
        db.session.execute(
            text(
                f"CREATE TRIGGER {trigger} BEFORE INSERT ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {trigger}()"
            )
        )
    db.session.commit()
    try:
        yield
    finally:
        db.session.rollback()
        if db.engine.dialect.name == "postgresql":
            # Functions outlive the tables each test drops.
            db.session.execute(text(f"DROP FUNCTION {trigger}() CASCADE"))
        else:
            db.session.execute(text(f"DROP TRIGGER IF EXISTS {trigger}"))
        db.session.commit()


@contextmanager
def json_log_lines() -> Iterator[io.StringIO]:
    """Every record of every logger (ours, RQ's, werkzeug's) at DEBUG, as JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(), logging.getLogger("gatehouse"), logging.getLogger("rq")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


REPO = Path(__file__).resolve().parents[1]


def repo_python(
    *args: str, env: dict[str, str] | None = None, quiet: bool = True
) -> subprocess.Popen[bytes]:
    """`python <args>` started from the repository (as the Procfile runs its commands), its
    output discarded unless `quiet` is False."""
    output = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env, stdout=output, stderr=output
    )


def app_process_env(app: Flask, **extra: str) -> dict[str, str]:
    """The environment a process started beside `app` needs to use its database and Redis."""
    return {
        **os.environ,
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": app.config["REDIS_URL"],
        "SECRET_KEY": app.config["SECRET_KEY"],
        **extra,
    }


@contextmanager
def gunicorn_serving(app_spec: str, *options: str, env: dict[str, str]) -> Iterator[int]:
    """A real gunicorn for `app_spec`, run from the repository on a free loopback port;
    yields the port once `/healthz` answers, and stops it after."""
    port = free_port()
    server = repo_python(
        "-m", "gunicorn", app_spec, *options, "--bind", f"127.0.0.1:{port}", env=env
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn {app_spec} {options} did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(20)


def query_plan(app: Flask, marker: str, run: Any) -> list[str]:
    """The database's plan for the one statement `run()` sends that contains `marker`, as
    the steps it prints: SQLite's EXPLAIN QUERY PLAN details, PostgreSQL's EXPLAIN lines
    (sequential scans turned off, so a usable index shows on a table of a few rows)."""
    from sqlalchemy import event

    from gatehouse.extensions import db

    sent: list[tuple[str, Any]] = []
    with app.app_context():
        engine = db.engine

        def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_rest: Any) -> None:
            if marker in statement:
                sent.append((statement, params))

        event.listen(engine, "before_cursor_execute", record)
        try:
            run()
        finally:
            event.remove(engine, "before_cursor_execute", record)
            db.session.rollback()
        [(sql, params)] = sent
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                return [
                    str(row[3]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)
                ]
            # LOCAL: ends with this connection's transaction, not left on a pooled connection
            # for the tests after this one.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            return [str(row[0]) for row in conn.exec_driver_sql(f"EXPLAIN {sql}", params)]


def served_app_env(tmp_path: Path, redis_server: Any) -> tuple[dict[str, str], str]:
    """The environment for the app served by a real gunicorn (or the CLI) beside the tests: a
    SQLite file in `tmp_path` with the schema made, the session's Redis, metrics files in
    `tmp_path / "prom"`. Returns (environment, database URL)."""
    from sqlalchemy import create_engine

    from gatehouse.models import Base
    from tests.conftest import SECRET_KEY

    if redis_server.proc is None:
        redis_server.start()
    database = f"sqlite:///{tmp_path / 'g.db'}"
    engine = create_engine(database)
    Base.metadata.create_all(engine)
    engine.dispose()
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "REDIS_URL": redis_server.url,
        "SECRET_KEY": SECRET_KEY,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "GATEHOUSE_LOG_LEVEL": "ERROR",
    }
    return env, database


FLASK_CLI = [sys.executable, "-m", "flask", "--app", "wsgi"]


def cli_standard_source(env: dict[str, str], slug: str) -> str:
    """`flask sources add <slug> --kind standard` run as an operator runs it; its secret."""
    added = subprocess.run(
        [*FLASK_CLI, "sources", "add", slug, "--kind", "standard", "--crm", "keap"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(w for w in added.split() if w.startswith("whsec_"))
