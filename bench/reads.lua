-- Read load for `python -m bench.suite`: GET one endpoint of the read API for random existing users
-- (user0 … user<N-1>, as bench/logdata.py names them).
-- Arguments (after `--`): mode (profile | at | history), users, lowest and highest `at` in epoch ms,
-- bearer token, pause in ms before each request on a connection (0: closed loop).
-- done() prints one line "BENCH_RESULT {json}" like ingest.lua.

-- The shared part (bench/wrkresult.lua), found beside this script.
package.path = (debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "?.lua;" .. package.path
local result = require("wrkresult")
setup, response, done = result.setup, result.response, result.done

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
