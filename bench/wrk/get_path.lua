-- GET one fixed path (/healthz, /ratings/{id}, a summary).  args: PATH
-- No request() function: with one, wrk calls into Lua for every request; without, it sends
-- one request built once (as plain `wrk URL` does). A baseline slowed by its load generator
-- flatters every ratio to it: on 2026-12-07 /healthz measured 5,283/s through request() and
-- 7,508/s with plain wrk on the same server.
dofile(string.gsub(debug.getinfo(1, "S").source:sub(2), "[^/]*$", "") .. "report.lua")

function init(args)
  wrk.path = args[1]
end
