-- PUT /games/{g}/ratings/{u} (the idempotent upsert) over a fixed set of pairs, so most
-- requests replace an existing rating.  args: RUN_ID TOKEN GAMES
dofile(string.gsub(debug.getinfo(1, "S").source:sub(2), "[^/]*$", "") .. "report.lua")

local counter = 0
function init(args)
  run_id, token, games = args[1], args[2], tonumber(args[3])
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
end

function request()
  counter = counter + 1
  local path = string.format("/games/g%d/ratings/%s-%d-%d",
    counter % games, run_id, thread_id, counter % 50)
  local body = string.format('{"score":%d}', counter % 5 + 1)
  return wrk.format("PUT", path, headers, body)
end
