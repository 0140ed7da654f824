"""`make chaos`: real processes, real crashes; nothing accepted may be lost or applied twice.

    python -m bench.chaos                                   # 10,000 events, 2,000 members, 5 kills
    python -m bench.chaos --events 1000 --members 200 --kills 1

Starts redis-server, gunicorn with the app and two workers on loopback, posts a generated
workload over every source kind (30% duplicate deliveries, shuffled), and meanwhile
SIGKILLs workers, stops and restarts Redis (without persistence: the restart loses the
queue, which the sweep must recover from) and SIGKILLs and restarts gunicorn. Then it
waits for the inbox to drain and compares every member with an ORACLE.

Every source kind has a generator (`GENERATORS`): `standard` and Keap `genpass` provision
members; every kind changes tags (snapshots, adds, removes, HubSpot property flags, Keap REST
hooks fetched from a fake Keap API started here); Stripe and ClickFunnels post subscription
lifecycles (Stripe Checkout links a customer by email or `metadata.contact_id`).

The oracle is a pure-Python model of the documented semantics (docs/reliability.md,
docs/billing.md), not the handlers run again: every stored event, in (occurred_at,
external_id) order; a tag is present iff its latest assertion (explicit add/remove of it, or
a full snapshot) says so; a member exists iff a provisioning event for its contact exists; a
subscription has the status of its newest assertion, a final one outranking time, and
belongs to the member its events name (its CRM contact, or any hint of its customer) once
that member exists; access is the rules' pure `evaluate()` over that state. Keap campaign
posts have no clock of their own, so their order is the server's receive time: the oracle
takes `occurred_at` from the stored row for every event, and checks for every kind with an
event id that what was stored is what the generator meant.

Exit status 0 only when lost = 0, doubled = 0 and divergent = 0.
"""

from __future__ import annotations

import argparse
import base64
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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
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
from gatehouse.access.rules import (
    MemberState,
    Rules,
    SubscriptionState,
    evaluate,
    parse_rules_text,
)
from gatehouse.devtools import StubKeapApi
from gatehouse.extensions import db
from gatehouse.models import Event, Member, Source, Subscription
from gatehouse.webhooks.senders import SENDERS
from gatehouse.webhooks.senders.keap_http_post import make_key
from gatehouse.webhooks.senders.keap_rest_hook import hook_url_query as rest_hook_query

# Signed by the providers' own libraries, with the helpers the tests use (not copies).
from tests.billing.stripe_helpers import sign as stripe_sign
from tests.billing.stripe_helpers import stripe_event
from tests.webhooks.senders.test_clickfunnels import cf_headers as clickfunnels_headers
from tests.webhooks.senders.test_ghl import pem
from tests.webhooks.senders.test_hubspot import v3_headers as hubspot_v3_headers

RESULTS = ROOT / "bench" / "results" / "chaos-latest.json"
DONE = ("processed", "skipped", "unmatched")
TAGS = [str(t) for t in range(101, 113)]
CRM = "keap"


# ---- the workload -------------------------------------------------------------------------


@dataclass
class Planned:
    """One event as a sender means it; `build` makes a delivery of it (signed at send time).

    `expect` holds the canonical fields the stored row must have (checked after the run), so
    each sender's translation is checked against what the generator meant, not assumed.
    """

    kind: str
    contact: str
    build: Callable[[], Req]
    meaning: dict[str, Any]
    external_id: str | None = None  # when the sender has one
    source: str = ""
    expect: dict[str, Any] | None = None


@dataclass
class Workload:
    secrets: dict[str, str]  # slug -> secret
    start: datetime
    span: float  # seconds the senders' own event times are spread over
    rng: random.Random
    ghl_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    port: int = 0  # gunicorn's, known once it listens: HubSpot signs the URL it calls
    # What the fake Keap API holds for each contact (tag ids); fixed for the run.
    keap_truth: dict[str, list[str]] = field(default_factory=dict)
    # Subscriptions already started per contact and provider, so later events continue them.
    subs: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def at(self) -> datetime:
        # Whole milliseconds: HubSpot's clock has no finer unit, and ties are broken by id.
        at = self.start + timedelta(seconds=self.rng.uniform(0, self.span))
        return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_req(path: str, body: bytes, headers: dict[str, str]) -> Req:
    # Lower-cased so a helper's own Content-Type is not sent a second time.
    merged = {"content-type": "application/json", **{k.lower(): v for k, v in headers.items()}}
    return Req("POST", path, merged, body)


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def email_of(contact: str) -> str:
    return f"member{contact}@example.com"


