"""`make chaos`: real processes, real crashes; nothing accepted may be lost or applied twice.

    python -m bench.chaos                                   # 10,000 events, 2,000 members, 5 kills
    python -m bench.chaos --events 1000 --members 200 --kills 1

Starts redis-server, gunicorn with the app and two workers on loopback, posts a generated
workload over every source kind (30% duplicate deliveries, shuffled), and meanwhile
SIGKILLs workers, stops and restarts Redis (without persistence: the restart loses the
queue, which the sweep must recover from) and SIGKILLs and restarts gunicorn. Then it
waits for the inbox to drain and compares every member with an ORACLE.

The oracle is a pure-Python model of the documented semantics (docs/reliability.md), not
the handlers run again: every stored event, in (occurred_at, external_id) order; a tag is
present iff its latest assertion (explicit add/remove of it, or a full snapshot) says so;
a member exists iff a provisioning event for its contact exists; access is the rules'
pure `evaluate()` over that state. Keap campaign posts have no clock of their own, so
their order is the server's receive time: the oracle takes `occurred_at` from the stored
row for every event, and for `standard` events checks it against what was sent.

Exit status 0 only when lost = 0, doubled = 0 and divergent = 0.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import func, select

from bench import seed
from bench.common import (
    ROOT,
    Proc,
    RedisProc,
    Stack,
    app_config,
    app_env,
    create_schema,
    dump_json,
    flask_cli,
    sqlite_url,
    start_gunicorn,
    start_worker,
)
from bench.load import Answer, Req, post_all, standard_request
from gatehouse.access.rules import MemberState, Rules, evaluate, parse_rules_text
from gatehouse.extensions import db
from gatehouse.models import Event, Member, Source
from gatehouse.webhooks.senders import SENDERS
from gatehouse.webhooks.senders.keap_http_post import make_key

RESULTS = ROOT / "bench" / "results" / "chaos-latest.json"
DONE = ("processed", "skipped", "unmatched")
TAGS = [str(t) for t in range(101, 113)]
CRM = "keap"


# ---- the workload -------------------------------------------------------------------------


@dataclass
class Planned:
    """One event as a sender means it; `build` makes a delivery of it (signed at send time)."""

    kind: str
    contact: str
    build: Callable[[], Req]
    meaning: dict[str, Any]
    external_id: str | None = None  # when the sender has one


@dataclass
class Workload:
    secrets: dict[str, str]  # slug -> secret
    start: datetime
    span: float  # seconds the standard events' occurred_at are spread over
    rng: random.Random


def gen_standard(w: Workload, n: int, contact: str, provision: bool) -> Planned:
    slug = "std"
    msg_id = f"chaos_{n}"
    at = w.start + timedelta(seconds=w.rng.uniform(0, w.span))
    event: dict[str, Any] = {
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "contact": {"id": contact},
    }
    if provision:
        event["type"] = "member.provision"
        event["contact"]["email"] = f"member{contact}@example.com"
        if w.rng.random() < 0.5:
            event["tags"] = sorted(w.rng.sample(TAGS, w.rng.randint(0, 4)))
    else:
        kind = w.rng.choice(("contact.tags_set", "contact.tag_added", "contact.tag_removed"))
        event["type"] = kind
        if kind == "contact.tags_set":
            event["tags"] = sorted(w.rng.sample(TAGS, w.rng.randint(0, 5)))
        else:
            event["tag"] = w.rng.choice(TAGS)
    secret = w.secrets[slug]
    return Planned(
        "standard",
        contact,
        lambda: standard_request(slug, secret, msg_id, event),
        event,
        external_id=msg_id,
    )


def gen_keap_http_post(w: Workload, n: int, contact: str, provision: bool) -> Planned:
    slug = "keap"
    secret = w.secrets[slug]
    form: dict[str, str] = {"contactId": contact}
    extra: dict[str, str] = {}
    if provision or w.rng.random() < 0.25:
        command = "genpass"
        form["Email"] = f"member{contact}@example.com"
        if w.rng.random() < 0.7:
            form["Groups"] = ",".join(sorted(w.rng.sample(TAGS, w.rng.randint(0, 4))))
    else:
        command = w.rng.choice(("addtag", "removetag"))
        extra["tag"] = ",".join(sorted(w.rng.sample(TAGS, w.rng.randint(1, 2))))
    path = f"/hooks/{slug}?{command}={make_key(secret, slug, command)}"
    if extra:
        path += "&" + urlencode(extra, safe=",")
    body = urlencode(form, safe=",").encode()
    req = Req("POST", path, {"content-type": "application/x-www-form-urlencoded"}, body)
    meaning = {"command": command, **form, **extra}
    return Planned("keap-http-post", contact, lambda: req, meaning)


# Adding a source kind = one function above and one line here (plus its source in `SOURCES`).
GENERATORS: dict[str, Callable[[Workload, int, str, bool], Planned]] = {
    "standard": gen_standard,
    "keap-http-post": gen_keap_http_post,
}
SOURCES = {"standard": "std", "keap-http-post": "keap"}


def plan(
    members: int, events: int, dup_rate: float, w: Workload, kinds: list[str]
) -> tuple[list[Planned], list[Planned]]:
    """Every member is provisioned once (by a random kind); the rest are tag events."""
    planned: list[Planned] = []
    for i in range(1, members + 1):
        kind = w.rng.choice(kinds)
        planned.append(GENERATORS[kind](w, len(planned), str(i), True))
    while len(planned) < events:
        kind = w.rng.choice(kinds)
        contact = str(w.rng.randint(1, members))
        planned.append(GENERATORS[kind](w, len(planned), contact, False))
    deliveries = list(planned) + [p for p in planned if w.rng.random() < dup_rate]
    w.rng.shuffle(deliveries)
    return planned, deliveries


# ---- the disruptions ----------------------------------------------------------------------


@dataclass
class Chaos:
    stack: Stack
    env: dict[str, str]
    redis: RedisProc
    web: Proc
    web_port: int
    workers: list[Proc]
    log: list[str] = field(default_factory=list)
    kills: int = 0
    worker_exits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)

    def note(self, what: str) -> None:
        line = f"[{time.perf_counter() - self.started:7.1f}s] {what}"
        self.log.append(line)
        print(line, flush=True)

    def kill_worker(self, rng: random.Random) -> None:
        with self.lock:
            k = rng.randrange(len(self.workers))
            victim = self.workers[k]
            pid = victim.pid
            victim.kill()
            self.stack.forget(victim)
            self.kills += 1
            self.note(f"SIGKILL worker {k} (pid {pid})")
            time.sleep(0.3)
            self.workers[k] = start_worker(self.stack, self.env, f"worker{k}")

    def restart_redis(self) -> None:
        self.note("stop Redis (no persistence: its queue and cache are lost)")
        self.redis.stop()
        time.sleep(2)
        self.redis.start()
        self.note("Redis started again, empty")

    def restart_web(self) -> None:
        self.note("SIGKILL gunicorn")
        self.web.kill()
        self.stack.forget(self.web)
        time.sleep(0.5)
        self.web, _ = start_gunicorn(self.stack, "wsgi:app", self.env, port=self.web_port)
        self.note("gunicorn started again")

    def supervise(self) -> None:
        """Restart workers that exit by themselves (a Redis outage ends them), as systemd would."""
        while not self.stop.wait(0.5):
            with self.lock:
                for k, proc in enumerate(self.workers):
                    if not proc.alive():
                        self.worker_exits += 1
                        self.note(f"worker {k} exited by itself; restarting it")
                        self.stack.forget(proc)
                        self.workers[k] = start_worker(self.stack, self.env, f"worker{k}")


def run_disruptions(
    chaos: Chaos, progress: Callable[[], float], kills: int, rng: random.Random
) -> None:
    """Kills at random points of the posting; Redis at ~45%, gunicorn at ~70%."""
    plan_: list[tuple[float, str]] = [(rng.uniform(0.05, 0.95), "kill") for _ in range(kills)]
    plan_ += [(0.45, "redis"), (0.7, "web")]
    plan_.sort()
    for at, what in plan_:
        while progress() < at and not chaos.stop.is_set():
            time.sleep(0.02)
        if what == "kill":
            chaos.kill_worker(rng)
        elif what == "redis":
            chaos.restart_redis()
        else:
            chaos.restart_web()


# ---- the oracle ---------------------------------------------------------------------------


@dataclass
class OracleContact:
    provisioned: bool = False
    snapshot: tuple[tuple[datetime, str], frozenset[str]] | None = None
    explicit: dict[str, tuple[tuple[datetime, str], bool]] = field(default_factory=dict)

    def tags(self) -> set[str]:
        out = set()
        for tag in set(TAGS) | set(self.explicit):
            best: tuple[tuple[datetime, str], bool] | None = None
            if self.snapshot is not None:
                best = (self.snapshot[0], tag in self.snapshot[1])
            ex = self.explicit.get(tag)
            if ex is not None and (best is None or ex[0] > best[0]):
                best = ex
            if best is not None and best[1]:
                out.add(tag)
        return out


def oracle(rows: list[dict[str, Any]]) -> dict[str, OracleContact]:
    contacts: dict[str, OracleContact] = defaultdict(OracleContact)
    for row in sorted(rows, key=lambda r: (r["occurred_at"], r["external_id"])):
        payload = row["payload"]
        contact = contacts[payload["contact"]["id"]]
        key = (row["occurred_at"], row["external_id"])
        kind = row["type"]
        if kind == "member.provision":
            contact.provisioned = True
        if kind in ("member.provision", "contact.updated", "contact.tags_set"):
            if payload.get("tags") is not None:
                if contact.snapshot is None or key > contact.snapshot[0]:
                    contact.snapshot = (key, frozenset(payload["tags"]))
        elif kind in ("contact.tag_added", "contact.tag_removed"):
            present = kind == "contact.tag_added"
            for tag in payload.get("tags") or [payload["tag"]]:
                ex = contact.explicit.get(tag)
                if ex is None or key > ex[0]:
                    contact.explicit[tag] = (key, present)
    return contacts


def expected_access(rules: Rules, tags: set[str], now: datetime) -> dict[str, Any]:
    state = MemberState(
        status="active",
        all_access=False,
        tags=frozenset(f"{CRM}:{t}" for t in tags),
        subscriptions=(),
    )
    access = evaluate(rules, state, now)
    return {"groups": list(access.groups), "permissions": list(access.permissions)}


# ---- the run ------------------------------------------------------------------------------


def stored_rows(app: Any) -> list[dict[str, Any]]:
    with app.app_context():
        slugs = dict(db.session.execute(select(Source.id, Source.slug)).all())
        rows = [
            {
                "id": e.id,
                "source": slugs.get(e.source_id, str(e.source_id)),
                "external_id": e.external_id,
                "type": e.type,
                "occurred_at": e.occurred_at,
                "status": e.status,
                "payload": e.payload,
                "attempts": e.attempts,
                "last_error": e.last_error,
                "reason": e.reason,
            }
            for e in db.session.execute(select(Event)).scalars()
        ]
        db.session.remove()
    return rows


def pending(app: Any) -> int:
    with app.app_context():
        n = db.session.execute(
            select(func.count()).select_from(Event).where(Event.status.not_in([*DONE, "failed"]))
        ).scalar_one()
        db.session.remove()
    return int(n)


def drain(app: Any, env: dict[str, str], timeout: float, chaos: Chaos) -> float:
    """Wait until no event is received/queued/processing, sweeping as an operator would."""
    start = time.perf_counter()
    last_sweep = 0.0
    while time.perf_counter() - start < timeout:
        left = pending(app)
        if left == 0:
            return time.perf_counter() - start
        if time.perf_counter() - last_sweep > 10:
            try:
                out = flask_cli(env, "events", "sweep", "--grace", "5").strip()
            except RuntimeError as exc:
                out = f"failed: {exc}"
            chaos.note(f"{left} event(s) pending; `flask events sweep`: {out}")
            last_sweep = time.perf_counter()
        time.sleep(0.5)
    return -1.0


def get_json(port: int, path: str, token: str) -> tuple[int, Any]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def compare(
    app: Any, port: int, token: str, members: int, model: dict[str, OracleContact], rules: Rules
) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    with app.app_context():
        versions = dict(db.session.execute(select(Member.id, Member.access_version)).all())
        db.session.remove()
    divergent = []
    lock = threading.Lock()
    cursor = [0]

    def check(i: int) -> None:
        contact = str(i)
        want = model.get(contact, OracleContact())
        status, body = get_json(port, f"/api/members?contact={CRM}:{contact}", token)
        found = body["members"] if status == 200 else []
        problems: dict[str, Any] = {}
        if bool(found) != want.provisioned:
            problems["exists"] = {"expected": want.provisioned, "actual": bool(found)}
        if found and want.provisioned:
            member = found[0]
            tags = sorted(f"{CRM}:{t}" for t in want.tags())
            if member["tags"] != tags:
                problems["tags"] = {"expected": tags, "actual": member["tags"]}
            if member["subscriptions"] != []:
                problems["subscriptions"] = {"expected": [], "actual": member["subscriptions"]}
            if member["status"] != "active":
                problems["status"] = {"expected": "active", "actual": member["status"]}
            status, access = get_json(port, f"/api/access?contact={CRM}:{contact}", token)
            expect = expected_access(rules, want.tags(), now)
            got = {k: access.get(k) for k in expect} if status == 200 else {"http": status}
            if got != expect:
                problems["access"] = {"expected": expect, "actual": got}
            elif access.get("version", 0) < versions.get(member["id"], 0):
                problems["cache_version"] = {
                    "expected": versions[member["id"]],
                    "actual": access.get("version"),
                }
        if problems:
            with lock:
                divergent.append({"contact": f"{CRM}:{contact}", **problems})

    def worker() -> None:
        while True:
            with lock:
                cursor[0] += 1
                i = cursor[0]
            if i > members:
                return
            check(i)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(divergent, key=lambda d: d["contact"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=10_000, help="distinct events (>= members)")
    parser.add_argument("--members", type=int, default=2_000)
    parser.add_argument("--kills", type=int, default=5, help="worker SIGKILLs while posting")
    parser.add_argument("--duplicates", type=float, default=0.3, help="share delivered twice")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--drain-timeout", type=float, default=600)
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    args = parser.parse_args(argv)
    if args.events < args.members:
        parser.error("--events must be at least --members (every member is provisioned once)")
    seed_ = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed_)
    kinds = [k for k in SENDERS if k in GENERATORS]
    missing = sorted(set(SENDERS) - set(GENERATORS))
    print(f"seed {seed_}; source kinds {kinds}", flush=True)
    if missing:
        print(f"WARNING: no generator for source kind(s) {missing}: not exercised", flush=True)

    with Stack(keep=args.keep) as stack:
        print(f"Working in {stack.dir}", flush=True)
        redis = RedisProc(stack, appendonly=False).start()
        env = app_env(
            sqlite_url(stack),
            redis.url,
            # Short timings so recovery happens within the run, not the production defaults.
            GATEHOUSE_SWEEP_INTERVAL="2",
            GATEHOUSE_SWEEP_GRACE="5",
            GATEHOUSE_JOB_TIMEOUT="10",
            GATEHOUSE_RETRY_INTERVALS="1,2,5,10",
        )
        create_schema(env["DATABASE_URL"], redis.url, env)
        app = seed.make_app(app_config(env))
        secrets = seed.add_sources(app, {SOURCES[k]: k for k in kinds})
        token = seed.add_reader_token(app)
        seed.load_rules(app)
        rules = Rules.from_dict(parse_rules_text(seed.RULES), version=1)

        # Standard events carry their own times, spread over the expected posting time so
        # they interleave with Keap posts (whose time is their arrival).
        span = max(10.0, args.events * (1 + args.duplicates) / 150)
        workload = Workload(secrets, datetime.now(UTC), span, rng)
        planned, deliveries = plan(args.members, args.events, args.duplicates, workload, kinds)

        web, port = start_gunicorn(stack, "wsgi:app", env, name="web")
        workers = [start_worker(stack, env, f"worker{k}") for k in range(2)]
        chaos = Chaos(stack, env, redis, web, port, workers)
        sent = [0]
        sent_lock = threading.Lock()

        def on_sent(_i: int) -> None:
            with sent_lock:
                sent[0] += 1

        supervisor = threading.Thread(target=chaos.supervise, daemon=True)
        supervisor.start()
        disruptor = threading.Thread(
            target=run_disruptions,
            args=(chaos, lambda: sent[0] / len(deliveries), args.kills, random.Random(seed_ + 1)),
            daemon=True,
        )
        disruptor.start()
        chaos.note(f"posting {len(deliveries)} deliveries of {len(planned)} events")
        answers = post_all(
            port, [p.build for p in deliveries], concurrency=8, on_sent=on_sent, retry_refused=60
        )
        chaos.note("posting done")
        disruptor.join()
        drained = drain(app, env, args.drain_timeout, chaos)
        chaos.note(f"drained in {drained:.1f}s" if drained >= 0 else "NOT drained in time")
        chaos.stop.set()
        supervisor.join()
        report = evaluate_run(app, port, token, args, planned, deliveries, answers, rules)
        report.update(
            {
                "seed": seed_,
                "kinds": kinds,
                "kinds_without_generator": missing,
                "worker_kills": chaos.kills,
                "worker_exits_on_their_own": chaos.worker_exits,
                "redis_restarts": 1,
                "gunicorn_restarts": 1,
                "drain_seconds": round(drained, 1),
                "timeline": chaos.log,
            }
        )
        if report["lost"] or report["divergent"]:
            report["logs_dir"] = str(stack.dir)
            stack.keep = True
    dump_json(Path(args.output), report)
    print_report(report)
    ok = report["lost"] == 0 and report["divergent"] == 0 and report["doubled_effects"] == 0
    return 0 if ok else 1


def evaluate_run(
    app: Any,
    port: int,
    token: str,
    args: argparse.Namespace,
    planned: list[Planned],
    deliveries: list[Planned],
    answers: list[Answer | None],
    rules: Rules,
) -> dict[str, Any]:
    accepted_ids: set[str] = set()
    statuses: Counter[str] = Counter()
    for answer in answers:
        if answer is None:
            statuses["no answer"] += 1
            continue
        statuses[str(answer.status)] += 1
        if answer.status in (200, 202):
            accepted_ids.update(json.loads(answer.body)["events"])
    accepted = statuses["200"] + statuses["202"]
    rows = stored_rows(app)
    by_id = {r["id"]: r for r in rows}
    lost = []
    for event_id in sorted(accepted_ids):
        row = by_id.get(event_id)
        if row is None:
            lost.append({"id": event_id, "why": "answered accepted but not in the database"})
        elif row["status"] not in DONE:
            lost.append(
                {
                    "id": event_id,
                    "source": row["source"],
                    "type": row["type"],
                    "status": row["status"],
                    "attempts": row["attempts"],
                    "last_error": row["last_error"],
                }
            )
    # What was stored must be what was sent (standard events carry their own identity).
    sent_standard = {p.external_id: p.meaning for p in planned if p.external_id}
    mismatched = []
    for row in rows:
        want = sent_standard.get(row["external_id"]) if row["source"] == "std" else None
        if want is None:
            continue
        got = {
            "type": row["type"],
            "tags": row["payload"].get("tags"),
            "tag": row["payload"].get("tag"),
        }
        if got != {"type": want["type"], "tags": want.get("tags"), "tag": want.get("tag")}:
            mismatched.append({"id": row["id"], "sent": want, "stored": got})
    with app.app_context():
        per_email = db.session.execute(
            select(Member.email, func.count()).group_by(Member.email).having(func.count() > 1)
        ).all()
        db.session.remove()
    doubled: list[dict[str, Any]] = [{"email": e, "members": int(n)} for e, n in per_email]
    model = oracle(rows)
    divergent = compare(app, port, token, args.members, model, rules)
    return {
        "events_planned": len(planned),
        "posted": len(deliveries),
        "answers": dict(statuses),
        "accepted": accepted,
        "accepted_events": len(accepted_ids),
        "stored_events": len(rows),
        "event_statuses": dict(Counter(r["status"] for r in rows)),
        "lost": len(lost),
        "lost_events": lost[:50],
        "doubled_effects": sum(int(d["members"]) - 1 for d in doubled),
        "doubled_detail": doubled[:50],
        "mismatched_payloads": len(mismatched),
        "mismatched_detail": mismatched[:20],
        "members_compared": args.members,
        "divergent": len(divergent),
        "divergent_members": divergent[:50],
        "oracle": "pure-Python latest-assertion model over the stored events (see bench/chaos.py)",
    }


def print_report(report: dict[str, Any]) -> None:
    print()
    for name in (
        "posted",
        "accepted",
        "accepted_events",
        "stored_events",
        "lost",
        "doubled_effects",
        "divergent",
        "mismatched_payloads",
        "worker_kills",
        "worker_exits_on_their_own",
        "redis_restarts",
        "gunicorn_restarts",
        "drain_seconds",
    ):
        print(f"{name:<28} {report[name]}")
    print(f"{'answers':<28} {report['answers']}")
    print(f"{'event statuses':<28} {report['event_statuses']}")
    for what in ("lost_events", "divergent_members", "doubled_detail", "mismatched_detail"):
        if report.get(what):
            print(f"\n{what} (first {len(report[what])}):")
            for item in report[what][:10]:
                print(f"  {json.dumps(item, default=str)}")
    if report.get("logs_dir"):
        print(f"\nLogs and database kept in {report['logs_dir']}")


if __name__ == "__main__":
    sys.exit(main())
