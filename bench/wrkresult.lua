-- What bench/ingest.lua and bench/reads.lua share: numbering wrk's threads, counting statuses, and
-- done()'s one line "BENCH_RESULT {json}" (summary, latency percentiles, statuses) that the Python
-- side parses. Each script keeps `sent` (requests it made) and `statuses` as thread globals.

local M = {}
local threads = {}
local next_id = 1

function M.setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function M.response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local function num(value)
  return string.format("%.3f", value)
end

function M.done(summary, latency, requests)
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

return M