def gen_standard(w: Workload, n: int, contact: str, provision: bool) -> Planned:
    slug = "std"
    msg_id = f"chaos_{n}"
    event: dict[str, Any] = {"occurred_at": _iso(w.at()), "contact": {"id": contact}}
    if provision:
        event["type"] = "member.provision"
        event["contact"]["email"] = email_of(contact)
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
    expect = {"type": event["type"], "tags": event.get("tags"), "tag": event.get("tag")}
    return Planned(
        "standard",
        contact,
        lambda: standard_request(slug, secret, msg_id, event),
        event,
        external_id=msg_id,
        source=slug,
        expect=expect,
    )


def gen_keap_http_post(w: Workload, n: int, contact: str, provision: bool) -> Planned:
    slug = "keap"
    secret = w.secrets[slug]
    form: dict[str, str] = {"contactId": contact}
    extra: dict[str, str] = {}
    if provision or w.rng.random() < 0.25:
        command = "genpass"
        form["Email"] = email_of(contact)
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
    return Planned("keap-http-post", contact, lambda: req, meaning, source=slug)


def gen_hubspot(w: Workload, n: int, contact: str, provision: bool) -> Planned:
    """A contact property change: `gatehouse_tag_<t>` or the portal-user flag, true/false."""
    slug = "hubspot"
    secret = w.secrets[slug]
    tag = w.rng.choice([*TAGS, "hs_portal_user"])
    prop = tag if tag == "hs_portal_user" else f"gatehouse_tag_{tag}"
    value = w.rng.choice(("true", "false"))
    item = {
        "eventId": n,
        "subscriptionId": 12348,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": int(w.at().timestamp() * 1000),
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
        "objectId": int(contact),
        "propertyName": prop,
        "propertyValue": value,
        "changeSource": "CRM_UI",
        "sourceId": "userId:4012",
    }
    body = _dumps([item])

    def build() -> Req:
        uri = f"http://127.0.0.1:{w.port}/hooks/{slug}"
        return _json_req(f"/hooks/{slug}", body, hubspot_v3_headers(secret, body, uri=uri))

    kind = "contact.tag_added" if value == "true" else "contact.tag_removed"
    return Planned(
        "hubspot",
        contact,
        build,
        item,
        external_id=f"62515:{n}",
        source=slug,
        expect={"type": kind, "tags": None, "tag": tag},
    )


def gen_ghl(w: Workload, n: int, contact: str, provision: bool) -> Planned:
    """HighLevel sends the contact's whole tag list: a snapshot (ContactTagUpdate/Update)."""
    slug = "ghl"
    kind = w.rng.choice(("ContactTagUpdate", "ContactUpdate"))
    at = w.at()
    tags = sorted(w.rng.sample(TAGS, w.rng.randint(0, 5)))
    payload = {
        "type": kind,
        "locationId": "ve9EPM428h8vShlRW1KT",
        "id": contact,
        "email": email_of(contact),
        "firstName": "Member",
        "lastName": contact,
        "tags": tags,
        "dateAdded": "2026-01-05T10:00:00.000Z",
        "dateUpdated": _iso(at),
        "customFields": [],
        "webhookId": f"chaos-ghl-{n}",
        "timestamp": _iso(at),
    }
    body = _dumps(payload)
    signature = base64.b64encode(w.ghl_key.sign(body)).decode()
    req = _json_req(f"/hooks/{slug}", body, {"x-ghl-signature": signature})
    canonical_type = "contact.tags_set" if kind == "ContactTagUpdate" else "contact.updated"
    return Planned(
        "ghl",
        contact,
        lambda: req,
        payload,
        external_id=f"chaos-ghl-{n}",
        source=slug,
        expect={"type": canonical_type, "tags": tags, "tag": None},
    )


def _cf_request(w: Workload, payload: dict[str, Any]) -> Callable[[], Req]:
    slug = "clickfunnels"
    secret = w.secrets[slug]
    body = _dumps(payload)
    return lambda: _json_req(f"/hooks/{slug}", body, clickfunnels_headers(secret, body))


