-- wrk script for the idres load benchmarks (benchmarks/tools.py runs it).
--
-- Spreads GET requests over a set of request paths, one per line in the file given after "--"
-- (`wrk ... -s spread.lua URL -- PATHS_FILE [OFFSET]`). Each thread walks the list round-robin from
-- its own starting point, so every identifier is asked about as often as the others and consecutive
-- requests never repeat one. done() prints one line starting with "IDRES-WRK-JSON " holding the
-- figures wrk's own summary lacks (p99.9, exact microseconds), for tools.parse_wrk() to read.

local paths = {}
local position = 1
local thread_counter = 0

function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("thread_number", thread_counter)
end

function init(args)
  local file = args[1]
  if file == nil then
    error("spread.lua needs the paths file: wrk ... -s spread.lua URL -- PATHS_FILE")
  end
  for line in io.lines(file) do
    if #line > 0 then
      paths[#paths + 1] = line
    end
  end
  if #paths == 0 then
    error("spread.lua: no paths in " .. file)
  end
  local offset = tonumber(args[2] or "0")
  local number = thread_number or 1
  -- Threads start evenly spaced over the list so they do not ask for the same identifiers at once.
  position = ((offset + math.floor((number - 1) * #paths / 8)) % #paths) + 1
end

function request()
  local path = paths[position]
  position = position + 1
  if position > #paths then
    position = 1
  end
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'IDRES-WRK-JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"stdev":%.1f,"min":%d,"max":%d,' ..
    '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p99.9":%d,"p99.99":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.min, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency:percentile(99.99)))
end
