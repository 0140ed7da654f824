"""How many web and queue workers a host runs unless told otherwise, by database.

Measured on the 2-core hosts this is built on (docs/benchmarks.md, "Three web workers and two
queue workers on PostgreSQL"):

- SQLite: two web workers and one queue worker. Every writer takes turns at the one write
  lock, so a third web worker adds no inserts, and a second queue worker took more from the
  web than it added (at half the ingest maximum the web answered 0.66-0.72x of the posts
  offered with two, 0.91-1.00x with one).
- PostgreSQL: three web workers and two queue workers. A web worker waits for its commit's
  log flush for about half of each request, so with two the machine sat about a fifth idle
  and a third fills it. The queue workers write in parallel: with one, the worker kept up
  with about 1,000-1,050 posts/s beside the web, less than half of what three web workers
  accept; two kept up with 1,100-1,150 with the lag p99 under 170 ms.

gunicorn.conf.py takes the web count (WEB_CONCURRENCY overrides it), `make run` starts that
many queue workers, and the benchmark measures the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


@dataclass(frozen=True)
class Layout:
    web: int
    queue: int


LAYOUTS: dict[str, Layout] = {
    "sqlite": Layout(web=2, queue=1),
    "postgresql": Layout(web=3, queue=2),
}


def layout_for(database_url: str) -> Layout:
    try:
        backend = make_url(database_url).get_backend_name()
    except ArgumentError:
        # The app says what is wrong with the URL when it starts; not this file's to report.
        backend = ""
    return LAYOUTS.get(backend, LAYOUTS["sqlite"])