def gen_clickfunnels(w: Workload, n: int, contact: str, provision: bool) -> Planned:
    """Applied tags, contact snapshots, and (half the time) a subscription's lifecycle."""
    if w.rng.random() < 0.5:
        return _cf_subscription(w, n, contact)
    event_id = f"chaos-cf-{n}"
    at = _iso(w.at())
    kind = w.rng.choice(
        ("contact/applied_tag.created", "contact/applied_tag.deleted", "contact.updated")
    )
    if kind == "contact.updated":
        tags = sorted(w.rng.sample(TAGS, w.rng.randint(0, 5)))
        data: dict[str, Any] = {
            "id": int(contact),
            "public_id": f"C{contact}",
            "email_address": email_of(contact),
            "first_name": "Member",
            "last_name": contact,
            "updated_at": at,
            "tags": [{"id": int(t), "name": f"Tag {t}", "color": "#c9a227"} for t in tags],
        }
        expect: dict[str, Any] = {"type": "contact.updated", "tags": tags, "tag": None}
        subject = ("Contact", int(contact))
    else:
        tag = w.rng.choice(TAGS)
        data = {
            "id": 550000 + n,
            "contact_id": int(contact),
            "tag_id": int(tag),
            "created_at": at,
            "tag": {"id": int(tag), "name": f"Tag {tag}", "color": "#c9a227"},
            "contact": {"id": int(contact), "email_address": email_of(contact)},
        }
        added = kind.endswith(".created")
        expect = {
            "type": "contact.tag_added" if added else "contact.tag_removed",
            "tags": None,
            "tag": tag,
        }
        subject = ("Contacts::AppliedTag", 550000 + n)
    payload = {
        "event_id": event_id,
        "event_type": kind,
        "subject_id": subject[1],
        "subject_type": subject[0],
        "created_at": at,
        "data": data,
    }
    return Planned(
        "clickfunnels",
        contact,
        _cf_request(w, payload),
        payload,
        external_id=event_id,
        source="clickfunnels",
        expect=expect,
    )


# ClickFunnels subscription event types and the status each asserts (None: from the data).
CF_SUB_EVENTS: list[tuple[str, str | None]] = [
    ("subscription.activated", "active"),
    ("subscription.reactivated", "active"),
    ("subscription.canceled", "canceled"),
    ("subscription.churned", "canceled"),
    ("subscription.paused", "paused"),
    ("subscription.updated", None),
    ("subscription.downgraded", None),
]


def _subscription_of(w: Workload, provider: str, contact: str, make: Callable[[int], str]) -> str:
    """One of the contact's (at most two) subscriptions with this provider."""
    subs = w.subs.setdefault((provider, contact), [])
    if not subs or (len(subs) < 2 and w.rng.random() < 0.15):
        subs.append(make(len(subs)))
    return w.rng.choice(subs)


def _cf_subscription(w: Workload, n: int, contact: str) -> Planned:
    sub_id = _subscription_of(
        w, "clickfunnels", contact, lambda k: str(770000 + int(contact) * 2 + k)
    )
    product = 6601 + int(sub_id) % 2
    event_type, status = w.rng.choice(CF_SUB_EVENTS)
    at = _iso(w.at())
    data: dict[str, Any] = {
        "id": int(sub_id),
        "public_id": f"S{sub_id}",
        "workspace_id": 41012,
        "contact_id": int(contact),
        "currency": "USD",
        "total_amount": "49.00",
        "next_charge_at": "2026-12-22T09:05:00.000Z",
        "line_items": [{"id": 90000 + n, "product_id": product, "price_id": 7701, "quantity": 1}],
        "contact": {"id": int(contact), "email_address": email_of(contact)},
    }
    if status is None:
        data["service_status"] = w.rng.choice(("active", "past_due", "paused", "unpaid"))
    payload = {
        "event_id": f"chaos-cf-{n}",
        "event_type": event_type,
        "subject_id": int(sub_id),
        "subject_type": "Orders::Subscription",
        "created_at": at,
        "data": data,
    }
    expected_status = status or CF_STATUS[data["service_status"]]
    return Planned(
        "clickfunnels",
        contact,
        _cf_request(w, payload),
        payload,
        external_id=f"chaos-cf-{n}",
        source="clickfunnels",
        expect={
            "type": "subscription.updated",
            "id": sub_id,
            "status": expected_status,
            # Churned has ended for good; a canceled one may still be reactivated.
            "final": event_type == "subscription.churned",
        },
    )


CF_STATUS = {"active": "active", "past_due": "past_due", "paused": "paused", "unpaid": "unpaid"}

# Stripe event types the generator sends, with the subscription status each asserts.
STRIPE_SUB_STATUSES = ("active", "trialing", "past_due", "unpaid", "paused", "incomplete")


