-- wrk script: replay pre-built requests (pre-signed: HMAC signing in Lua is impractical).
-- File format, one request a line: METHOD \t PATH \t header\x1fheader... \t BODY
-- Thread k sends lines k, k+n, k+2n, ...; `wrapped` counts threads that ran out and cycled.
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
  local file = args[1]
  local nthreads = tonumber(args[2])
  local n = 0
  for line in io.lines(file) do
    if n % nthreads == tid then
      local method, path, hdrs, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = {}
      for h in string.gmatch(hdrs, "[^\31]+") do
        local k, v = h:match("^([^:]+): (.*)$")
        headers[k] = v
      end
      if body == "" then body = nil end
      table.insert(reqs, wrk.format(method, path, headers, body))
    end
    n = n + 1
  end
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
