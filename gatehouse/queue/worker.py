"""The worker: RQ's SimpleWorker (no fork per job) running inside the app context, taking
event jobs in batches.

Jobs run in the worker process itself, so the app, its database pool and its Redis
connection are set up once, not per job. Maintenance (RQ's registry cleanup plus our
sweep and the grace recompute) runs every GATEHOUSE_SWEEP_INTERVAL seconds, also while idle.

Batches. RQ's own loop dequeues one job (BLMOVE into the queue's intermediate list, as
stock RQ does). If it is an event job, up to `batch_size - 1` more are moved the same way
in one script call; if that found some but not enough for a full batch, the worker waits
until the first job has been queued for `linger` (80 ms by default) and takes again; a lone
job goes at once. Until the batch starts, its jobs are in the intermediate list exactly as
a job RQ has dequeued and not yet started is: if the worker dies there, RQ's
intermediate-queue cleanup fails them into their retry policy. Then the batch goes through
the same states RQ's per-job path writes, in one script call per step instead of a pipeline
per job (`batch_writes`, which writes what RQ's own methods write, and is tested against
them):

1. started: an Execution per job (StartedJobRegistry entry, execution hash, the worker's
   execution set), the job hash `started` with worker name and heartbeat, the job removed
   from the intermediate list;
2. the events are applied in one database transaction (`process_events`), and the cache of
   every touched member is written in one pipeline;
3. finished: status, result (the job's result_ttl), FinishedJobRegistry, executions removed,
   the worker's counters.

If the batch raises, its transaction is rolled back and each job then runs alone through
RQ's ordinary `perform_job` (its own retry, FailedJobRegistry and `on_job_failure` path),
so a poison event fails alone. Other jobs (recompute, replay) always take the ordinary path.

Crash safety. Nothing of a batch is committed until its single commit; a SIGKILL before it
leaves the events `queued` and the jobs in the StartedJobRegistry. A batch registers its
executions with a short TTL (`BATCH_TTL`) that a heartbeat thread extends while the batch
runs, so once the process is gone its entries expire within BATCH_TTL seconds, and the next
maintenance tick of any worker (RQ's StartedJobRegistry.cleanup) calls `on_job_failure`
(AbandonedJobError) and retries the jobs per their Retry policy: an abandoned batch re-runs
within BATCH_TTL + the sweep interval + the first retry interval (15 + 15 + 10 s by default).
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from flask import Flask
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import JobTimeoutException
from rq.utils import get_version, import_attribute, now
from rq.worker import SimpleWorker, WorkerStatus
from sqlalchemy.exc import SQLAlchemyError

from gatehouse.extensions import redis_client
from gatehouse.queue.batch_writes import BatchWrites
from gatehouse.queue.enqueue import PROCESS_EVENT, get_queue
from gatehouse.queue.grace import recompute_due
from gatehouse.queue.relay import RelayThread, relay_pending
from gatehouse.queue.sweep import sweep

log = logging.getLogger("gatehouse.queue")

# The queue never imports the handlers: referenced by import path, like the jobs themselves.
PROCESS_EVENTS = "gatehouse.handlers.jobs.process_events"
# Up to 150 event jobs a batch: with the web accepting about 2,000 posts/s on two cores, each
# batch's own cost (a dozen round trips, each a wait for a core on a busy host) decided how
# fast the workers went. PostgreSQL lag phase, `--only ingest,lag`: batches of 50 fell
# behind (lag p99 0.7-1.2 s at 1,800-2,000/s), of 150 kept up (docs/benchmarks.md).
DEFAULT_BATCH = 150
DEFAULT_LINGER_MS = 80.0  # a batch that is not full starts once its first job is this old
BATCH_TTL = 15  # seconds a batch's StartedJobRegistry entries live without a heartbeat
HEARTBEAT_EVERY = 5.0
# RQ's loop beats before and after each dequeue and after each job; beats closer together
# than this are not sent (the worker's key lives worker_ttl + 60 s, 480 s by default).
HEARTBEAT_MIN_GAP = 1.0


def freeze_startup_objects() -> int:
    """Leave everything the process holds after start-up out of the garbage collector's
    full passes; returns how many objects that is.

    A worker holds about 130,000 long-lived objects (the app, SQLAlchemy's and RQ's
    modules, compiled statements), and CPython's full collection walks all of them: 60-90
    ms with the worker stopped, a few times a minute under load, which every event waiting
    in that moment adds to its lag. Frozen, a full pass walks only what was made since:
    2-4 ms. The handlers are imported first, so their modules are frozen too.
    """
    import_attribute(PROCESS_EVENTS)
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def batchable(job: Job) -> bool:
    """Only plain event jobs: a result kept for a while, no success callback, no dependents,
    no repeats (enqueue_events makes none), so finishing them needs nothing beyond what
    `_finish_batch` writes."""
    return (
        job.func_name == PROCESS_EVENT
        and job.result_ttl is not None
        and job.result_ttl > 0
        and job._success_callback_name is None
        and job.repeats_left is None
        and not job._dependency_ids
    )


class TakenJob(Job):
    """A job `_take_more` read only in part (`batch_writes.TAKEN_FIELDS`): never saved whole,
    and read again in full (`GatehouseWorker._full`) before RQ's own paths get it."""