def gen_stripe(w: Workload, n: int, contact: str, provision: bool) -> Planned:
    """Subscription lifecycle, invoices and Checkout: customer `cus_chaos<contact>`.

    The first event of a customer is its Checkout session (linking it by the member's
    email, or by `metadata.contact_id`); the rest are subscription and invoice events.
    """
    slug = "stripe"
    secret = w.secrets[slug]
    customer = f"cus_chaos{contact}"
    first = (slug, contact) not in w.subs
    sub_id = _subscription_of(w, slug, contact, lambda k: f"sub_chaos{contact}x{k}")
    product = "prod_gold" if sub_id.endswith("x0") else "prod_silver"
    event_id = f"evt_chaos{n}"
    created = int(w.at().timestamp())
    roll = w.rng.random()
    if first or roll < 0.15:
        name, stripe_type = "checkout.session.completed__subscription", "checkout.session.completed"
        paid = w.rng.random() < 0.9
        obj: dict[str, Any] = {
            "id": f"cs_chaos{n}",
            "customer": customer,
            "subscription": sub_id,
            "payment_status": "paid" if paid else "unpaid",
            "customer_details": {"email": email_of(contact), "name": f"Member {contact}"},
            "metadata": {"contact_id": f"{CRM}:{contact}"} if w.rng.random() < 0.3 else {},
        }
        status = "active" if paid else "incomplete"
    elif roll < 0.35:
        failed = w.rng.random() < 0.5
        name = "invoice.payment_failed__renewal"
        stripe_type = "invoice.payment_failed" if failed else "invoice.paid"
        obj = {
            "id": f"in_chaos{n}",
            "customer": customer,
            "customer_email": email_of(contact),
            "subscription": sub_id,
            "billing_reason": "subscription_cycle",
        }
        status = "past_due" if failed else "active"
    else:
        status = w.rng.choice((*STRIPE_SUB_STATUSES, "canceled"))
        if status == "canceled":
            stripe_type = "customer.subscription.deleted"
        elif status == "paused":
            stripe_type = "customer.subscription.paused"
        else:
            stripe_type = w.rng.choice(
                ("customer.subscription.created", "customer.subscription.updated")
            )
        name = "customer.subscription.created__active"
        obj = {"id": sub_id, "customer": customer, "status": status, "metadata": {}}
    event = stripe_event(name, id=event_id, created=created, type=stripe_type, obj=obj)
    items = event["data"]["object"].get("items") or event["data"]["object"].get("lines")
    if items:  # the fixture's line names its own subscription and product
        items["data"][0]["subscription"] = sub_id
        items["data"][0]["price"]["product"] = product
    payload = json.dumps(event)

    def build() -> Req:
        return _json_req(
            f"/hooks/{slug}", payload.encode(), {"stripe-signature": stripe_sign(payload, secret)}
        )

    return Planned(
        "stripe",
        contact,
        build,
        event,
        external_id=event_id,
        source=slug,
        expect={
            "type": "subscription.updated",
            "id": sub_id,
            "status": status,
            "final": status == "canceled",
        },
    )


def gen_keap_rest_hook(w: Workload, n: int, contact: str, provision: bool) -> Planned:
    """`contact.edit` naming the contact; the worker fetches it from the (fake) Keap API."""
    slug = "keap-rest"
    secret = w.secrets[slug]
    w.keap_truth.setdefault(contact, sorted(w.rng.sample(TAGS, w.rng.randint(0, 5))))
    stamp = _iso(w.at())
    event_key = w.rng.choice(("contact.add", "contact.edit"))
    payload = {
        "event_key": event_key,
        "object_type": "contact",
        "object_keys": [
            {
                "id": int(contact),
                "apiUrl": f"https://api.infusionsoft.com/crm/rest/v1/contacts/{contact}",
                "timestamp": stamp,
            }
        ],
        "api_url": "",
    }
    body = _dumps(payload)
    req = _json_req(f"/hooks/{slug}?{rest_hook_query(secret, slug)}", body, {})
    return Planned(
        "keap-rest-hook",
        contact,
        lambda: req,
        payload,
        external_id=f"{event_key}:{contact}:{stamp}",
        source=slug,
        expect={"type": "contact.fetch", "tags": None, "tag": None},
    )


