-- The request file `bench/load.py` writes (`write_requests`), read for wrk: one request a
-- line, METHOD \t PATH \t header\x1fheader... \t BODY. Loaded by requests.lua and
-- paced.lua with dofile; returns a function (file, keep) -> the kept lines as wrk requests,
-- `keep(n)` deciding for the n-th line (0-based).
return function(file, keep)
  local reqs = {}
  local n = 0
  for line in io.lines(file) do
    if keep(n) then
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
  return reqs
end