class GatehouseWorker(SimpleWorker):
    def __init__(
        self,
        app: Flask,
        batch_size: int | None = None,
        linger_ms: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.app = app
        interval = int(app.config["GATEHOUSE_SWEEP_INTERVAL"])
        kwargs.setdefault("maintenance_interval", interval)
        super().__init__([get_queue(app)], connection=redis_client.get(app), **kwargs)
        size = batch_size if batch_size is not None else app.config.get("GATEHOUSE_WORKER_BATCH")
        self.batch_size = max(1, int(size or DEFAULT_BATCH))
        self.linger = max(0.0, DEFAULT_LINGER_MS if linger_ms is None else linger_ms) / 1000
        self._process_events: Callable[..., dict[str, dict[str, Any]]] | None = None
        # Set by SIGINT/SIGTERM; RQ's own flag stays False when the stop finds it idle.
        self.stop_signalled = False
        self._relay_inline = False
        self.batch_writes = BatchWrites(self.connection)

    @property
    def dequeue_timeout(self) -> int:
        # Wake up at least once per maintenance interval so the sweep runs while idle.
        return max(1, min(self.worker_ttl - 15, int(self.maintenance_interval)))

    def _stop_before_loop(self, signum: Any, frame: Any) -> None:
        self.stop_signalled = True
        self._stop_requested = True  # RQ's loop checks it first thing

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.stop_signalled = True
        # RQ stops an idle worker by raising StopRequested from the signal handler, wherever
        # the main thread is. In the maintenance's database calls a driver interrupted
        # mid-query can turn it into a database error, which the maintenance logs and goes
        # on from: the flag, which RQ's loop reads next, still stops it.
        self._stop_requested = True
        super().request_stop(signum, frame)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        burst = bool(kwargs.get("burst", args[0] if args else False))
        # Long-running: a relay thread queues what the receive view stored while RQ's loop
        # waits on the queue. Burst (tests, `--burst`): relayed before each dequeue instead.
        relay = None if burst else RelayThread(self.app)
        self._relay_inline = burst
        if threading.current_thread() is threading.main_thread():
            # RQ registers the worker before it installs its signal handlers (and starts
            # the scheduler in between): a stop in that window would kill the process
            # with the default action instead of stopping it.
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, self._stop_before_loop)
        if relay is not None:
            relay.start()
        try:
            with self.app.app_context():
                return bool(super().work(*args, **kwargs))
        finally:
            if relay is not None:
                relay.stop()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat, in one round trip, and not more than once per HEARTBEAT_MIN_GAP
        from RQ's loop (which beats three times a batch, three commands sent one by one
        each: nine round trips a batch, each a wake-up of Redis and of this process on a
        busy machine). A beat in the caller's pipeline, or with its own timeout, is sent."""
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        last = self.last_heartbeat
        if timeout is None and last is not None:
            if (now() - last).total_seconds() < HEARTBEAT_MIN_GAP:
                return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            pipe.execute()

    def dequeue_job_and_maintain_ttl(self, *args: Any, **kwargs: Any) -> Any:
        if self._relay_inline:
            try:
                relay_pending(self.app)
            except (redis.RedisError, SQLAlchemyError) as exc:
                log.warning("relay.failed", extra={"error": str(exc)})
        return super().dequeue_job_and_maintain_ttl(*args, **kwargs)

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        try:
            sweep(self.app)
        except redis.RedisError as exc:
            log.warning("sweep.failed", extra={"error": str(exc)})
        try:
            recompute_due(self.app)
        except (redis.RedisError, SQLAlchemyError) as exc:
            log.warning("grace.failed", extra={"error": str(exc)})

    # --- batches -----------------------------------------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self.batch_size <= 1 or not batchable(job):
            super().execute_job(job, queue)
            return
        more = self._take_more(queue, self.batch_size - 1)
        if self.linger and 0 < len(more) < self.batch_size - 1:
            # Jobs were waiting behind this one, not enough for a full batch: events are
            # streaming in, so wait a moment for more. Each batch costs the worker 3-4 ms
            # of its own (RQ's bookkeeping, the commit, the cache write) whatever its size,
            # and on SQLite it holds the write turn that web inserts wait for: about 1 ms
            # a batch plus 0.1 ms an event. At 1,300 posts/s with a 10 ms wait, batches of
            # 19 kept web inserts waiting for a third of their time, and the web answered
            # 0.56-0.70x of the posts offered; with 60-80 ms, 0.88-1.0x (docs/benchmarks.md).
            # A lone job (nothing behind it: a quiet site) goes at once. The wait counts
            # from the first job's enqueue: time it already spent queued behind the last
            # batch (on PostgreSQL, where batches take longer) is not waited again, so no
            # job waits more than `linger` for a batch to fill.
            queued_for = (now() - job.enqueued_at).total_seconds() if job.enqueued_at else 0.0
            if queued_for < self.linger:
                time.sleep(self.linger - max(0.0, queued_for))
                # Only after a wait: the take above emptied the queue a moment ago.
                more += self._take_more(queue, self.batch_size - 1 - len(more))
        jobs = [job, *more]
        batch = [j for j in jobs if batchable(j)]
        others = [j for j in jobs if not batchable(j)]
        self._run_batch(batch, queue)
        for other in others:
            if (full := self._full(other)) is not None:
                super().execute_job(full, queue)

    def _uses_intermediate_queue(self) -> bool:
        # The same condition as rq's Queue.dequeue_any: LMOVE into the intermediate list.
        return len(self.queues) == 1 and get_version(self.connection) >= (6, 2, 0)

    def _take_more(self, queue: Queue, count: int) -> list[Job]:
        """Up to `count` more jobs, moved the way RQ's own dequeue moves one, one round trip.

        Each is read with only what a batch reads of it (`batch_writes.TAKEN_FIELDS`):
        Job.fetch_many read every field and parsed five dates a job, 50 µs of the worker's
        CPU a job. Such a job is never saved whole; one that leaves the batch
        path (`_full`) is read again in full first."""
        intermediate = self._uses_intermediate_queue()
        taken = self.batch_writes.take(
            queue.key, queue.intermediate_queue_key if intermediate else None, count
        )
        jobs: list[Job] = []
        gone = []
        version = self.get_redis_server_version()
        for job_id, fields in taken:
            if fields is None:
                gone.append(job_id)  # deleted meanwhile: RQ's dequeue skips it the same way
                continue
            job = TakenJob(job_id, connection=self.connection)
            job.serializer = self.serializer  # resolved once, by the worker
            job.restore(fields)
            job.redis_server_version = version
            jobs.append(job)
        if gone and intermediate:
            with self.connection.pipeline(transaction=False) as pipe:
                for job_id in gone:
                    pipe.lrem(queue.intermediate_queue_key, 1, job_id)
                pipe.execute()
        return jobs

    def _full(self, job: Job) -> Job | None:
        """The job as RQ's own paths need it (they save it whole): read again in full if
        `_take_more` read only part of it. None if it was deleted meanwhile: skipped, as
        RQ's dequeue skips a deleted job (its started-registry entry, if the batch made
        one, expires and RQ's cleanup drops it)."""
        if not isinstance(job, TakenJob):
            return job
        try:
            full = Job.fetch(job.id, connection=self.connection, serializer=self.serializer)
        except NoSuchJobError:
            log.warning("batch.job_gone", extra={"job_id": job.id})
            return None
        full.redis_server_version = job.redis_server_version
        return full

    def _start_batch(self, jobs: list[Job], queue: Queue) -> list[Execution]:
        """What prepare_execution + prepare_job_execution write per job, in one script call
        (`batch_writes`) after the worker's own state and heartbeat."""
        with self.connection.pipeline() as pipe:
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            self.heartbeat(self.worker_ttl + 60, pipeline=pipe)
            pipe.execute()
        intermediate = queue.intermediate_queue_key if self._uses_intermediate_queue() else None
        executions = self.batch_writes.start(
            jobs, self, BATCH_TTL, queue.started_job_registry.key, intermediate
        )
        self.procline(f"Processing a batch of {len(jobs)} from {queue.name}")
        return executions

    @contextmanager
    def _heartbeats(self, jobs: list[Job], executions: list[Execution]) -> Iterator[None]:
        """Keep the batch's StartedJobRegistry entries alive while this process is."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_EVERY):
                try:
                    with self.connection.pipeline(transaction=False) as pipe:
                        for job, execution in zip(jobs, executions, strict=True):
                            if execution.id in self.executions:
                                execution.heartbeat(job.started_job_registry, BATCH_TTL, pipe)
                        self.heartbeat(self.worker_ttl + 60, pipeline=pipe)
                        pipe.execute()
                except redis.RedisError as exc:
                    log.warning("batch.heartbeat_failed", extra={"error": str(exc)})

        thread = threading.Thread(target=beat, name="gatehouse-batch-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _run_batch(self, jobs: list[Job], queue: Queue) -> None:
        executions = self._start_batch(jobs, queue)
        with self._heartbeats(jobs, executions):
            if self._process_events is None:
                self._process_events = import_attribute(PROCESS_EVENTS)
            ids = [str(job.args[0]) for job in jobs]
            timeout = max(int(job.timeout or Queue.DEFAULT_TIMEOUT) for job in jobs)
            try:
                with self.death_penalty_class(timeout, JobTimeoutException, job_id=jobs[0].id):
                    results = self._process_events(ids)
            except Exception:
                # Rolled back: each job runs alone, so only a poison event fails.
                log.warning("batch.fallback", extra={"jobs": len(jobs)}, exc_info=sys.exc_info())
                results = {}
            done = [(j, e) for j, e in zip(jobs, executions, strict=True) if j.id in results]
            if done:
                self._finish_batch(done, [results[j.id] for j, _e in done], queue)
            for job, execution in zip(jobs, executions, strict=True):
                if job.id not in results and (full := self._full(job)) is not None:
                    self.perform_job(full, queue, execution)
        self.set_state(WorkerStatus.IDLE)

    def _finish_batch(
        self, done: list[tuple[Job, Execution]], values: list[dict[str, Any]], queue: Queue
    ) -> None:
        """What handle_job_success writes per job, in one script call (`batch_writes`)."""
        self.batch_writes.finish(
            done,
            values,
            self,
            queue.finished_job_registry.key,
            queue.started_job_registry.key,
        )
