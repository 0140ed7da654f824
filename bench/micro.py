"""In-process microbenchmark of the two hot requests: CPU per request, no HTTP server.

    python -m bench.micro                 # ingest and reads, 2,000 requests each
    python -m bench.micro --n 5000 --profile ingest
    python -m bench.micro --batch 16      # the posted events are then applied in batches

The events the ingest posted (single-tag events) are then applied in-process, half through
`handlers.tag_batch` and half through the ORM handlers, by `jobs.process_events` in batches
of `--batch`: CPU per event of each (the cache writes after each batch included).

On a machine shared with other work, wrk figures swing 2x between runs; the time one
request costs inside the WSGI app is steadier, and it is what the server-side work sets.
Each request is made as a WSGI environ and passed to the app directly (as gunicorn would),
with a real redis-server and a SQLite file, exactly like `bench.run`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import seed
from bench.common import RedisProc, Stack, app_config, app_env, create_schema, sqlite_url
from bench.load import Req, standard_request


def environ(req: Req) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": req.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": req.path.split("?")[0],
        "QUERY_STRING": req.path.partition("?")[2],
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(req.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
        "CONTENT_LENGTH": str(len(req.body)),
    }
    for k, v in req.headers.items():
        name = k.upper().replace("-", "_")
        if name == "CONTENT_TYPE":
            env["CONTENT_TYPE"] = v
        else:
            env[f"HTTP_{name}"] = v
    return env


def call(app: Any, req: Req) -> int:
    status: list[str] = []

    def start_response(s: str, _h: Any, _exc: Any = None) -> Callable[[bytes], None]:
        status.append(s)
        return lambda _b: None

    body = app(environ(req), start_response)
    for _ in body:
        pass
    if hasattr(body, "close"):
        body.close()
    return int(status[0].split()[0])


def timed(app: Any, reqs: list[Req], expect: int, profile: bool) -> float:
    """CPU milliseconds per request (of this process: the server's own work, not waits)."""
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    start = time.process_time()
    for r in reqs:
        code = call(app, r)
        if code != expect:
            raise RuntimeError(f"{r.method} {r.path} answered {code}, expected {expect}")
    took = time.process_time() - start
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats(os.environ.get("BENCH_SORT", "cumulative")).print_stats(45)
    return took / len(reqs) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--profile", default="", help="ingest or reads: print a cProfile")
    parser.add_argument("--batch", type=int, default=16, help="events per applied batch")
    parser.add_argument("--database-url", default="", help="e.g. postgresql+psycopg://…/bench")
    args = parser.parse_args(argv)
    with Stack() as stack:
        rds = RedisProc(stack).start()
        env = app_env(args.database_url or sqlite_url(stack), rds.url)
        create_schema(env["DATABASE_URL"], rds.url, env)
        app = seed.make_app(app_config(env))
        secret = seed.add_sources(app, {"bench": "standard"})["bench"]
        token = seed.add_reader_token(app)
        seed.load_rules(app)
        members = seed.seed_members(app, args.members)
        rng = random.Random(3)
        posts = [
            standard_request(
                "bench",
                secret,
                f"msg_{i}",
                {
                    "type": "contact.tag_added",
                    "contact": {"id": str(rng.randint(1, args.members))},
                    "tag": rng.choice(seed.TAG_POOL),
                },
            )
            for i in range(args.n + 200)
        ]
        auth = {"authorization": f"Bearer {token}"}
        reads = [
            Req("GET", f"/api/members/{rng.choice(members)}/access", auth) for _ in range(args.n)
        ]
        timed(app, posts[:200], 202, False)  # warm up: connections, caches, compiled SQL
        timed(app, reads[:200], 200, False)  # first reads fill the access cache
        for r in reads:
            call(app, r)
        ingest = timed(app, posts[200:], 202, args.profile == "ingest")
        read = timed(app, reads, 200, args.profile == "reads")
        from bench.hello import app as hello

        hello_post = timed(hello, posts[200:], 202, False)
        hello_get = timed(hello, reads, 200, False)
        for name, ms, base in (("ingest", ingest, hello_post), ("reads", read, hello_get)):
            print(f"{name:7} {ms:.3f} ms CPU/request; hello {base:.3f} ms; ratio {base / ms:.2f}x")
        lean, orm = applied(app, args.batch)
        print(f"apply   {lean:.3f} ms CPU/event lean; ORM {orm:.3f} ms; ratio {orm / lean:.2f}x")
    return 0


def applied(app: Any, batch: int) -> tuple[float, float]:
    """CPU milliseconds per event applied by `jobs.process_events`, lean and through the ORM,
    each on half of the queued events (alternate batches, so both see the same state)."""
    from sqlalchemy import select

    from gatehouse.extensions import db
    from gatehouse.handlers.jobs import process_events
    from gatehouse.models import Event

    with app.app_context():
        ids = list(
            db.session.execute(
                select(Event.id).where(Event.processed_at.is_(None)).order_by(Event.id)
            ).scalars()
        )
        db.session.remove()
        took = {True: 0.0, False: 0.0}
        count = {True: 0, False: 0}
        for n, start in enumerate(range(0, len(ids), batch)):
            chunk, lean = ids[start : start + batch], n % 2 == 0
            began = time.process_time()
            process_events(chunk, lean=lean)
            took[lean] += time.process_time() - began
            count[lean] += len(chunk)
    return took[True] / count[True] * 1000, took[False] / count[False] * 1000


if __name__ == "__main__":
    raise SystemExit(main())
