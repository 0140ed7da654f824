"""How many web and queue workers a host runs by default, per database (gatehouse.processes),
and that gunicorn.conf.py and `make run` both follow it."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from gatehouse.processes import LAYOUTS, layout_for
from scripts.run import queue_workers
from tests.helpers import REPO

SQLITE = "sqlite:////tmp/gatehouse.db"
POSTGRESQL = "postgresql+psycopg://gatehouse@127.0.0.1:5432/gatehouse"


@pytest.mark.parametrize(
    ("url", "backend"),
    [
        (SQLITE, "sqlite"),
        ("sqlite://", "sqlite"),
        (POSTGRESQL, "postgresql"),
        ("postgresql://gatehouse@db/gatehouse", "postgresql"),
        ("not a url", "sqlite"),  # the app reports the URL itself; the layout stays modest
    ],
)
def test_each_database_url_gets_its_backends_layout(url: str, backend: str) -> None:
    assert layout_for(url) == LAYOUTS[backend]


def test_postgresql_runs_more_web_and_queue_workers_than_sqlite() -> None:
    # SQLite's writers take turns at one lock; PostgreSQL's web workers wait on their
    # commits' log flushes and its queue workers write in parallel (docs/benchmarks.md).
    sqlite, postgresql = LAYOUTS["sqlite"], LAYOUTS["postgresql"]
    assert (sqlite.web, sqlite.queue) == (2, 1)
    assert (postgresql.web, postgresql.queue) == (3, 2)


@pytest.mark.parametrize("url", [SQLITE, POSTGRESQL])
def test_gunicorn_runs_the_databases_web_workers_unless_web_concurrency_says_otherwise(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert runpy.run_path(str(REPO / "gunicorn.conf.py"))["workers"] == layout_for(url).web
    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    assert runpy.run_path(str(REPO / "gunicorn.conf.py"))["workers"] == 5


def test_make_run_starts_the_databases_queue_workers() -> None:
    assert queue_workers({"DATABASE_URL": POSTGRESQL}) == LAYOUTS["postgresql"].queue
    assert queue_workers({"DATABASE_URL": SQLITE}) == LAYOUTS["sqlite"].queue
    # No DATABASE_URL: the app's default, SQLite in instance/.
    assert queue_workers({}) == LAYOUTS["sqlite"].queue
