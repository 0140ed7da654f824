"""`make bench`: every figure next to its baseline, measured in the same run on this machine.

    python -m bench.run                       # everything, SQLite, about 5-10 minutes
    python -m bench.run --only ingest,reads   # some of: ingest processing lag reads rules memory
    python -m bench.run --database postgresql --database-url postgresql+psycopg://…/bench
    python -m bench.run --quick               # small settings: checks the harness end to end

Writes bench/results/latest.json and prints a table. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import queue
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rq import Queue
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.utils import utcparse
from sqlalchemy import func, select

from bench import seed
from bench.common import (
    GUNICORN_CLASS,
    GUNICORN_WORKERS,
    ROOT,
    Proc,
    RedisProc,
    RssSampler,
    Stack,
    app_config,
    app_env,
    create_schema,
    dump_json,
    flask_cli,
    percentile,
    sqlite_url,
    start_gunicorn,
    start_worker,
    tool,
)
from bench.load import (
    Req,
    WrkResult,
    have_wrk,
    post_all,
    post_paced,
    run_wrk,
    standard_request,
    write_requests,
)
from gatehouse.extensions import db
from gatehouse.handlers.jobs import recompute_members
from gatehouse.models import Event, Member
from gatehouse.serving import QUEUE_WORKERS

BENCHMARKS = ("ingest", "processing", "lag", "reads", "rules", "memory")
RESULTS = ROOT / "bench" / "results" / "latest.json"
QUEUE = "gatehouse"
RECOMPUTE = "gatehouse.handlers.jobs.recompute_members"
TARGETS: dict[str, Any] = {
    "ingest_ratio": {"sqlite": 0.6, "postgresql": 0.4},
    "ingest_p99_ratio_max": 2.0,
    "processing_ratio": 2.0,
    "lag_p99_ms_max": 250,
    "reads_ratio": 0.8,
    "reads_p99_ms_max": 5,
    "rules_seconds_max": 60,
    "web_rss_mb_max": 120,
    "worker_rss_mb_max": 150,
}


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack) -> None:
        self.args = args
        self.stack = stack
        self.only = set(args.only.split(",")) if args.only else set(BENCHMARKS)
        self.results: dict[str, Any] = {}
        self.bg_workers: list[Proc] = []  # started once, by the first phase that needs them
        self.rss = RssSampler().start()
        self.redis = RedisProc(stack).start()
        self.rclient = self.redis.client()
        if args.database == "sqlite":
            self.db_url = sqlite_url(stack)
        else:
            if not args.database_url:
                raise SystemExit(
                    "--database postgresql needs --database-url postgresql+psycopg://…"
                )
            self.db_url = args.database_url
        self.env = app_env(self.db_url, self.redis.url, GATEHOUSE_RETRY_INTERVALS="10,60")
        create_schema(self.db_url, self.redis.url, self.env)
        self.app = seed.make_app(app_config(self.env))
        self.secret = seed.add_sources(self.app, {"bench": "standard"})["bench"]
        self.token = seed.add_reader_token(self.app)
        seed.load_rules(self.app)
        self.member_ids = seed.seed_members(self.app, args.members)
        self.msg = 0
        self.port = 0

    # ---- request builders -------------------------------------------------------------

    def tag_events(self, count: int, rng: random.Random) -> list[Req]:
        reqs = []
        for _ in range(count):
            self.msg += 1
            kind = rng.choice(("contact.tag_added", "contact.tag_added", "contact.tag_removed"))
            event = {
                "type": kind,
                "contact": {"id": str(rng.randint(1, self.args.members))},
                "tag": rng.choice(seed.TAG_POOL),
            }
            reqs.append(standard_request("bench", self.secret, f"msg_{self.msg}", event))
        return reqs

    def read_requests(self) -> list[Req]:
        auth = {"authorization": f"Bearer {self.token}"}
        return [Req("GET", f"/api/members/{m}/access", auth) for m in self.member_ids]

    # ---- phases -------------------------------------------------------------------------

    def baselines(self) -> None:
        """The hello-world app on the same gunicorn settings, for ingest and reads.

        For ingest it keeps running: `ingest` alternates rounds between it and the app."""
        if not self.only & {"ingest", "reads", "lag"}:
            return
        proc, port = start_gunicorn(self.stack, "bench.hello:app", self.env, name="hello")
        rng = random.Random(1)
        if self.only & {"ingest", "lag"}:
            self.hello_file = write_requests(
                self.stack.dir / "hello-post.txt", self.tag_events(5000, rng)
            )
            if "ingest" not in self.only:  # with ingest, its own rounds measure this
                self.hello_post = run_wrk(port, self.hello_file, self.args.seconds, 32)
        if "reads" in self.only:
            file = write_requests(self.stack.dir / "hello-get.txt", self.read_requests())
            self.hello_get = run_wrk(port, file, self.args.seconds, 8)
        if "ingest" in self.only:
            self.hello = (proc, port)
            return
        proc.stop()
        self.stack.forget(proc)

    def round_seconds(self) -> int:
        return max(3, self.args.seconds // 2) if self.args.rounds > 1 else self.args.seconds

    def start_web(self) -> None:
        proc, self.port = start_gunicorn(self.stack, "wsgi:app", self.env, name="web")
        self.rss.watch("web", proc)
        # The relay queues what the web stores; workers run one each, but ingest and the
        # processing drains run without workers, so it runs on its own here (its CPU is
        # part of what ingest costs).
        self.relay = self.stack.spawn("relay", [tool("flask"), "--app", "wsgi", "relay"], self.env)

    def ingest(self) -> None:
        """Rounds of hello-world then the app, alternating, on the same load.

        On these shared machines a neighbour's burst can halve a 10 s figure; a baseline
        measured minutes before the app (as this did at first) then moves the ratio by
        0.05-0.1x from one run to the next. Alternating short rounds puts both under the
        same neighbours, and the figures are pooled: requests / seconds over all rounds of
        each, latency percentiles the median of the rounds'."""
        hello_proc, hello_port = self.hello
        seconds = self.round_seconds()
        hello_rounds: list[WrkResult] = []
        app_rounds: list[WrkResult] = []
        before = self.count_events()
        for k in range(self.args.rounds):
            hello_rounds.append(run_wrk(hello_port, self.hello_file, seconds, 32))
            # Enough distinct signed requests that wrk never repeats one (a repeat is a
            # duplicate: a cheaper request), written fresh for each round.
            n = max(20000, int(hello_rounds[-1].rps * seconds * 1.5))
            file = write_requests(
                self.stack.dir / f"ingest-{k}.txt", self.tag_events(n, random.Random(2 + k))
            )
            app_rounds.append(run_wrk(self.port, file, seconds, 32))
        ended = time.perf_counter()
        stored = self.count_events() - before
        backlog = self.wait_relayed()
        relayed_s = time.perf_counter() - ended
        hello_proc.stop()
        self.stack.forget(hello_proc)
        self.hello_post = hello = pooled(hello_rounds)
        self.ingest_result = result = pooled(app_rounds)
        self.results["ingest"] = {
            "app": result.as_dict(),
            "hello": hello.as_dict(),
            "ratio": round(result.rps / hello.rps, 3),
            "p99_ratio": round(result.p99_ms / hello.p99_ms, 2),
            "rounds": [
                {"hello": h.as_dict(), "app": a.as_dict(), "ratio": round(a.rps / h.rps, 3)}
                for h, a in zip(hello_rounds, app_rounds, strict=True)
            ],
            "stored": stored,
            "queued_jobs": self.rclient.llen(f"rq:queue:{QUEUE}"),
            "received_left": backlog,
            "relay_done_s_after_load": round(relayed_s, 2),
            "repeated_requests": result.wrapped,
        }

    def wait_drained(self, timeout: float = 300) -> None:
        """Until nothing is received, queued or being processed."""
        deadline = time.monotonic() + timeout
        started = StartedJobRegistry(QUEUE, connection=self.rclient)
        while time.monotonic() < deadline:
            if (
                self.wait_relayed() == 0
                and self.rclient.llen(f"rq:queue:{QUEUE}") == 0
                and started.count == 0
            ):
                return
            time.sleep(0.2)
        raise RuntimeError("the workers did not drain the queue in time")

    def wait_relayed(self, timeout: float = 60) -> int:
        """Wait until the relay has queued every stored event; returns how many it had not."""
        deadline = time.monotonic() + timeout
        while True:
            with self.app.app_context():
                left = db.session.execute(
                    select(func.count()).select_from(Event).where(Event.status == "received")
                ).scalar_one()
                db.session.remove()
            if not left or time.monotonic() > deadline:
                return int(left)
            time.sleep(0.05)

    def count_events(self) -> int:
        with self.app.app_context():
            n = db.session.execute(select(func.count()).select_from(Event)).scalar_one()
            db.session.remove()
            return int(n)

    def job_rate(self, ids: list[str]) -> float:
        """Jobs/s from RQ's own timestamps: first start to last end."""
        with self.rclient.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(f"rq:job:{job_id}", "started_at", "ended_at")
            rows = pipe.execute()
        starts = [utcparse(s.decode()) for s, e in rows if s and e]
        ends = [utcparse(e.decode()) for s, e in rows if s and e]
        if len(starts) < len(ids):
            raise RuntimeError(f"only {len(starts)} of {len(ids)} jobs finished")
        return len(ids) / (max(ends) - min(starts)).total_seconds()

    def drain_gatehouse(self, workers: int) -> float:
        raw: list[bytes] = self.rclient.lrange(f"rq:queue:{QUEUE}", 0, -1)  # type: ignore[assignment]
        ids = [i.decode() for i in raw]
        procs = [
            start_worker(self.stack, self.env, f"burst{workers}-{k}", True) for k in range(workers)
        ]
        for p in procs:
            self.rss.watch("worker", p)
        for p in procs:
            p.wait(900)
            self.stack.forget(p)
        return self.job_rate(ids)

    def drain_stock(self, workers: int, count: int) -> float:
        queue = Queue("bench-noop", connection=self.rclient)
        jobs = [Queue.prepare_data("bench.hello.noop") for _ in range(count)]
        ids = []
        for i in range(0, count, 1000):
            with self.rclient.pipeline() as pipe:
                ids += [j.id for j in queue.enqueue_many(jobs[i : i + 1000], pipeline=pipe)]
                pipe.execute()
        argv = [
            tool("rq"),
            "worker",
            "--burst",
            "-w",
            "rq.worker.SimpleWorker",
            "--url",
            self.redis.url,
            "bench-noop",
        ]
        procs = [self.stack.spawn(f"rq{workers}-{k}", argv, self.env) for k in range(workers)]
        for p in procs:
            p.wait(900)
            self.stack.forget(p)
        return self.job_rate(ids)

    def processing(self) -> None:
        if "ingest" not in self.only:
            post_all(self.port, self.tag_events(3000, random.Random(3)), concurrency=8)
            self.wait_relayed()
        queued = self.rclient.llen(f"rq:queue:{QUEUE}")
        one = self.drain_gatehouse(1)
        stock_one = self.drain_stock(1, queued)
        # Same number of fresh events for two workers, posted with no worker running.
        posted = post_all(self.port, self.tag_events(queued, random.Random(4)), concurrency=8)
        bad = [a.status if a else None for a in posted if a is None or a.status != 202]
        if bad:
            raise RuntimeError(f"{len(bad)} posts were not accepted: {bad[:5]}")
        self.wait_relayed()
        two = self.drain_gatehouse(2)
        stock_two = self.drain_stock(2, queued)
        self.results["processing"] = {
            "jobs_per_run": queued,
            "one_worker": round(one, 1),
            "stock_one": round(stock_one, 1),
            "ratio_one": round(one / stock_one, 3),
            "two_workers": round(two, 1),
            "stock_two": round(stock_two, 1),
            "ratio_two": round(two / stock_two, 3),
        }

    def lag(self) -> None:
        """Paced posts at half the ingest maximum; time from 202 to the cache write."""
        max_rate = getattr(self, "ingest_result", None)
        rate = (max_rate.rps if max_rate else self.hello_post.rps * 0.2) / 2
        n = min(len(self.member_ids), int(rate * self.args.seconds))
        self.start_background_workers()
        # A backlog left by an earlier phase (ingest without processing) is drained first:
        # its cache writes would otherwise be taken for these events' and its queue be
        # theirs to wait behind.
        self.wait_drained()
        with self.app.app_context():
            versions = dict(db.session.execute(select(Member.id, Member.access_version)).all())
            contact_of = {
                m: str(i + 1) for i, m in enumerate(self.member_ids)
            }  # seed order = contact number
            db.session.remove()
        order = random.Random(5).sample(self.member_ids, n)
        reqs = []
        for i, mid in enumerate(order):
            event = {
                "type": "contact.tag_added",
                "contact": {"id": contact_of[mid]},
                "tag": f"lag-{i}",  # a new tag always changes the member: a cache write follows
            }
            reqs.append(standard_request("bench", self.secret, f"lag_{i}", event))
        self.rclient.config_set("notify-keyspace-events", "Kh")
        # The cache writes are watched from a process of their own: a listener thread here
        # shared the GIL with the eight posting threads, and in one run (PostgreSQL, 2,000
        # events) it saw a write 0.3 ms late at the median and 12 ms late at p99.
        with CacheWriteWatch(self.redis.url, order) as watch:
            time.sleep(2)  # workers up
            # As many connections as the ingest maximum was measured with: 8 could not carry
            # the rate once the answers took 5 ms (8 / 5 ms = 1,600 posts/s at best).
            paced = post_paced(self.port, reqs, rate, self.stack.dir, connections=32)
            written = watch.wait_for(n, timeout=60)
        accepted: dict[str, float] = {}  # event id -> when its 202 arrived
        for status, at, body in paced.answers:
            if status == 202:
                accepted[json.loads(body)["events"][0]] = at
        with self.app.app_context():
            # Each answer names its event; the event's webhook id names the post (lag_<i>).
            posted_as = {
                external_id: event_id
                for external_id, event_id in db.session.execute(
                    select(Event.external_id, Event.id).where(Event.id.in_(list(accepted)))
                )
            }
            db.session.remove()
        lags = []
        not_accepted = not_written = 0
        for i, mid in enumerate(order):
            answered = accepted.get(posted_as.get(f"lag_{i}", ""))
            if answered is None:
                not_accepted += 1
                continue
            # The write we saw must carry a newer version than before the post.
            v = self.rclient.hget(f"gatehouse:access:{mid}", "v")
            if mid not in written or v is None or int(v) <= versions[mid]:
                not_written += 1
                continue
            lags.append(max(0.0, written[mid] - answered) * 1000)
        self.results["lag"] = {
            "rate": round(rate, 1),
            "workers": len(self.bg_workers),
            # What the server took: the lag above only holds at the offered rate if it took
            # about that many posts a second (each connection waits for its answer).
            "answered_per_s": round(answered_per_s(list(accepted.values()), rate), 1),
            "post_p50_ms": round(paced.p50_ms, 1),
            "post_p99_ms": round(paced.p99_ms, 1),
            "events": n,
            "p50_ms": round(percentile(lags, 50), 1),
            "p99_ms": round(percentile(lags, 99), 1),
            "max_ms": round(max(lags), 1) if lags else None,
            "missing": not_accepted + not_written,
            "not_accepted": not_accepted,
            "not_written": not_written,
            "answers": {str(k): v for k, v in Counter(a[0] for a in paced.answers).items()},
            "wrk_errors": paced.errors,
        }

    def start_background_workers(self) -> None:
        """The deployment `make run` starts from here on (lag, rules): web and its queue
        workers (`--lag-workers`, by default `gatehouse.serving.QUEUE_WORKERS`), which
        relay. The standalone relay that ingest and the drains need is stopped: another
        relay, polling and claiming beside the workers', is one no site runs.

        Two workers since webhooks that arrive together share a commit: the ingest maximum,
        and so the lag phase's rate, about doubled, and one worker fell behind at half of it
        (gatehouse.serving, QUEUE_WORKERS). Before that, one: on SQLite a second took more
        from the web tier than it added (docs/benchmarks.md)."""
        if self.bg_workers:
            return
        self.bg_workers = [
            start_worker(self.stack, self.env, f"worker-{k}") for k in range(self.args.lag_workers)
        ]
        for w in self.bg_workers:
            self.rss.watch("worker", w)
        self.relay.stop()
        self.stack.forget(self.relay)

    def reads(self) -> None:
        with self.app.app_context():
            recompute_members(self.member_ids)  # warm cache: reads measure the cache path
        file = write_requests(self.stack.dir / "reads.txt", self.read_requests())
        result = run_wrk(self.port, file, self.args.seconds, 8)
        self.results["reads"] = {
            "app": result.as_dict(),
            "hello": self.hello_get.as_dict(),
            "ratio": round(result.rps / self.hello_get.rps, 3),
        }

    def rules(self) -> None:
        more = self.args.rules_members - len(self.member_ids)
        t = time.perf_counter()
        if more > 0:
            seed.seed_members(self.app, more, first=len(self.member_ids) + 1)
        seeded_s = time.perf_counter() - t
        self.start_background_workers()
        rules_file = self.stack.dir / "rules-v2.yaml"
        rules_file.write_text(seed.RULES_V2)
        queue = Queue(QUEUE, connection=self.rclient)
        start = time.perf_counter()
        flask_cli(self.env, "access", "load", str(rules_file))
        job = None
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            if job is None:
                ids = (
                    queue.get_job_ids()
                    + StartedJobRegistry(queue=queue).get_job_ids()
                    + FinishedJobRegistry(queue=queue).get_job_ids()
                )
                for jid in ids:
                    found = queue.fetch_job(jid)
                    if found is not None and found.func_name == RECOMPUTE:
                        job = found
                        break
            if job is not None:
                status = job.get_status(refresh=True)
                if status is not None and status.value in ("finished", "failed"):
                    break
            time.sleep(0.2)
        elapsed = time.perf_counter() - start
        self.results["rules"] = {
            "members": self.args.rules_members,
            "seconds": round(elapsed, 1),
            "status": job.get_status().value if job and job.get_status() else "not found",
            "seed_seconds": round(seeded_s, 1),
        }

    def memory(self) -> None:
        self.results["memory"] = {
            "web_worker_peak_mb": round(self.rss.peaks.get("web", 0), 1),
            "queue_worker_peak_mb": round(self.rss.peaks.get("worker", 0), 1),
        }

    def run(self) -> dict[str, Any]:
        self.baselines()
        self.start_web()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("ingest", self.ingest),
            ("processing", self.processing),
            ("lag", self.lag),
            ("reads", self.reads),
            ("rules", self.rules),
        ]
        for name, step in steps:
            if name in self.only:
                print(f"... {name}", flush=True)
                step()
        self.rss.stop()
        if "memory" in self.only:
            self.memory()
        return self.results


