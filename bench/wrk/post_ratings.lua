-- POST /ratings with a new (gameId, userId) every request, so each is a 201 create.
-- args: RUN_ID TOKEN GAMES [GAME_PREFIX, default "g"]: games PREFIX0 .. PREFIX(GAMES-1)
dofile(string.gsub(debug.getinfo(1, "S").source:sub(2), "[^/]*$", "") .. "report.lua")

local counter = 0
function init(args)
  run_id, token, games = args[1], args[2], tonumber(args[3])
  prefix = args[4] or "g"
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
end

function request()
  counter = counter + 1
  local body = string.format('{"gameId":"%s%d","userId":"%s-%d-%d","score":%d}',
    prefix, counter % games, run_id, thread_id, counter, counter % 5 + 1)
  return wrk.format("POST", "/ratings", headers, body)
end
