-- wrk script: replay pre-built requests (pre-signed: HMAC signing in Lua is impractical).
-- The request file: see request_file.lua, which reads it.
-- Thread k sends lines k, k+n, k+2n, ...; `wrapped` counts threads that ran out and cycled.
-- This script's directory: the shared reader sits next to it.
local read_requests = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "request_file.lua")
local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", counter)
  thread:set("wrapped", 0)
  counter = counter + 1
  table.insert(threads, thread)
end

local reqs = {}
local idx = 0

function init(args)
  local nthreads = tonumber(args[2])
  reqs = read_requests(args[1], function(n) return n % nthreads == tid end)
end

function request()
  idx = idx + 1
  if idx > #reqs then
    idx = 1
    wrapped = 1
  end
  return reqs[idx]
end

function done(summary, latency, requests)
  local wrapped_threads = 0
  for _, t in ipairs(threads) do
    wrapped_threads = wrapped_threads + (t:get("wrapped") or 0)
  end
  io.write(string.format(
    '\nWRKJSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, '
    .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, '
    .. '"mean_us": %.1f, "wrapped_threads": %d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, wrapped_threads))
end
