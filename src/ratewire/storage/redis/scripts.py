"""The Lua scripts of the Redis store. Each runs atomically in Redis: with the append-only file
on, Redis logs a script's effects as one MULTI/EXEC block, so a crash keeps all of a write or
none of it.

Key layout (``S`` is the store's prefix, ``E`` its epoch; the ``S:E:*`` keys are laid out as
the Redis broker lays out its streams, see ratewire.broker.redis.broker, so that a broker on
the same server and prefix reads the store's streams instead of a copy):

- ``S:epoch``: the epoch.
- ``S:r:{id}``: one rating (hash: g, u, s, c, ca, ua, v; times in epoch ms).
- ``S:pair``: ``{game}/{user}`` -> rating id (the uniqueness of the pair).
- ``S:ids``, ``S:ids:g:{game}``, ``S:ids:u:{user}``: rating ids in sorted sets (all scores 0,
  so ordered by id, which sorts by creation time): the list pages.
- ``S:sum:{game}``: a game's summary counters (hash: n, t, h1..h5, o).
- ``S:games``: every game with a summary. ``S:priors``: the Bayesian priors that have a
  ranking; ``S:top:{mean}:{weight}``: games by minus their Bayesian mean under that prior.
- ``S:E:cursor``: the last ``seq`` (the global head; also the broker's publish cursor).
- ``S:E:heads``: game and user topic -> last offset.
- ``S:E:events``: every retained event (stream entry ``{seq}-0``); ``S:E:t:{topic}``: each
  game and user topic's retained events (entry ``{offset}-0``).
- ``S:rev``: revocations by key. ``S:audit``: the sealed audit chain (entry ``{seq}-0``),
  ``S:audit:head`` its head, ``S:audit:pending`` records written but not sealed yet.

Scripts build some keys from their arguments; that is fine on a standalone Redis, which is
what the store supports, not Redis Cluster.
"""

from __future__ import annotations

#: One rating write: check, change the rating and its indexes, the summary and the rankings,
#: number the event on its three topics and append it to their streams, queue the audit
#: record. Returns {'ok', seq, game offset, user offset}, or {'exists', id} (create),
#: {'missing'} or {'moved', version} (update/delete: the rating changed since it was read).
WRITE = """
local S, E = ARGV[23], ARGV[24]
local op, id, g, u = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local rkey = S .. ':r:' .. id
local pair = g .. '/' .. u
if op == 'create' then
  local existing = redis.call('HGET', S .. ':pair', pair)
  if existing then return {'exists', existing} end
else
  local version = redis.call('HGET', rkey, 'v')
  if not version then return {'missing'} end
  if version ~= ARGV[5] then return {'moved', version} end
end
if op == 'delete' then
  redis.call('DEL', rkey)
  redis.call('HDEL', S .. ':pair', pair)
  redis.call('ZREM', S .. ':ids', id)
  redis.call('ZREM', S .. ':ids:g:' .. g, id)
  redis.call('ZREM', S .. ':ids:u:' .. u, id)
else
  redis.call('HSET', rkey, 'g', g, 'u', u, 's', ARGV[6], 'ca', ARGV[9], 'ua', ARGV[10],
             'v', ARGV[11])
  if ARGV[7] == '1' then
    redis.call('HSET', rkey, 'c', ARGV[8])
  else
    redis.call('HDEL', rkey, 'c')
  end
  if op == 'create' then
    redis.call('HSET', S .. ':pair', pair, id)
    redis.call('ZADD', S .. ':ids', 0, id)
    redis.call('ZADD', S .. ':ids:g:' .. g, 0, id)
    redis.call('ZADD', S .. ':ids:u:' .. u, 0, id)
  end
end
local H = S .. ':' .. E
local gt, ut = 'rating.game.' .. g, 'rating.user.' .. u
local seq = redis.call('INCR', H .. ':cursor')
local go = redis.call('HINCRBY', H .. ':heads', gt, 1)
local uo = redis.call('HINCRBY', H .. ':heads', ut, 1)
local skey = S .. ':sum:' .. g
local n = redis.call('HINCRBY', skey, 'n', ARGV[12])
local t = redis.call('HINCRBY', skey, 't', ARGV[13])
for score = 1, 5 do
  if ARGV[13 + score] ~= '0' then redis.call('HINCRBY', skey, 'h' .. score, ARGV[13 + score]) end
end
redis.call('HSET', skey, 'o', go)
redis.call('SADD', S .. ':games', g)
for _, prior in ipairs(redis.call('SMEMBERS', S .. ':priors')) do
  local colon = string.find(prior, ':', 1, true)
  local mean = tonumber(string.sub(prior, 1, colon - 1))
  local weight = tonumber(string.sub(prior, colon + 1))
  if n > 0 then
    redis.call('ZADD', S .. ':top:' .. prior, -((weight * mean + t) / (weight + n)), g)
  else
    redis.call('ZREM', S .. ':top:' .. prior, g)
  end
end
local at = ARGV[21]
local payload = '{"seq":' .. seq .. ',"kind":"' .. ARGV[19] .. '","gameId":"' .. g ..
  '","userId":"' .. u .. '","gameOffset":' .. go .. ',"userOffset":' .. uo ..
  ',"data":' .. ARGV[20] .. ',"at":' .. at .. '}'
redis.call('XADD', H .. ':events', seq .. '-0', 'e', payload, 'a', at, 'gt', gt, 'ut', ut,
           'go', go, 'uo', uo)
redis.call('XADD', H .. ':t:' .. gt, go .. '-0', 'e', payload, 'a', at)
redis.call('XADD', H .. ':t:' .. ut, uo .. '-0', 'e', payload, 'a', at)
if ARGV[22] ~= '' then
  redis.call('RPUSH', S .. ':audit:pending', seq .. '|' .. ARGV[22])
end
return {'ok', seq, go, uo}
"""

