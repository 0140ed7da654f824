"""`flask --app wsgi worker` stops on SIGTERM, as honcho and systemd expect."""

from __future__ import annotations

import gc
import signal
import time
from typing import Any

from flask import Flask
from rq import Worker

from gatehouse.extensions import redis_client
from tests.helpers import app_process_env, repo_python


def test_worker_command_exits_on_sigterm_while_idle(app: Flask) -> None:
    proc = repo_python("-m", "flask", "--app", "wsgi", "worker", env=app_process_env(app))
    try:
        deadline = time.monotonic() + 30
        while not Worker.all(connection=redis_client.get(app)):
            assert time.monotonic() < deadline, "the worker did not start"
            assert proc.poll() is None, "the worker exited at start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_a_stop_lost_inside_the_maintenance_still_stops_the_worker(
    app: Flask, monkeypatch: Any
) -> None:
    """SIGTERM while the first maintenance queries the database: RQ raises StopRequested
    from the handler there, and if the driver turns it into a database error the
    maintenance logs it and carries on. The worker must stop before it waits on the queue."""
    from rq.exceptions import StopRequested

    from gatehouse.queue import worker as worker_module

    dequeued: list[object] = []

    def maintenance(self: worker_module.GatehouseWorker) -> None:
        try:
            self.request_stop(signal.SIGTERM, None)
        except StopRequested:  # what a swallowing caller does with it
            pass

    monkeypatch.setattr(worker_module.GatehouseWorker, "run_maintenance_tasks", maintenance)
    monkeypatch.setattr(
        worker_module.GatehouseWorker,
        "dequeue_job_and_maintain_ttl",
        lambda self, *a, **k: dequeued.append(a),
    )
    worker = worker_module.GatehouseWorker(app)
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
    assert worker.stop_signalled
    assert dequeued == []


def test_batch_size_and_linger_reach_the_worker_from_options_and_environment(
    app: Flask, monkeypatch: Any
) -> None:
    from gatehouse.cli import worker as worker_cli
    from gatehouse.queue.worker import GatehouseWorker

    made: list[GatehouseWorker] = []

    class Recorded(GatehouseWorker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(worker_cli, "GatehouseWorker", Recorded)
    runner = app.test_cli_runner()
    burst = ["worker", "--burst", "--without-scheduler"]

    by_option = runner.invoke(args=[*burst, "--batch-size", "7", "--linger-ms", "0"])
    by_env = runner.invoke(
        args=burst, env={"GATEHOUSE_WORKER_BATCH": "3", "GATEHOUSE_WORKER_LINGER_MS": "25"}
    )
    by_default = runner.invoke(args=burst)

    assert [r.exit_code for r in (by_option, by_env, by_default)] == [0, 0, 0]
    assert [(w.batch_size, w.linger) for w in made] == [(7, 0.0), (3, 0.025), (150, 0.08)]


def test_the_worker_command_leaves_its_start_up_objects_out_of_full_collections(
    app: Flask,
) -> None:
    """A full collection walking the app's ~130,000 start-up objects stopped the worker for
    60-90 ms, a few times a minute under load (docs/benchmarks.md)."""
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        result = app.test_cli_runner().invoke(args=["worker", "--burst", "--without-scheduler"])
        assert result.exit_code == 0, result.output
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