class CacheWriteWatch:
    """A subprocess that records when each member's access cache is written (keyspace
    notifications), on the clock `post_all` stamps its answers with."""

    def __init__(self, redis_url: str, member_ids: list[str]) -> None:
        clock = time.get_clock_info("perf_counter").implementation
        if "CLOCK_MONOTONIC" not in clock:  # on Linux, one clock for every process
            raise RuntimeError(f"perf_counter is {clock}: not comparable across processes")
        context = multiprocessing.get_context("spawn")
        self.ready = context.Event()
        self.stop = context.Event()
        self.results = context.Queue()
        self.proc = context.Process(
            target=_watch_cache_writes,
            args=(redis_url, member_ids, self.ready, self.stop, self.results),
            daemon=True,
        )

    def __enter__(self) -> CacheWriteWatch:
        self.proc.start()
        if not self.ready.wait(30):
            raise RuntimeError("the cache-write watcher did not start")
        return self

    def wait_for(self, count: int, timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        written: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                written.update(self.results.get(timeout=0.2))
            except queue.Empty:
                pass
            if len(written) >= count:
                break
        self.stop.set()
        while True:  # what it sent after the last read
            try:
                written.update(self.results.get(timeout=1.0))
            except queue.Empty:
                break
        return written

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def _watch_cache_writes(
    redis_url: str, member_ids: list[str], ready: Any, stop: Any, results: Any
) -> None:
    import redis

    listener = redis.Redis.from_url(redis_url).pubsub()
    listener.psubscribe("__keyspace@0__:gatehouse:access:*")
    prefix = len("__keyspace@0__:gatehouse:access:")
    watched = set(member_ids)  # each member's first write only
    batch: dict[str, float] = {}
    listener.get_message(timeout=1.0)  # the subscription's confirmation
    ready.set()
    last_sent = time.perf_counter()
    while not stop.is_set():
        msg = listener.get_message(timeout=0.05)
        if msg and msg["type"] == "pmessage":
            mid = msg["channel"].decode()[prefix:]
            if mid in watched:
                watched.discard(mid)
                batch[mid] = time.perf_counter()
        if batch and time.perf_counter() - last_sent > 0.2:
            results.put(batch)
            batch, last_sent = {}, time.perf_counter()
    if batch:
        results.put(batch)


def answered_per_s(answered_at: Sequence[float], rate: float) -> float:
    """Accepted posts a second: their number over the time from the first answer to the
    last, plus one interval of the offered rate (n answers span n - 1 intervals)."""
    if not answered_at:
        return 0.0
    return len(answered_at) / (max(answered_at) - min(answered_at) + 1 / rate)


def pooled(rounds: list[WrkResult]) -> WrkResult:
    """Several wrk rounds as one: requests over seconds, the median round's percentiles."""
    requests = sum(r.requests for r in rounds)
    seconds = sum(r.seconds for r in rounds)
    return WrkResult(
        requests=requests,
        seconds=seconds,
        rps=requests / seconds,
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
        errors=sum(r.errors for r in rounds),
        wrapped=any(r.wrapped for r in rounds),
    )


def machine() -> dict[str, Any]:
    return {
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in psutil.getloadavg()],
    }


