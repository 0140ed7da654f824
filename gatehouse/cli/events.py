from __future__ import annotations

import click
from flask.cli import AppGroup

from gatehouse.queue.sweep import sweep as run_sweep

events = AppGroup("events", help="The event inbox: sweep, list, show, replay.")


@events.command("sweep")
@click.option(
    "--grace", type=int, default=None, help="seconds a queued event may wait (default from config)"
)
def sweep(grace: int | None) -> None:
    """Queue every event the database holds but Redis does not."""
    result = run_sweep(grace_seconds=grace)
    click.echo(
        f"Queued {result.total} event(s): {result.received} received, "
        f"{result.lost} lost from Redis, {result.stuck} stuck in processing."
    )
    if result.errors:
        raise click.ClickException("; ".join(result.errors))
