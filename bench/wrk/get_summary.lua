-- GET /games/{id}/summary over a few games.  args: GAMES
dofile(string.gsub(debug.getinfo(1, "S").source:sub(2), "[^/]*$", "") .. "report.lua")

local counter = 0
function init(args)
  games = tonumber(args[1])
end

function request()
  counter = counter + 1
  return wrk.format("GET", string.format("/games/g%d/summary", counter % games))
end
