from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from typing import Any

import redis
from flask import Flask, current_app
from rq import Callback, Queue, Retry
from rq.utils import now, utcformat

from gatehouse.extensions import redis_client

log = logging.getLogger("gatehouse.queue")

# Jobs are referenced by import path: the queue never imports the handlers.
PROCESS_EVENT = "gatehouse.handlers.jobs.process_event"
ON_FAILURE = "gatehouse.handlers.jobs.on_job_failure"
RECOMPUTE_MEMBERS = "gatehouse.handlers.jobs.recompute_members"


def get_queue(app: Flask | None = None) -> Queue:
    app = app or current_app
    queue = app.extensions.get("gatehouse.queue")
    if queue is None:
        queue = Queue(app.config["GATEHOUSE_QUEUE"], connection=redis_client.get(app))
        app.extensions["gatehouse.queue"] = queue
    return queue


def retry_policy(app: Flask | None = None) -> Retry | None:
    intervals: list[int] = (app or current_app).config["GATEHOUSE_RETRY_INTERVALS"]
    if not intervals:
        return None
    return Retry(max=len(intervals), interval=intervals)


def job_data(event_id: str, app: Flask | None = None) -> Any:
    """The `process_event` job for one event, as `Queue.enqueue_many` takes it."""
    app = app or current_app
    return Queue.prepare_data(
        PROCESS_EVENT,
        args=(event_id,),
        job_id=event_id,
        timeout=app.config["GATEHOUSE_JOB_TIMEOUT"],
        retry=retry_policy(app),
        on_failure=Callback(ON_FAILURE),
        result_ttl=600,
        failure_ttl=7 * 24 * 3600,
    )


# Stands for the event id while RQ's own commands for one job are recorded.
TEMPLATE_ID = "gatehouse-job-template-id"
# Fields RQ fills with the time of the enqueue.
TIME_FIELDS = frozenset({"created_at", "enqueued_at"})


class JobTemplate:
    """The Redis commands RQ itself sends to enqueue one `process_event` job, recorded once.

    `Queue.enqueue_many` builds a full `Job` per event (function resolution, retry and
    callback objects, `to_dict`): 2-5 ms of CPU per request on the webhook hot path, for a
    result that differs between events only in the job id, the pickled arguments and two
    timestamps. So we let RQ enqueue a job for a stand-in id into a pipeline that is never
    sent, keep its commands, and per event replay them with the id, the arguments (pickled
    the way RQ's serializer does it) and the times filled in. What lands in Redis is exactly
    what RQ writes: tests/queue/test_lean_enqueue.py compares the two field by field and
    checks that RQ's Job.fetch, the registries and a real worker read it, so an RQ upgrade
    that changes the format fails there rather than in production.
    """

    def __init__(self, queue: Queue, job_data: Any) -> None:
        self.queue = queue
        with queue.connection.pipeline() as pipe:
            jobs = queue.enqueue_many([job_data], pipeline=pipe)
            # Each entry is (command args, options); the options are only response hints.
            self.commands_recorded: list[tuple[Any, ...]] = [
                tuple(c[0]) for c in pipe.command_stack
            ]
            pipe.reset()  # nothing recorded is ever sent
        job = jobs[0]
        self.serializer = job.serializer
        self.func_name = job.func_name
        self.kwargs = job.kwargs
        self.plan: list[tuple[bool, list[tuple[int, Any]]]] | None = None

    def data(self, event_id: str) -> bytes:
        # What Job.data + Job.to_dict produce: the serialized call, zlib-compressed.
        raw = self.serializer.dumps((self.func_name, None, (event_id,), self.kwargs))
        return zlib.compress(raw)

    def _plan(self) -> list[tuple[bool, list[tuple[int, Any]]]]:
        """Each recorded command as (sent once per batch?, [(slot kind, value)]), worked out
        once so that filling in an event is a list comprehension, not a parse."""
        plan = []
        for command in self.commands_recorded:
            name = command[0]
            slots: list[tuple[int, Any]] = [(_CONST, name)]
            field: Any = None
            for i, arg in enumerate(command[1:]):
                kind = _CONST
                if name == "HSET" and i % 2 == 1:
                    field = arg
                elif name == "HSET" and i > 0 and field == "data":
                    kind = _DATA
                elif name == "HSET" and i > 0 and field in TIME_FIELDS:
                    kind = _STAMP
                if kind == _CONST and isinstance(arg, str) and TEMPLATE_ID in arg:
                    kind = _ID
                slots.append((kind, arg))
            # The queue's entry in rq:queues is added once per batch, as RQ does.
            plan.append((name == "SADD", slots))
        return plan

    def commands(self, event_ids: Sequence[str]) -> list[list[Any]]:
        """RQ's commands for these events, in RQ's order."""
        if self.plan is None:
            self.plan = self._plan()
        stamp = utcformat(now())
        out: list[list[Any]] = []
        first = True
        for event_id in event_ids:
            values = (None, self.data(event_id), stamp, event_id)
            for once, slots in self.plan:
                if once and not first:
                    continue
                out.append(
                    [
                        value
                        if kind == _CONST
                        else value.replace(TEMPLATE_ID, event_id)
                        if kind == _ID
                        else values[kind]
                        for kind, value in slots
                    ]
                )
            first = False
        return out


_CONST, _DATA, _STAMP, _ID = 0, 1, 2, 3


# Runs a list of commands as one atomic unit: [n, command and its n-1 arguments, n, ...].
# Like MULTI/EXEC (no other client sees a job without its queue entry), but one command and
# one reply instead of 2 + 2 per command: on these machines a MULTI/EXEC pipeline of RQ's
# four commands costs about 2.5x the CPU of a single command on the client side.
_RUN_ALL = """
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""


def _run_all(app: Flask, client: redis.Redis, commands: list[list[Any]]) -> None:
    script = app.extensions.get("gatehouse.run_all_script")
    if script is None:
        script = app.extensions["gatehouse.run_all_script"] = client.register_script(_RUN_ALL)
    argv: list[Any] = []
    for command in commands:
        argv.append(len(command))
        argv.extend(command)
    script(keys=[], args=argv, client=client)


def job_template(app: Flask | None = None) -> JobTemplate:
    app = app or current_app
    template: JobTemplate | None = app.extensions.get("gatehouse.job_template")
    if template is None:
        template = JobTemplate(get_queue(app), job_data(TEMPLATE_ID, app))
        app.extensions["gatehouse.job_template"] = template
    return template


def enqueue_events(event_ids: Sequence[str], app: Flask | None = None) -> bool:
    """Queue one job per event (job id = event id) in one round trip.

    The jobs are written from a `JobTemplate` (what RQ's `enqueue_many` writes, without its
    per-job cost), in one atomic script call so a job never exists without its queue entry.

    Returns False when Redis cannot be reached: the events stay in the database and the
    sweeper queues them later. Never raises for a Redis outage.
    """
    if not event_ids:
        return True
    app = app or current_app
    try:
        template = job_template(app)
        _run_all(app, template.queue.connection, template.commands(event_ids))
    except redis.RedisError as exc:
        log.warning("queue.enqueue_failed", extra={"events": len(event_ids), "error": str(exc)})
        return False
    return True


def enqueue_call(func: str, *args: object, job_id: str | None = None, timeout: int = 3600) -> str:
    """Queue a maintenance job (recompute, replay); raises if Redis is down."""
    job = get_queue().enqueue(func, *args, job_id=job_id, job_timeout=timeout, result_ttl=3600)
    return str(job.id)