#: Ratings newest first: ids below ARGV[2] (or from the newest) in the sorted set KEYS[1],
#: at most ARGV[1], each as {id, fields}. O(log N + limit).
LIST = """
local upper = ARGV[2] == '' and '+' or ('(' .. ARGV[2])
local ids = redis.call('ZRANGE', KEYS[1], upper, '-', 'BYLEX', 'REV', 'LIMIT', 0, ARGV[1])
local out = {}
for i, id in ipairs(ids) do
  out[i] = {id, redis.call('HGETALL', ARGV[3] .. ':r:' .. id)}
end
return out
"""

#: Build the ranking of a prior (ARGV[1] = 'mean:weight') from every game's counters and
#: register it, so that writes keep it current. O(games), once per prior.
RANK = """
local S, prior = ARGV[2], ARGV[1]
local colon = string.find(prior, ':', 1, true)
local mean = tonumber(string.sub(prior, 1, colon - 1))
local weight = tonumber(string.sub(prior, colon + 1))
local key = S .. ':top:' .. prior
redis.call('DEL', key)
for _, g in ipairs(redis.call('SMEMBERS', S .. ':games')) do
  local counters = redis.call('HMGET', S .. ':sum:' .. g, 'n', 't')
  local n, t = tonumber(counters[1] or '0'), tonumber(counters[2] or '0')
  if n > 0 then redis.call('ZADD', key, -((weight * mean + t) / (weight + n)), g) end
end
redis.call('SADD', S .. ':priors', prior)
return redis.call('ZCARD', key)
"""

#: The best ARGV[2] games of ranking KEYS[1] with at least ARGV[3] ratings, with their
#: counters. O(log G + games looked at): games below min_count are skipped one by one.
TOP = """
local S, limit, min_count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out, start = {}, 0
while #out < limit do
  local games = redis.call('ZRANGE', KEYS[1], start, start + 99)
  if #games == 0 then break end
  for _, g in ipairs(games) do
    local counters = redis.call('HMGET', S .. ':sum:' .. g, 'n', 't', 'h1', 'h2', 'h3', 'h4',
                                'h5', 'o')
    if tonumber(counters[1] or '0') >= min_count then
      out[#out + 1] = {g, counters}
      if #out == limit then break end
    end
  end
  start = start + 100
end
return out
"""

