"""What RQ writes when a batch of jobs is taken, starts and finishes, in one script call each.

RQ's per-job methods (`Execution.create`, `Job.prepare_for_execution`, `Job._handle_success`,
`cleanup_execution`, ...) write 12 commands per job when it starts and 14 when it finishes,
the finish including the whole job hash again. Sent through a pipeline, building, packing and
parsing those commands cost the worker about 0.4 ms of CPU per event, as much as applying
the event. Here the same commands run inside Redis (`_START`, `_FINISH`): the client sends
the few values that differ per job, and the keys, which it takes from RQ's own key functions.

The scripts write exactly what RQ's methods write, values and expiries included:
tests/queue/test_batch_worker.py compares a batch's started and finished state with stock
RQ's, field by field, so an RQ upgrade that changes either fails there. Each script is
atomic, as RQ's MULTI/EXEC pipelines are.
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

import redis
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import as_text, current_timestamp, now, utcformat
from rq.worker import BaseWorker

# ARGV: the worker's name and its executions key, the execution TTL (the wip registry's
# score offset), the execution index's TTL, the time as RQ's string and as its float, the
# wip registry's key, the intermediate list's key ("" when RQ does not use one), the
# started status; then per job: job key, job id, execution id, execution key, execution
# index key, composite key.
_START = """
local worker_name, worker_executions = ARGV[1], ARGV[2]
local ttl, index_ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local stamp, stamp_float = ARGV[5], ARGV[6]
local wip, intermediate, started = ARGV[7], ARGV[8], ARGV[9]
local wip_score, index_score = ARGV[10], ARGV[11]
for i = 12, #ARGV, 6 do
  local job_key, job_id, execution_id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local execution_key, index_key, composite = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  redis.call("HSET", execution_key, "id", execution_id, "job_id", job_id,
    "created_at", stamp_float, "last_heartbeat", stamp_float, "worker_name", worker_name)
  redis.call("EXPIRE", execution_key, ttl)
  redis.call("ZADD", index_key, index_score, execution_id)
  redis.call("EXPIRE", index_key, index_ttl)
  redis.call("ZADD", wip, wip_score, composite)
  redis.call("SADD", worker_executions, composite)
  redis.call("EXPIRE", worker_executions, index_ttl)
  redis.call("HSET", job_key, "last_heartbeat", stamp, "status", started,
    "started_at", stamp, "worker_name", worker_name)
  redis.call("PERSIST", job_key)
  if intermediate ~= "" then
    redis.call("LREM", intermediate, 1, job_id)
  end
end
return 1
"""

# ARGV: the worker's key, its executions key, its name, how many jobs finished, their
# working time, the finished status, the finished registry's key, the wip registry's
# key; then per job: job key, job id, result TTL, the finished registry's score, ended at
# (RQ's string), results key, return value, execution id, execution started and ended at
# (floats), dependents key, dependencies key, execution key, execution index key,
# composite key.
_FINISH = """
local worker_key, worker_executions, worker_name = ARGV[1], ARGV[2], ARGV[3]
redis.call("HINCRBY", worker_key, "successful_job_count", ARGV[4])
redis.call("HINCRBYFLOAT", worker_key, "total_working_time", ARGV[5])
local finished, registry, wip = ARGV[6], ARGV[7], ARGV[8]
for i = 9, #ARGV, 15 do
  local job_key, job_id, ttl = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local results_key, execution_id = ARGV[i + 5], ARGV[i + 7]
  redis.call("HSET", job_key, "status", finished, "ended_at", ARGV[i + 4])
  redis.call("XADD", results_key, "MAXLEN", "~", "10", "*", "type", "1",
    "worker_name", worker_name, "return_value", ARGV[i + 6], "execution_id", execution_id,
    "execution_started_at", ARGV[i + 8], "execution_ended_at", ARGV[i + 9])
  redis.call("EXPIRE", results_key, ttl)
  redis.call("ZADD", registry, ARGV[i + 3], job_id)
  redis.call("EXPIRE", job_key, ttl)
  redis.call("EXPIRE", ARGV[i + 10], ttl)
  redis.call("EXPIRE", ARGV[i + 11], ttl)
  redis.call("DEL", ARGV[i + 12])
  redis.call("ZREM", wip, ARGV[i + 14])
  redis.call("ZREM", ARGV[i + 13], execution_id)
  redis.call("SREM", worker_executions, ARGV[i + 14])
