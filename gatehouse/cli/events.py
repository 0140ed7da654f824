from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import redis
from flask import current_app
from flask.cli import AppGroup

from gatehouse.event_query import (
    EventFilter,
    FilterError,
    event_detail,
    event_json,
    page,
    slugs,
)
from gatehouse.extensions import db
from gatehouse.models import STATUSES, Event, Replay
from gatehouse.queue.replay import ReplayUnavailable, preview, replay_one, start_bulk
from gatehouse.queue.sweep import LOCK_SECONDS
from gatehouse.queue.sweep import sweep as run_sweep

events = AppGroup("events", help="The event inbox: list, show, replay, sweep.")


def _redis_advice(exc: Exception) -> click.ClickException:
    return click.ClickException(
        f"Redis at {current_app.config['REDIS_URL']} did not answer ({exc}). "
        "Start it (or fix REDIS_URL) and run the command again."
    )


@events.command("sweep")
@click.option(
    "--grace", type=int, default=None, help="seconds a queued event may wait (default from config)"
)
def sweep(grace: int | None) -> None:
    """Queue every event the database holds but Redis does not."""
    try:
        result = run_sweep(grace_seconds=grace)
    except redis.RedisError as exc:
        raise _redis_advice(exc) from exc
    if result.skipped_locked:
        click.echo(
            "Another sweep is running (or one was killed: its lock lapses within "
            f"{LOCK_SECONDS} s); nothing done. Run it again in a moment."
        )
        return
    click.echo(
        f"Queued {result.total} event(s): {result.received} received, "
        f"{result.lost} lost from Redis, {result.stuck} stuck in processing."
    )
    if result.errors:
        raise click.ClickException("; ".join(result.errors))


F = TypeVar("F", bound=Callable[..., Any])


def filter_options(command: F) -> F:
    for option in reversed(
        [
            click.option("--status", type=click.Choice(STATUSES), help="only in this status"),
            click.option("--source", help="only events from this source (slug)"),
            click.option("--type", "type_", help="only this type, e.g. contact.tag_added"),
            click.option("--contact", help="only events about this contact, e.g. keap:2729"),
            click.option("--since", help="received at or after (ISO 8601, UTC)"),
            click.option("--until", help="received before (ISO 8601, UTC)"),
        ]
    ):
        command = option(command)
    return command


def _filters(**raw: str | None) -> EventFilter:
    raw["type"] = raw.pop("type_", None)
    try:
        return EventFilter.parse(raw)
    except FilterError as exc:
        raise click.ClickException(str(exc)) from exc


@events.command("list")
@filter_options
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--cursor", help="the next_cursor a previous page printed")
@click.option("--json", "as_json", is_flag=True, help="print JSON like GET /api/events")
def list_events(limit: int, cursor: str | None, as_json: bool, **raw: str | None) -> None:
    """Events, newest first, with filters."""
    filters = _filters(**raw)
    try:
        rows, next_cursor = page(filters, limit, cursor)
    except FilterError as exc:
        raise click.ClickException(str(exc)) from exc
    names = slugs()
    items = [event_json(e, names) for e in rows]
    if as_json:
        click.echo(json.dumps({"events": items, "next_cursor": next_cursor}, indent=2))
        return
    for e in items:
        problem = e["last_error"] or e["reason"] or ""
        click.echo(
            f"{e['id']}  {e['received_at']}  {e['status']:<10} {e['source']:<14} "
            f"{e['type']:<22} {e['contact'] or '-':<16} {problem[:80]}"
        )
    if not items:
        click.echo("No events match.")
    if next_cursor:
        click.echo(f"More: --cursor {next_cursor}")


@events.command("show")
@click.argument("event_id")
def show(event_id: str) -> None:
    """One event with payload, headers, attempts and effects (JSON)."""
    event = db.session.get(Event, event_id)
    if event is None:
        raise click.ClickException(f"No event {event_id}. Find ids with `flask events list`.")
    click.echo(json.dumps(event_detail(event, slugs()), indent=2, default=str))


def _print_preview(result: dict[str, object]) -> None:
    click.echo(json.dumps(result, indent=2))


@events.command("replay")
@click.argument("event_id", required=False)
@filter_options
@click.option("--dry-run", is_flag=True, help="show the permission changes; change nothing")
@click.option("--wait/--no-wait", default=False, help="wait for a bulk replay to finish")
def replay(event_id: str | None, dry_run: bool, wait: bool, **raw: str | None) -> None:
    """Replay one event (EVENT_ID) or every event matching the filters."""
    filters = _filters(**raw)
    if event_id is not None:
        if filters.as_dict():
            raise click.ClickException("give either an EVENT_ID or filters, not both")
        event = db.session.get(Event, event_id)
        if event is None:
            raise click.ClickException(f"No event {event_id}. Find ids with `flask events list`.")
        if dry_run:
            _print_preview(preview(event_ids=[event_id]))
            return
        queued = replay_one(event)
        db.session.rollback()
        if not queued:
            raise _redis_advice(RuntimeError("the job could not be queued"))
        click.echo(f"Queued {event_id} again; a worker will run it.")
        return
    if not filters.as_dict():
        raise click.ClickException(
            "give an EVENT_ID or at least one filter (e.g. --status failed); "
            "replaying every event at once is rarely what you want"
        )
    if dry_run:
        _print_preview(preview(filters))
        return
    try:
        started = start_bulk(filters, "cli")
    except ReplayUnavailable as exc:
        raise _redis_advice(exc) from exc
    replay_id, matched = started.id, started.matched
    # Reading after the commit opened a transaction: on SQLite that holds the write lock.
    db.session.rollback()
    click.echo(f"Replay {replay_id}: {matched} event(s) matched.")
    if not wait or not matched:
        click.echo(f"Progress: GET /api/replays/{replay_id}")
        return
    while True:
        db.session.rollback()
        current = db.session.get(Replay, replay_id)
        assert current is not None
        if current.status in ("finished", "failed"):
            click.echo(f"{current.status}: {current.done} done, {current.failed} failed.")
            if current.failed or current.status == "failed":
                raise click.ClickException(
                    "some events failed again; see them with `flask events list --status failed`"
                )
            return
        time.sleep(1)