#: Drop retained events, oldest first, from ARGV[3] on (at most ARGV[4] looked at): those
#: older than ARGV[2] (epoch ms), and those outside the last ARGV[1] of every topic they are
#: on. Stops at the first event it keeps for being among the newest of rating.global and
#: young enough: everything after it is kept too. Returns {removed, next start, done}.
PRUNE = """
local H, keep, cutoff = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local head = tonumber(redis.call('GET', H .. ':cursor') or '0')
local entries = redis.call('XRANGE', H .. ':events', ARGV[3], '+', 'COUNT', ARGV[4])
local removed, last = 0, nil
for _, entry in ipairs(entries) do
  local id, fields = entry[1], entry[2]
  local f = {}
  for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
  local seq, at = tonumber(string.match(id, '^(%d+)')), tonumber(f['a'])
  if seq > head - keep and at >= cutoff then return {removed, id, 1} end
  local drop = at < cutoff
  if not drop then
    local gh = tonumber(redis.call('HGET', H .. ':heads', f['gt']) or '0')
    local uh = tonumber(redis.call('HGET', H .. ':heads', f['ut']) or '0')
    drop = tonumber(f['go']) <= gh - keep and tonumber(f['uo']) <= uh - keep
  end
  if drop then
    redis.call('XDEL', H .. ':events', id)
    redis.call('XDEL', H .. ':t:' .. f['gt'], f['go'] .. '-0')
    redis.call('XDEL', H .. ':t:' .. f['ut'], f['uo'] .. '-0')
    removed = removed + 1
  end
  last = id
end
if #entries < tonumber(ARGV[4]) then return {removed, last or ARGV[3], 1} end
return {removed, last, 0}
"""

#: The audit chain's head and the first ARGV[1] records waiting to be sealed, read at one
#: instant: {head seq, head mac, {records...}}.
PENDING = """
local head = redis.call('HMGET', KEYS[1] .. ':audit:head', 'seq', 'mac')
local items = redis.call('LRANGE', KEYS[1] .. ':audit:pending', 0, tonumber(ARGV[1]) - 1)
return {head[1] or '0', head[2] or '', items}
"""

#: Append sealed audit entries if the chain's head is still the one they were sealed after
#: (ARGV[1] seq, ARGV[2] mac) and the pending queue still starts with what was sealed
#: (ARGV[3] items, the first being ARGV[4]). ARGV[5..]: per entry seq, mac, then the fields.
#: Returns 1, or 0 when another process sealed first (read again and retry).
SEAL = """
local S = KEYS[1]
local head = redis.call('HMGET', S .. ':audit:head', 'seq', 'mac')
if (head[1] or '0') ~= ARGV[1] or (head[2] or '') ~= ARGV[2] then return 0 end
local count = tonumber(ARGV[3])
if count > 0 and redis.call('LINDEX', S .. ':audit:pending', 0) ~= ARGV[4] then return 0 end
local i, seq, mac = 5, ARGV[1], ARGV[2]
while i <= #ARGV do
  seq, mac = ARGV[i], ARGV[i + 1]
  redis.call('XADD', S .. ':audit', seq .. '-0', 'mac', mac, 'at', ARGV[i + 2],
             'act', ARGV[i + 3], 'who', ARGV[i + 4], 'sc', ARGV[i + 5], 'ip', ARGV[i + 6],
             'rq', ARGV[i + 7], 'rid', ARGV[i + 8], 'd', ARGV[i + 9])
  i = i + 10
end
redis.call('HSET', S .. ':audit:head', 'seq', seq, 'mac', mac)
if count > 0 then redis.call('LTRIM', S .. ':audit:pending', count, -1) end
return 1
"""

#: After sealing a checkpoint entry (as SEAL does), drop the entries up to ARGV[..] and move
#: the checkpoint: KEYS[1] prefix; ARGV[1] expected head seq, ARGV[2] its mac, ARGV[3]
#: through seq, ARGV[4] through mac, ARGV[5..14] the checkpoint entry.
PRUNE_AUDIT = """
local S = KEYS[1]
local head = redis.call('HMGET', S .. ':audit:head', 'seq', 'mac')
if (head[1] or '0') ~= ARGV[1] or (head[2] or '') ~= ARGV[2] then return 0 end
redis.call('XADD', S .. ':audit', ARGV[5] .. '-0', 'mac', ARGV[6], 'at', ARGV[7],
           'act', ARGV[8], 'who', ARGV[9], 'sc', ARGV[10], 'ip', ARGV[11], 'rq', ARGV[12],
           'rid', ARGV[13], 'd', ARGV[14])
redis.call('XTRIM', S .. ':audit', 'MINID', (tonumber(ARGV[3]) + 1) .. '-0')
redis.call('HSET', S .. ':audit:head', 'seq', ARGV[5], 'mac', ARGV[6], 'pseq', ARGV[3],
           'pmac', ARGV[4])
return 1
"""