def fmt_row(name: str, value: str, baseline: str, ratio: str, target: str) -> str:
    return f"{name:<28} {value:>16} {baseline:>16} {ratio:>8}  {target}"


def table(results: dict[str, Any], database: str) -> str:
    lines = [fmt_row("figure", "gatehouse", "baseline", "ratio", "target")]
    if r := results.get("ingest"):
        target = TARGETS["ingest_ratio"][database]
        lines.append(
            fmt_row(
                "ingest req/s",
                f"{r['app']['rps']:.0f}",
                f"{r['hello']['rps']:.0f}",
                f"{r['ratio']:.2f}x",
                f">= {target}x",
            )
        )
        lines.append(
            fmt_row(
                "ingest p50 / p99 ms",
                f"{r['app']['p50_ms']:.1f} / {r['app']['p99_ms']:.1f}",
                f"{r['hello']['p50_ms']:.1f} / {r['hello']['p99_ms']:.1f}",
                f"{r['p99_ratio']:.2f}x",
                "p99 <= 2x",
            )
        )
    if r := results.get("processing"):
        lines.append(
            fmt_row(
                "processing 1 worker ev/s",
                f"{r['one_worker']:.0f}",
                f"{r['stock_one']:.0f}",
                f"{r['ratio_one']:.2f}x",
                ">= 2.0x",
            )
        )
        lines.append(
            fmt_row(
                "processing 2 workers ev/s",
                f"{r['two_workers']:.0f}",
                f"{r['stock_two']:.0f}",
                f"{r['ratio_two']:.2f}x",
                ">= 2.0x",
            )
        )
    if r := results.get("lag"):
        lines.append(
            fmt_row(
                f"lag p50 / p99 ms @{r['rate']:.0f}/s, {r['workers']}w",
                f"{r['p50_ms']} / {r['p99_ms']}",
                "-",
                "-",
                "p99 <= 250 ms",
            )
        )
        lines.append(
            fmt_row(
                "lag posts answered/s, offered",
                f"{r['answered_per_s']:.0f}",
                f"{r['rate']:.0f}",
                f"{r['answered_per_s'] / r['rate']:.2f}x",
                ">= 0.95x",
            )
        )
    if r := results.get("reads"):
        lines.append(
            fmt_row(
                "access reads req/s (c=8)",
                f"{r['app']['rps']:.0f}",
                f"{r['hello']['rps']:.0f}",
                f"{r['ratio']:.2f}x",
                ">= 0.8x",
            )
        )
        lines.append(
            fmt_row(
                "access reads p99 ms",
                f"{r['app']['p99_ms']:.2f}",
                f"{r['hello']['p99_ms']:.2f}",
                "-",
                "<= 5 ms",
            )
        )
    if r := results.get("rules"):
        lines.append(
            fmt_row(
                f"rules change {r['members']:,} members s",
                f"{r['seconds']}",
                "-",
                "-",
                "<= 60 s",
            )
        )
    if r := results.get("memory"):
        lines.append(
            fmt_row("web worker peak RSS MB", f"{r['web_worker_peak_mb']}", "-", "-", "<= 120")
        )
        lines.append(
            fmt_row("queue worker peak RSS MB", f"{r['queue_worker_peak_mb']}", "-", "-", "<= 150")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}"
    )
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--database-url", default="", help="PostgreSQL URL (its tables are dropped)"
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="ingest: alternating rounds of hello-world and the app, each --seconds/2 long",
    )
    # Lag posts one event per member: 6,000 last about 4.5 s at the offered rate. With 2,000
    # (1.5 s), the start of the run weighed on the figure: the posts answered a second swung
    # 0.73-0.95x of the offered rate between runs of the same commit.
    parser.add_argument("--members", type=int, default=6000, help="members for ingest/lag/reads")
    parser.add_argument(
        "--lag-workers",
        type=int,
        default=QUEUE_WORKERS,
        help=f"queue workers during lag and rules ({QUEUE_WORKERS}: what `make run` starts)",
    )
    parser.add_argument("--rules-members", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="small settings, harness check")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.members, args.rules_members, args.rounds = 3, 300, 3000, 1
    unknown = set(filter(None, args.only.split(","))) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; pick from {BENCHMARKS}")
    if not have_wrk():
        parser.error("wrk is not installed: sudo apt-get install -y wrk")
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    with Stack(keep=args.keep) as stack:
        print(f"Working in {stack.dir}", flush=True)
        bench = Bench(args, stack)
        results = bench.run()
    report = {
        "started_at": started.isoformat(),
        "seconds": round(time.perf_counter() - t0, 1),
        "database": args.database,
        "gunicorn": {"workers": GUNICORN_WORKERS, "worker_class": GUNICORN_CLASS},
        "settings": {
            "seconds": args.seconds,
            "ingest_rounds": args.rounds,
            "members": args.members,
            "rules_members": args.rules_members,
            "lag_workers": args.lag_workers,
        },
        "machine": machine(),
        "results": results,
        "targets": TARGETS,
    }
    dump_json(Path(args.output), report)
    print(table(results, args.database))
    print(f"\n{json.dumps(report['machine'])}\nWritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
