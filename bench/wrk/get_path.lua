-- GET one fixed path (/healthz, /ratings/{id}, a summary).  args: PATH
dofile(string.gsub(debug.getinfo(1, "S").source:sub(2), "[^/]*$", "") .. "report.lua")

function init(args)
  path = args[1]
end

function request()
  return wrk.format("GET", path)
end
