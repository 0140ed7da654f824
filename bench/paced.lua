-- wrk script: send pre-built requests (file format as requests.lua) once each, paced at a
-- fixed rate, and record when each answer arrived, on the clock Python's perf_counter
-- reads (CLOCK_MONOTONIC), one line per answer: status \t time \t body.
-- Arguments: request file, rate (requests/s), output file. One wrk thread: the pacing is
-- then one schedule for every connection.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } gh_timespec;
int clock_gettime(int clk_id, gh_timespec *tp);
]]
local ts = ffi.new("gh_timespec")
-- This script's directory: the shared reader sits next to it.
local read_requests = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "request_file.lua")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local reqs = {}
local idx = 0
local slot = 0
local interval, start, out

function init(args)
  reqs = read_requests(args[1], function(_) return true end)
  interval = 1 / tonumber(args[2])
  out = io.open(args[3], "w")
  out:setvbuf("line") -- the run ends with a signal: nothing may wait in a buffer
  start = now()
end

-- Called before every request of a connection (its first included): the wait, in ms,
-- until the next free slot of the schedule. A connection that finds every slot taken
-- waits past the end of the run, so nothing but our requests is ever sent.
function delay()
  slot = slot + 1
  if slot > #reqs then return 100000000 end
  local wait = start + slot * interval - now()
  if wait <= 0 then return 0 end
  return math.floor(wait * 1000 + 0.5)
end

local verified = false

function request()
  -- wrk calls request() once on the first thread's state before the run, to check it:
  -- that call gets a request that is never sent, not one of ours.
  if not verified then
    verified = true
    return wrk.format("GET", "/__paced_verify")
  end
  idx = idx + 1
  return reqs[idx]
end

function response(status, headers, body)
  local line = (string.gsub(body or "", "[\r\n]", " ")) -- one answer a line
  out:write(status, "\t", string.format("%.6f", now()), "\t", line, "\n")
end

function done(summary, latency, requests)
  io.write(string.format(
    '\nWRKJSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, '
    .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, '
    .. '"mean_us": %.1f, "wrapped_threads": 0}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