end
return 1
"""


# KEYS: the queue, the intermediate list ("" when RQ does not use one). ARGV: how many, the
# job key prefix, then the job hash fields to read. What RQ's dequeue does for one job
# (LMOVE into the intermediate list, or LPOP), for up to that many, in one call: a pipeline
# of 49 LMOVEs cost Redis and the worker as much when the queue held two jobs. Each moved
# id comes back with those fields of its hash (all nil: the job is gone).
_TAKE = """
local out = {}
local prefix = ARGV[2]
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
for _ = 1, tonumber(ARGV[1]) do
  local id
  if KEYS[2] ~= "" then
    id = redis.call("LMOVE", KEYS[1], KEYS[2], "LEFT", "RIGHT")
  else
    id = redis.call("LPOP", KEYS[1])
  end
  if not id then break end
  out[#out + 1] = id
  out[#out + 1] = redis.call("HMGET", prefix .. id, unpack(fields))
end
return out
"""

# What a batch reads of a job taken by `take`: `worker.batchable` (the function, result
# TTL, success callback, repeats, dependencies), its arguments and timeout, the heartbeat's
# registry (origin). Not the dates, descriptions, meta or failure settings: Job.restore spent
# most of its time parsing the dates (five strptime calls a job), and a job that leaves the
# batch path is read again in full (`GatehouseWorker._full`).
TAKEN_FIELDS = (
    "data",
    "origin",
    "timeout",
    "result_ttl",
    "success_callback_name",
    "dependency_ids",
    "repeats_left",
)


def _float(moment: datetime) -> str:
    # What redis-py sends for the float RQ passes (`repr`), so the stored text is the same.
    return repr(moment.timestamp())


class BatchWrites:
    """The two scripts, for one worker."""

    def __init__(self, connection: redis.Redis) -> None:
        # redis-py's Script sends EVALSHA and loads the script on NOSCRIPT (a restarted Redis).
        self._start = connection.register_script(_START)
        self._finish = connection.register_script(_FINISH)
        self._take = connection.register_script(_TAKE)

    def take(
        self, queue_key: str, intermediate_key: str | None, count: int
    ) -> list[tuple[str, dict[str, bytes] | None]]:
        """Up to `count` job ids off the queue's head, moved as RQ's dequeue moves one, each
        with its hash's `TAKEN_FIELDS` (None for a job deleted meanwhile)."""
        reply = self._take(
            keys=[queue_key, intermediate_key or ""],
            args=[count, Job.redis_job_namespace_prefix, *TAKEN_FIELDS],
        )
        taken: list[tuple[str, dict[str, bytes] | None]] = []
        for job_id, values in zip(reply[::2], reply[1::2], strict=True):
            fields = {k: v for k, v in zip(TAKEN_FIELDS, values, strict=True) if v is not None}
            taken.append((as_text(job_id), fields if "data" in fields else None))
        return taken

    def start(
        self,
        jobs: Sequence[Job],
        worker: BaseWorker,
        execution_ttl: int,
        wip_key: str,
        intermediate_key: str | None,
    ) -> list[Execution]:
        """What `Execution.create` + `Worker.prepare_job_execution` write per job (the
        worker's own state and heartbeat are the caller's). The jobs in memory are updated
        as those methods update them, and the executions registered with the worker."""
        moment = now()
        stamp = utcformat(moment)
        index_ttl = execution_ttl + 60
        worker_name = worker.name
        second = current_timestamp()
        args: list[Any] = [
            worker_name,
            worker.executions_key,
            execution_ttl,
            index_ttl,
            stamp,
            _float(moment),
            wip_key,
            intermediate_key or "",
            JobStatus.STARTED.value,
            second + execution_ttl,
            second + index_ttl,
        ]
        executions = []
        for job in jobs:
            execution = Execution(uuid4().hex, job.id, job.connection, worker_name=worker_name)
            execution.created_at = execution.last_heartbeat = moment
            worker.executions[execution.id] = execution
            executions.append(execution)
            job.worker_name = worker_name
            job.last_heartbeat = job.started_at = moment
            job._status = JobStatus.STARTED
            args += [
                job.key,
                job.id,
                execution.id,
                execution.key,
                ExecutionRegistry.key_template.format(job.id),
                execution.composite_key,
            ]
        self._start(keys=[], args=args)
        return executions

    def finish(
        self,
        done: Sequence[tuple[Job, Execution]],
        values: Sequence[Any],
        worker: BaseWorker,
        finished_key: str,
        wip_key: str,
    ) -> None:
        """What `Worker.handle_job_success` writes per job whose result is kept
        (`result_ttl` > 0), including the worker's counters."""
        ended = now()
        stamp, ended_float = utcformat(ended), _float(ended)
        working = timedelta()
        rows: list[Any] = []
        for (job, execution), value in zip(done, values, strict=True):
            ttl = job.get_result_ttl(worker.default_result_ttl)
            assert job.started_at is not None and ttl > 0
            job.ended_at = ended
            job._result = value
            job._status = JobStatus.FINISHED
            working += ended - job.started_at
            rows += [
                job.key,
                job.id,
                ttl,
                current_timestamp() + ttl,
                stamp,
                Result.get_key(job.id),
                b64encode(job.serializer.dumps(value)).decode(),
                execution.id,
                _float(execution.created_at),
                ended_float,
                job.dependents_key,
                job.dependencies_key,
                execution.key,
                ExecutionRegistry.key_template.format(job.id),
                execution.composite_key,
            ]
            worker.executions.pop(execution.id, None)
        args: list[Any] = [
            worker.key,
            worker.executions_key,
            worker.name,
            len(done),
            working.total_seconds(),
            JobStatus.FINISHED.value,
            finished_key,
            wip_key,
            *rows,
        ]
        self._finish(keys=[], args=args)
