-- Read load for `python -m bench.suite`: GET one endpoint of the read API for random existing users
-- (user0 … user<N-1>, as bench/logdata.py names them).
-- Arguments (after `--`): mode (profile | at | history), users, lowest and highest `at` in epoch ms,
-- bearer token, pause in ms before each request on a connection (0: closed loop).
-- done() prints one line "BENCH_RESULT {json}" like ingest.lua.

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  mode = args[1] or "profile"
  users = tonumber(args[2]) or 1000
  at_low = tonumber(args[3]) or 0
  at_high = tonumber(args[4]) or at_low
  local token = args[5] or "bench"
  local pause = tonumber(args[6]) or 0
  if pause > 0 then
    function delay()
      return pause
    end
  end
  math.randomseed(os.time() * 100 + thread_id)
  sent = 0
  statuses = {}
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  sent = sent + 1
  local user = string.format("user%d", math.random(0, users - 1))
  local path
  if mode == "at" then
    local at = at_low + math.floor(math.random() * (at_high - at_low))
    path = string.format("/users/%s/profile?at=%d", user, at)
  elseif mode == "history" then
    path = string.format("/users/%s/profile-history?limit=50", user)
  else
    path = string.format("/users/%s/profile", user)
  end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local function num(value)
  return string.format("%.3f", value)
end

function done(summary, latency, requests)
  local total_sent = 0
  local merged = {}
  for _, thread in ipairs(threads) do
    total_sent = total_sent + (thread:get("sent") or 0)
    for status, count in pairs(thread:get("statuses") or {}) do
      merged[status] = (merged[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(merged) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local e = summary.errors
  io.write("BENCH_RESULT {"
    .. '"duration_us":' .. summary.duration
    .. ',"requests":' .. summary.requests
    .. ',"bytes":' .. summary.bytes
    .. ',"sent":' .. total_sent
    .. ',"errors":{"connect":' .. e.connect .. ',"read":' .. e.read .. ',"write":' .. e.write
    .. ',"status":' .. e.status .. ',"timeout":' .. e.timeout .. '}'
    .. ',"latency_us":{"min":' .. num(latency.min) .. ',"mean":' .. num(latency.mean)
    .. ',"max":' .. num(latency.max) .. ',"stdev":' .. num(latency.stdev)
    .. ',"p50":' .. num(latency:percentile(50)) .. ',"p90":' .. num(latency:percentile(90))
    .. ',"p99":' .. num(latency:percentile(99)) .. ',"p999":' .. num(latency:percentile(99.9)) .. '}'
    .. ',"statuses":{' .. table.concat(parts, ",") .. '}'
    .. "}\n")
end
