-- wrk script for `python -m bench`: every request is a distinct Profile.CallbackPortraitSet delivery.
-- Arguments (after `--`): run nonce, base EventTime in ms, distinct users per thread, and optionally a
-- pause in ms before each request on a connection (paces the load; 0 or absent: closed loop).
-- done() prints one line "BENCH_RESULT {json}" with the summary, latency percentiles and statuses.

-- The shared part (bench/wrkresult.lua), found beside this script.
package.path = (debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "?.lua;" .. package.path
local result = require("wrkresult")
setup, response, done = result.setup, result.response, result.done

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
