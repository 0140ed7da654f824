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
def worker(burst: bool, with_scheduler: bool) -> None:
    """Run a worker on the gatehouse queue, inside the app context."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    level = app.config["GATEHOUSE_LOG_LEVEL"]
    GatehouseWorker(app).work(burst=burst, with_scheduler=with_scheduler, logging_level=level)
