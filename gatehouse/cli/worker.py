from __future__ import annotations

import signal
import threading
import time

import click
import redis
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from gatehouse.queue.relay import RelayThread, relay_all
from gatehouse.queue.worker import GatehouseWorker, freeze_startup_objects


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
    help="event jobs taken and applied per transaction [default: 150; 1 = one job at a "
    "time through RQ's own per-job path]",
)
@click.option(
    "--linger-ms",
    type=click.FloatRange(min=0),
    default=None,
    envvar="GATEHOUSE_WORKER_LINGER_MS",
    show_envvar=True,
    help="when jobs wait behind a batch's first but cannot fill it, wait until that first "
    "job has been queued this long [default: 80; 0 = take what is queued and go]",
)
def worker(
    burst: bool, with_scheduler: bool, batch_size: int | None, linger_ms: float | None
) -> None:
    """Run a worker on the gatehouse queue, inside the app context."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    level = app.config["GATEHOUSE_LOG_LEVEL"]
    freeze_startup_objects()
    while True:
        worker = GatehouseWorker(app, batch_size=batch_size, linger_ms=linger_ms)
        worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=level)
        if burst or worker.stop_signalled:
            return
        # RQ's loop gives up on some Redis failures (a timeout, an error in maintenance).
        # Under honcho or systemd one exiting process stops or flaps the rest: start again.
        click.echo("worker: the loop ended without a stop request; restarting in 2 s", err=True)
        time.sleep(2)


@click.command("relay")
@click.option("--once", is_flag=True, help="queue what is received now, then exit")
def relay(once: bool) -> None:
    """Queue received events (workers do this themselves; this runs it on its own)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if once:
        try:
            moved = relay_all(app)
        except (redis.RedisError, SQLAlchemyError) as exc:
            raise click.ClickException(
                f"could not queue the received events: {exc}. Check that Redis and the "
                "database answer (REDIS_URL, DATABASE_URL), then run it again."
            ) from None
        click.echo(f"queued {moved} received event(s)")
        return
    thread = RelayThread(app)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    thread.start()
    stop.wait()
    thread.stop()
