-- POST /ratings by many users, each with a token of its own (sub = its userId, no admin
-- scope), over GAMES games: every request verifies another token and is limited per user.
-- args: TOKENS_FILE GAMES GAME_PREFIX. TOKENS_FILE: "userId token" per line.
dofile(string.gsub(debug.getinfo(1, "S").source:sub(2), "[^/]*$", "") .. "report.lua")

local counter = 0
function init(args)
  games, prefix = tonumber(args[2]), args[3]
  users, tokens = {}, {}
  for line in io.lines(args[1]) do
    local user, token = line:match("^(%S+) (%S+)$")
    table.insert(users, user)
    table.insert(tokens, token)
  end
end

function request()
  counter = counter + 1
  -- Each thread takes every other user, so no two requests share a (game, user) pair.
  local index = ((counter - 1) * 2 + thread_id) % #users + 1
  local round = math.floor(((counter - 1) * 2 + thread_id) / #users)
  local headers = {["Content-Type"] = "application/json",
                   ["Authorization"] = "Bearer " .. tokens[index]}
  local body = string.format('{"gameId":"%s%d","score":%d}',
    prefix, (index + round) % games, counter % 5 + 1)
  return wrk.format("POST", "/ratings", headers, body)
end
