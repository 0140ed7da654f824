from __future__ import annotations

import click
from flask import current_app

from gatehouse.queue.worker import GatehouseWorker


@click.command("worker")
@click.option("--burst", is_flag=True, help="process what is queued, then exit")
@click.option(
    "--with-scheduler/--without-scheduler",
    default=True,
    show_default=True,
    help="also run RQ's scheduler (retries with delays)",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    envvar="GATEHOUSE_WORKER_BATCH",
    show_envvar=True,
    help="event jobs taken and applied per transaction [default: 50; 1 = one job at a "
    "time through RQ's own per-job path]",
)
def worker(burst: bool, with_scheduler: bool, batch_size: int | None) -> None:
    """Run a worker on the gatehouse queue, inside the app context."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    level = app.config["GATEHOUSE_LOG_LEVEL"]
    GatehouseWorker(app, batch_size=batch_size).work(
        burst=burst, with_scheduler=with_scheduler, logging_level=level
    )