# Adding a source kind = one function above and one line here (plus its source in `SOURCES`).
GENERATORS: dict[str, Callable[[Workload, int, str, bool], Planned]] = {
    "standard": gen_standard,
    "keap-http-post": gen_keap_http_post,
    "hubspot": gen_hubspot,
    "ghl": gen_ghl,
    "clickfunnels": gen_clickfunnels,
    "stripe": gen_stripe,
    "keap-rest-hook": gen_keap_rest_hook,
}
SOURCES = {
    "standard": "std",
    "keap-http-post": "keap",
    "hubspot": "hubspot",
    "ghl": "ghl",
    "clickfunnels": "clickfunnels",
    "stripe": "stripe",
    "keap-rest-hook": "keap-rest",
}
# Every contact source shares the `keap` namespace, so events of every kind interleave on the
# same contacts; Stripe customers live in their own, as in production.
SOURCE_CRMS = {"stripe": "stripe"}
# Kinds that create members; the others only change contacts, tags and subscriptions.
PROVISIONING = ("standard", "keap-http-post")


def plan(
    members: int, events: int, dup_rate: float, w: Workload, kinds: list[str]
) -> tuple[list[Planned], list[Planned]]:
    """Every member is provisioned once (by a random provisioning kind); the rest are tag,
    contact and billing events of every kind."""
    planned: list[Planned] = []
    provisioners = [k for k in kinds if k in PROVISIONING] or kinds
    for i in range(1, members + 1):
        kind = w.rng.choice(provisioners)
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

Key = tuple[datetime, str]  # (occurred_at, external_id): the order of assertions


@dataclass
class OracleContact:
    provisioned: bool = False
    email: str | None = None
    snapshot: tuple[Key, frozenset[str]] | None = None
    explicit: dict[str, tuple[Key, bool]] = field(default_factory=dict)

    def tags(self) -> set[str]:
        out = set()
        for tag in set(TAGS) | set(self.explicit):
            best: tuple[Key, bool] | None = None
            if self.snapshot is not None:
                best = (self.snapshot[0], tag in self.snapshot[1])
            ex = self.explicit.get(tag)
            if ex is not None and (best is None or ex[0] > best[0]):
                best = ex
            if best is not None and best[1]:
                out.add(tag)
        return out


@dataclass
class OracleSubscription:
    """A subscription as docs/billing.md defines it, from all its assertions at once."""

    provider: str
    id: str
    assertions: list[tuple[Key, dict[str, Any]]] = field(default_factory=list)
    customers: set[str] = field(default_factory=set)
    contacts: set[str] = field(default_factory=set)  # the events' own CRM contacts

    def status(self) -> str:
        # A final status outranks time; otherwise the newest assertion's status.
        _, data = max(self.assertions, key=lambda a: (bool(a[1].get("final")), a[0]))
        return str(data["status"])

    def product(self) -> str | None:
        named = [(key, data["product"]) for key, data in self.assertions if data.get("product")]
        return str(max(named)[1]) if named else None

    def past_due_since(self) -> datetime | None:
        if self.status() != "past_due":
            return None
        good = [key for key, data in self.assertions if data["status"] != "past_due"]
        newest_good = max(good) if good else None
        run = [
            key
            for key, data in self.assertions
            if data["status"] == "past_due" and (newest_good is None or key > newest_good)
        ]
        return min(run)[0] if run else None


@dataclass
class Model:
    contacts: dict[str, OracleContact]
    subscriptions: dict[tuple[str, str], OracleSubscription]
    # (provider, customer) -> keap contacts its billing events name (email, metadata)
    hints: dict[tuple[str, str], set[str]]

    def owner(self, sub: OracleSubscription) -> str | None:
        """The keap contact whose member holds the subscription, or None (unmatched).

        The customer is linked by any of its events' hints once the member exists (the
        promise: any processing order ends the same, so a hint counts whenever it is seen).
        """
        named = set(sub.contacts)
        for customer in sub.customers:
            named |= self.hints.get((sub.provider, customer), set())
        owners = {c for c in named if self.contacts.get(c, OracleContact()).provisioned}
        if len(owners) > 1:
            raise AssertionError(f"the workload named two members for {sub.provider}:{sub.id}")
        return owners.pop() if owners else None

    def subscriptions_of(self, contact: str) -> list[OracleSubscription]:
        return [s for s in self.subscriptions.values() if self.owner(s) == contact]


