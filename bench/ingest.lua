-- wrk script for `python -m bench`: every request is a distinct Profile.CallbackPortraitSet delivery.
-- Arguments (after `--`): run nonce, base EventTime in ms, distinct users per thread, and optionally a
-- pause in ms before each request on a connection (paces the load; 0 or absent: closed loop).
-- done() prints one line "BENCH_RESULT {json}" with the summary, latency percentiles and statuses.

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  nonce = args[1] or "run"
  base_time = tonumber(args[2]) or 1700000000000
  users = tonumber(args[3]) or 1000
  local pause = tonumber(args[4]) or 0
  if pause > 0 then
    function delay()
      return pause
    end
  end
  sent = 0
  statuses = {}
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local template = '{"CallbackCommand":"Profile.CallbackPortraitSet","Operator_Account":"%s",'
  .. '"From_Account":"%s","EventTime":%d,"ProfileItem":['
  .. '{"Tag":"Tag_Profile_IM_Nick","Value":"nick %d"},'
  .. '{"Tag":"Tag_Profile_IM_Gender","Value":"Gender_Type_Male"},'
  .. '{"Tag":"Tag_Profile_IM_Level","Value":%d}]}'

function request()
  sent = sent + 1
  local user = string.format("b%s-t%d-u%d", nonce, thread_id, sent % users)
  local body = string.format(template, user, user, base_time + sent, sent, sent % 100)
  return wrk.format(nil, nil, nil, body)
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
