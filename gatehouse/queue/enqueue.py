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
    the way RQ's serializer does it) and the times filled in, inside Redis (`_ENQUEUE_JOBS`).
    What lands in Redis is exactly what RQ writes: tests/queue/test_lean_enqueue.py compares
    the two field by field and checks that RQ's Job.fetch, the registries and a real worker
    read it, so an RQ upgrade that changes the format fails there rather than in production.
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
        self.header = self._header()
        self.script = queue.connection.register_script(_ENQUEUE_JOBS)  # no round trip

    def data(self, event_id: str) -> bytes:
        # What Job.data + Job.to_dict produce: the serialized call, zlib-compressed.
        raw = self.serializer.dumps((self.func_name, None, (event_id,), self.kwargs))
        return zlib.compress(raw)

    def _header(self) -> list[Any]:
        """The recorded commands as the script's header: per command whether it is sent once
        per batch, its length, then per argument (kind, value, suffix). An argument holding
        the stand-in id is sent split around it, and the script puts each event's id in."""
        header: list[Any] = [len(self.commands_recorded)]
        for command in self.commands_recorded:
            name = command[0]
            # The queue's entry in rq:queues is added once per batch, as RQ does.
            header += [1 if name == "SADD" else 0, len(command)]
            field: Any = None
            for i, arg in enumerate(command):
                kind, value, suffix = _CONST, arg, ""
                if name == "HSET" and i >= 2 and i % 2 == 0:
                    field = arg
                elif name == "HSET" and i >= 3 and field == "data":
                    kind = _DATA
                elif name == "HSET" and i >= 3 and field in TIME_FIELDS:
                    kind = _STAMP
                elif isinstance(arg, str) and TEMPLATE_ID in arg:
                    kind = _ID
                    value, _, suffix = arg.partition(TEMPLATE_ID)
                header += [kind, value, suffix]
        return header

    def script_args(self, event_ids: Sequence[str]) -> list[Any]:
        """`_ENQUEUE_JOBS`'s arguments for these events: the header once, then per event
        its id and its serialized call. RQ's commands are put together inside Redis, so the
        client sends two values per event instead of the forty of RQ's four commands."""
        args: list[Any] = [utcformat(now()), *self.header]
        for event_id in event_ids:
            args += [event_id, self.data(event_id)]
        return args


_CONST, _DATA, _STAMP, _ID = 0, 1, 2, 3


# Runs RQ's recorded commands for each event, as one atomic unit: like MULTI/EXEC (no other
# client sees a job without its queue entry), but one command and one reply. ARGV: the
# time, the header (`JobTemplate._header`), then id and data per event.
_ENQUEUE_JOBS = """
local stamp = ARGV[1]
local commands = {}
local pos = 3
for c = 1, tonumber(ARGV[2]) do
  local once, length = ARGV[pos] == "1", tonumber(ARGV[pos + 1])
  pos = pos + 2
  local slots = {}
  for k = 1, length do
    slots[k] = {tonumber(ARGV[pos]), ARGV[pos + 1], ARGV[pos + 2]}
    pos = pos + 3
  end
  commands[c] = {once, slots}
end
local first = true
while pos < #ARGV do
  local id, data = ARGV[pos], ARGV[pos + 1]
  pos = pos + 2
  for _, command in ipairs(commands) do
    if first or not command[1] then
      local args = {}
      for k, slot in ipairs(command[2]) do
        local kind = slot[1]
        if kind == 0 then args[k] = slot[2]
        elseif kind == 1 then args[k] = data
        elseif kind == 2 then args[k] = stamp
        else args[k] = slot[2] .. id .. slot[3] end
      end
      redis.call(unpack(args))
    end
  end
  first = false
end
return 1
"""


def job_template(app: Flask | None = None) -> JobTemplate:
    app = app or current_app
    template: JobTemplate | None = app.extensions.get("gatehouse.job_template")
    if template is None:
        template = JobTemplate(get_queue(app), job_data(TEMPLATE_ID, app))
        app.extensions["gatehouse.job_template"] = template
    return template


def enqueue_events(
    event_ids: Sequence[str], app: Flask | None = None, client: redis.Redis | None = None
) -> bool:
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
        template.script(keys=[], args=template.script_args(event_ids), client=client)
    except redis.RedisError as exc:
        log.warning("queue.enqueue_failed", extra={"events": len(event_ids), "error": str(exc)})
        return False
    return True


def enqueue_call(func: str, *args: object, job_id: str | None = None, timeout: int = 3600) -> str:
    """Queue a maintenance job (recompute, replay); raises if Redis is down."""
    job = get_queue().enqueue(func, *args, job_id=job_id, job_timeout=timeout, result_ttl=3600)
    return str(job.id)