def oracle(rows: list[dict[str, Any]], keap_truth: dict[str, list[str]]) -> Model:
    contacts: dict[str, OracleContact] = defaultdict(OracleContact)
    subs: dict[tuple[str, str], OracleSubscription] = {}
    hints: dict[tuple[str, str], set[str]] = defaultdict(set)
    emails: dict[str, set[str]] = defaultdict(set)
    for row in sorted(rows, key=lambda r: (r["occurred_at"], r["external_id"])):
        payload = row["payload"]
        key = (row["occurred_at"], row["external_id"])
        kind = row["type"]
        if kind == "subscription.updated":
            data = payload["subscription"]
            provider = str(data.get("provider") or row["crm"])
            sub = subs.setdefault(
                (provider, str(data["id"])), OracleSubscription(provider, str(data["id"]))
            )
            sub.assertions.append((key, data))
            if data.get("customer"):
                sub.customers.add(str(data["customer"]))
                hint = hints[(provider, str(data["customer"]))]
                if data.get("email"):
                    hint.add(f"email:{str(data['email']).lower()}")
                crm, _, contact_id = str(data.get("contact_id") or "").partition(":")
                if crm == CRM and contact_id:
                    hint.add(contact_id)
            if payload.get("contact"):
                sub.contacts.add(str(payload["contact"]["id"]))
            continue
        if "contact" not in payload:
            continue  # a type Gatehouse ignores (stored `skipped`)
        contact = contacts[str(payload["contact"]["id"])]
        if kind == "member.provision":
            contact.provisioned = True
            contact.email = payload["contact"].get("email")
            if contact.email:
                emails[contact.email.lower()].add(str(payload["contact"]["id"]))
        tags: list[str] | None = None
        if kind in ("member.provision", "contact.updated", "contact.tags_set"):
            tags = payload.get("tags")
        elif kind == "contact.fetch":
            # What the fake Keap API answers: the same for every fetch of the contact.
            tags = keap_truth.get(str(payload["contact"]["id"]))
        elif kind in ("contact.tag_added", "contact.tag_removed"):
            present = kind == "contact.tag_added"
            for tag in payload.get("tags") or [payload["tag"]]:
                ex = contact.explicit.get(tag)
                if ex is None or key > ex[0]:
                    contact.explicit[tag] = (key, present)
        if tags is not None and (contact.snapshot is None or key > contact.snapshot[0]):
            contact.snapshot = (key, frozenset(str(t) for t in tags))
    # Email hints name the member with that email (exactly one, in this workload).
    for hint in hints.values():
        for name in [h for h in hint if h.startswith("email:")]:
            hint.discard(name)
            hint |= emails.get(name.removeprefix("email:"), set())
    return Model(dict(contacts), subs, dict(hints))


def expected_subscriptions(subs: list[OracleSubscription]) -> list[dict[str, Any]]:
    return sorted(
        (
            {"provider": s.provider, "id": s.id, "product": s.product(), "status": s.status()}
            for s in subs
        ),
        key=lambda d: (d["provider"], d["id"]),
    )


def expected_access(
    rules: Rules, tags: set[str], subs: list[OracleSubscription], now: datetime
) -> dict[str, Any]:
    state = MemberState(
        status="active",
        all_access=False,
        tags=frozenset(f"{CRM}:{t}" for t in tags),
        subscriptions=tuple(
            SubscriptionState(s.product(), s.status(), s.past_due_since()) for s in subs
        ),
    )
    access = evaluate(rules, state, now)
    return {"groups": list(access.groups), "permissions": list(access.permissions)}


class FakeKeap(StubKeapApi):
    """Keap's REST API for `keap-rest-hook`: GET /contacts/<id> from the generator's truth.

    One answer in twenty is a 503, so the fetch's retry path runs during the chaos too.
    """

    def __init__(self, truth: dict[str, list[str]], seed_: int) -> None:
        self.truth = truth
        self.rng = random.Random(seed_)
        self.requests = 0
        self.unavailable = 0
        super().__init__(self._answer)

    def _answer(self, path: str, api_key: str | None) -> tuple[int, dict[str, Any]]:
        contact = self.contact_id(path)
        self.requests += 1
        if self.rng.random() < 0.05:
            self.unavailable += 1
            return 503, {"message": "Service Unavailable"}
        if api_key != KEAP_TOKEN:
            return 401, {"message": "Invalid Access Token"}
        if contact not in self.truth:
            return 404, {"message": f"Contact {contact} not found"}
        return 200, keap_contact_json(contact, self.truth[contact])


KEAP_TOKEN = "chaos-keap-token"


def keap_contact_json(contact: str, tags: list[str]) -> dict[str, Any]:
    """Shaped like tests/fixtures/keap-rest-hook/contact__api_response.json."""
    return {
        "id": int(contact),
        "given_name": "Member",
        "family_name": contact,
        "email_addresses": [{"email": email_of(contact), "field": "EMAIL1"}],
        "tag_ids": [int(t) for t in tags],
        "date_created": "2026-01-05T10:00:00.000+0000",
        "last_updated": "2026-11-22T10:00:00.000+0000",
        "owner_id": 0,
        "opt_in_reason": None,
    }


# ---- the run ------------------------------------------------------------------------------


def stored_rows(app: Any) -> list[dict[str, Any]]:
    with app.app_context():
        sources = {s.id: s for s in db.session.execute(select(Source)).scalars()}
        rows = [
            {
                "id": e.id,
                "source": sources[e.source_id].slug if e.source_id in sources else "?",
                "crm": sources[e.source_id].crm if e.source_id in sources else "?",
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
    app: Any, port: int, token: str, members: int, model: Model, rules: Rules
) -> list[dict[str, Any]]:
    """Every member against the model. A divergence is tagged `unlinked_billing` when it is
    exactly that some of the member's subscriptions are held by no member in the database
    (their events `unmatched`) and everything else, access included, matches without them:
    the one known defect (see docs/reliability.md), kept apart so no other one hides in it."""
    now = datetime.now(UTC)
    with app.app_context():
        versions = dict(db.session.execute(select(Member.id, Member.access_version)).all())
        unlinked = {
            (provider, sub_id)
            for provider, sub_id in db.session.execute(
                select(Subscription.provider, Subscription.subscription_id).where(
                    Subscription.member_id.is_(None)
                )
            )
        }
        db.session.remove()
    divergent = []
    lock = threading.Lock()
    cursor = [0]

    def check(i: int) -> None:
        contact = str(i)
        want = model.contacts.get(contact, OracleContact())
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
            subs = model.subscriptions_of(contact)
            want_subs = expected_subscriptions(subs)
            got_subs = sorted(
                (
                    {k: s[k] for k in ("provider", "id", "product", "status")}
                    for s in member["subscriptions"]
                ),
                key=lambda d: (d["provider"], d["id"]),
            )
            if got_subs != want_subs:
                problems["subscriptions"] = {"expected": want_subs, "actual": got_subs}
            if member["status"] != "active":
                problems["status"] = {"expected": "active", "actual": member["status"]}
            status, access = get_json(port, f"/api/access?contact={CRM}:{contact}", token)
            expect = expected_access(rules, want.tags(), subs, now)
            got = {k: access.get(k) for k in expect} if status == 200 else {"http": status}
            if got != expect:
                problems["access"] = {"expected": expect, "actual": got}
            elif access.get("version", 0) < versions.get(member["id"], 0):
                problems["cache_version"] = {
                    "expected": versions[member["id"]],
                    "actual": access.get("version"),
                }
            if "subscriptions" in problems and set(problems) <= {"subscriptions", "access"}:
                missing = [s for s in want_subs if s not in got_subs]
                held = [s for s in subs if (s.provider, s.id) not in unlinked]
                if (
                    all((s["provider"], s["id"]) in unlinked for s in missing)
                    and got_subs == expected_subscriptions(held)
                    and got == expected_access(rules, want.tags(), held, now)
                ):
                    problems["unlinked_billing"] = [f"{s['provider']}:{s['id']}" for s in missing]
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

    keap_truth: dict[str, list[str]] = {}
    with Stack(keep=args.keep) as stack, FakeKeap(keap_truth, seed_ + 2) as keap_api:
        print(f"Working in {stack.dir}", flush=True)
        redis = RedisProc(stack, appendonly=False).start()
        env = app_env(
            sqlite_url(stack),
            redis.url,
            KEAP_API_BASE_URL=keap_api.url,
            KEAP_API_TOKEN=KEAP_TOKEN,
            # Short timings so recovery happens within the run, not the production defaults.
            GATEHOUSE_SWEEP_INTERVAL="2",
            GATEHOUSE_SWEEP_GRACE="5",
            GATEHOUSE_JOB_TIMEOUT="10",
            GATEHOUSE_RETRY_INTERVALS="1,2,5,10",
        )
        create_schema(env["DATABASE_URL"], redis.url, env)
        app = seed.make_app(app_config(env))
        ghl_key = Ed25519PrivateKey.generate()
        secrets = seed.add_sources(
            app,
            {SOURCES[k]: k for k in kinds},
            crms={SOURCES[k]: crm for k, crm in SOURCE_CRMS.items()},
            public_keys={SOURCES["ghl"]: pem(ghl_key)},
        )
        token = seed.add_reader_token(app)
        seed.load_rules(app, seed.CHAOS_RULES)
        rules = Rules.from_dict(parse_rules_text(seed.CHAOS_RULES), version=1)

        # Events that carry their own time get one spread over the expected posting time,
        # so they interleave with Keap posts (whose time is their arrival).
        span = max(10.0, args.events * (1 + args.duplicates) / 150)
        workload = Workload(secrets, datetime.now(UTC), span, rng, ghl_key, keap_truth=keap_truth)
        planned, deliveries = plan(args.members, args.events, args.duplicates, workload, kinds)

        web, port = start_gunicorn(stack, "wsgi:app", env, name="web")
        workload.port = port
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
        report = evaluate_run(
            app, port, token, args, planned, deliveries, answers, rules, keap_truth
        )
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
                "keap_api_requests": keap_api.requests,
                "keap_api_503s": keap_api.unavailable,
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
    keap_truth: dict[str, list[str]],
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
    # Refusals by kind, with one answer each: a generator or sender mistake shows here.
    refused: dict[str, dict[str, Any]] = {}
    for p, answer in zip(deliveries, answers, strict=True):
        if answer is not None and answer.status not in (200, 202):
            entry = refused.setdefault(f"{p.kind} {answer.status}", {"count": 0})
            entry["count"] += 1
            entry.setdefault("example", answer.body.decode(errors="replace")[:300])
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
    # What was stored must be what the generator meant: each sender's translation is checked.
    meant = {(p.source, p.external_id): p for p in planned if p.external_id and p.expect}
    mismatched = []
    for row in rows:
        key = (row["source"], row["external_id"])
        sent = meant.pop(key) if key in meant else None
        if sent is None or sent.expect is None:
            continue
        if row["type"] == "subscription.updated":
            data = row["payload"]["subscription"]
            got = {
                "type": row["type"],
                "id": data.get("id"),
                "status": data.get("status"),
                "final": bool(data.get("final")),
            }
        else:
            got = {
                "type": row["type"],
                "tags": row["payload"].get("tags"),
                "tag": row["payload"].get("tag"),
            }
        if got != sent.expect:
            mismatched.append(
                {"id": row["id"], "kind": sent.kind, "meant": sent.expect, "stored": got}
            )
    not_stored = [f"{source}:{ext}" for source, ext in meant]
    with app.app_context():
        per_email = db.session.execute(
            select(Member.email, func.count()).group_by(Member.email).having(func.count() > 1)
        ).all()
        db.session.remove()
    doubled: list[dict[str, Any]] = [{"email": e, "members": int(n)} for e, n in per_email]
    model = oracle(rows, keap_truth)
    divergent = compare(app, port, token, args.members, model, rules)
    return {
        "events_planned": len(planned),
        "posted": len(deliveries),
        "answers": dict(statuses),
        "refused": refused,
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
        "planned_not_stored": len(not_stored),
        "planned_not_stored_detail": not_stored[:20],
        "subscriptions": len(model.subscriptions),
        "subscriptions_unmatched_by_oracle": sum(
            1 for sub in model.subscriptions.values() if model.owner(sub) is None
        ),
        "event_kinds": dict(Counter(p.kind for p in planned)),
        "members_compared": args.members,
        "divergent": len(divergent),
        "divergent_unlinked_billing": sum(1 for d in divergent if "unlinked_billing" in d),
        "divergent_members": divergent[:50],
        "oracle": "pure-Python model of the documented semantics (see bench/chaos.py)",
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
        "divergent_unlinked_billing",
        "mismatched_payloads",
        "planned_not_stored",
        "subscriptions",
        "subscriptions_unmatched_by_oracle",
        "worker_kills",
        "worker_exits_on_their_own",
        "redis_restarts",
        "gunicorn_restarts",
        "drain_seconds",
        "keap_api_requests",
        "keap_api_503s",
    ):
        print(f"{name:<28} {report[name]}")
    print(f"{'answers':<28} {report['answers']}")
    print(f"{'event statuses':<28} {report['event_statuses']}")
    print(f"{'event kinds':<28} {report['event_kinds']}")
    for what, entry in report["refused"].items():
        print(f"refused {what}: {entry['count']}, e.g. {entry['example']}")
    for what in ("lost_events", "divergent_members", "doubled_detail", "mismatched_detail"):
        if report.get(what):
            print(f"\n{what} (first {len(report[what])}):")
            for item in report[what][:10]:
                print(f"  {json.dumps(item, default=str)}")
    if report.get("logs_dir"):
        print(f"\nLogs and database kept in {report['logs_dir']}")


if __name__ == "__main__":
    sys.exit(main())
