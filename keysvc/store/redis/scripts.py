"""Lua scripts of `RedisStore`, each one atomic round trip.

Every key a script touches is passed in KEYS (Redis Cluster routes on them);
the lifecycle scripts only ever receive keys of the namespace's one hash tag,
the counter scripts only keys of one key_id's tag. A script checks everything
before its first write, because Redis does not roll back a script that fails
half-way.
"""

from __future__ import annotations

__all__ = ["CREATE_QUOTA", "ENSURE_META", "PUT_KEYS", "PUT_POLICY", "TAKE", "TOUCH"]

# The request mark a lifecycle script may take last: one more KEYS entry (the
# mark) and four more ARGV (mode 'new' or 'replace', mark JSON, expiry as
# epoch ms, the writer's clock). 'new' refuses the whole write when the mark
# is held and not expired by the writer's clock.
_MARK_CHECK = """
local mark, margv = nil, nil
if #KEYS > {keys} then mark, margv = KEYS[#KEYS], #ARGV - 3 end
if mark and ARGV[margv] == 'new' then
  local held = redis.call('GET', mark)
  if held and cjson.decode(held)['expires_at'] > tonumber(ARGV[margv + 3]) then
    return {{'DUPLICATE'}}
  end
end
"""
_MARK_WRITE = """
if mark then redis.call('SET', mark, ARGV[margv + 1], 'PXAT', ARGV[margv + 2]) end
"""

# KEYS[1] event stream, KEYS[2] index of all key_ids, KEYS[3] deadline index
# (zset key_id -> next unannounced deadline), then 7 per record:
#   record, new hash index, old hash index, new owner index, old owner index,
#   new policy index, old policy index (old == new when creating).
# ARGV[1] stream retention, ARGV[2] event JSON, then 4 per record:
#   key_id, expected revision (0: must not exist yet), record JSON,
#   next deadline ('' when none).
# Then optionally the request mark (see _MARK_CHECK).
# Returns {status} or {'OK', event id}.
PUT_KEYS = """
local n = math.floor((#KEYS - 3) / 7)
""" + _MARK_CHECK.format(keys="3 + n * 7") + """
for i = 0, n - 1 do
  local k, a = 4 + i * 7, 3 + i * 4
  local expected = tonumber(ARGV[a + 1])
  local current = redis.call('GET', KEYS[k])
  if expected == 0 then
    if current or redis.call('EXISTS', KEYS[k + 1]) == 1 then return {'EXISTS'} end
  else
    if not current then return {'NOT_FOUND'} end
    if cjson.decode(current)['revision'] ~= expected then return {'CONFLICT'} end
    if KEYS[k + 1] ~= KEYS[k + 2] and redis.call('EXISTS', KEYS[k + 1]) == 1 then
      return {'EXISTS'}
    end
  end
end
for i = 0, n - 1 do
  local k, a = 4 + i * 7, 3 + i * 4
  local id = ARGV[a]
  if KEYS[k + 2] ~= KEYS[k + 1] then redis.call('DEL', KEYS[k + 2]) end
  if KEYS[k + 4] ~= KEYS[k + 3] then redis.call('ZREM', KEYS[k + 4], id) end
  if KEYS[k + 6] ~= KEYS[k + 5] then redis.call('ZREM', KEYS[k + 6], id) end
  redis.call('SET', KEYS[k], ARGV[a + 2])
  -- The hash index holds the record itself: the hot-path read is one GET.
  redis.call('SET', KEYS[k + 1], ARGV[a + 2])
  redis.call('ZADD', KEYS[2], 0, id)
  redis.call('ZADD', KEYS[k + 3], 0, id)
  redis.call('ZADD', KEYS[k + 5], 0, id)
  if ARGV[a + 3] == '' then
    redis.call('ZREM', KEYS[3], id)
  else
    redis.call('ZADD', KEYS[3], ARGV[a + 3], id)
  end
end
""" + _MARK_WRITE + """
return {'OK', redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])}
"""

# KEYS[1] event stream, KEYS[2] index of policy ids, KEYS[3] current version,
# KEYS[4] hash of all versions.
# ARGV[1] retention, ARGV[2] event JSON, ARGV[3] policy_id, ARGV[4] version,
# ARGV[5] policy JSON, ARGV[6] 'create' or 'put'; then optionally the request
# mark (see _MARK_CHECK).
PUT_POLICY = """
""" + _MARK_CHECK.format(keys=4) + """
local version = tonumber(ARGV[4])
local current = redis.call('GET', KEYS[3])
if ARGV[6] == 'create' then
  if current then return {'EXISTS'} end
else
  if not current then return {'NOT_FOUND'} end
  if cjson.decode(current)['version'] ~= version - 1 then return {'CONFLICT'} end
end
redis.call('SET', KEYS[3], ARGV[5])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
""" + _MARK_WRITE + """
return {'OK', redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])}
"""

# The rules of keysvc.core.limits.plan_take, in Lua; keep the two in step.
# KEYS[1] the rate window hash {start, used}, KEYS[2] quota hash {remaining, refilled_at}.
# ARGV: cost, limit (-1: no rate limit), window s, quota ('1'/'0'),
#   refill amount (-1: no refill), refill interval s, now ('': Redis's TIME),
#   window slack ms.
# Time comes from the server (TIME) so sidecars with skewed clocks share one
# window and one refill cadence; Redis 7 replicates a script's effects, so a
# non-deterministic command is safe here (older servers are asked for it).
# The window's start lives in its hash, not its name, so KEYS need no clock.
# Returns {allowed, rate ok, used in window, quota state (1 counted, 0 none,
#   -1 missing), quota remaining, the time used}.
TAKE = """
local cost, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = tonumber(ARGV[7])
if not now then
  -- Effects replication: implicit from Redis 7 on (and the default since 5).
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local used, start = 0, 0
if limit >= 0 then
  start = math.floor(now / window) * window
  local w = redis.call('HMGET', KEYS[1], 'start', 'used')
  if tonumber(w[1]) == start then used = tonumber(w[2]) or 0 end
end
local rate_ok = limit < 0 or used + 1 <= limit
local remaining, refilled_at, dirty, missing = nil, nil, false, false
if ARGV[4] == '1' then
  local h = redis.call('HMGET', KEYS[2], 'remaining', 'refilled_at')
  remaining, refilled_at = tonumber(h[1]), tonumber(h[2])
  local amount, interval = tonumber(ARGV[5]), tonumber(ARGV[6])
  if not remaining then
    -- Lost (evicted, a failover, a half-done write): never read as unlimited.
    missing = true
  elseif amount >= 0 then
    if not refilled_at then
      refilled_at, dirty = now, true
    elseif now - refilled_at >= interval then
      remaining, dirty = amount, true
      refilled_at = refilled_at + math.floor((now - refilled_at) / interval) * interval
    end
  end
end
local allowed = rate_ok and not missing and (not remaining or remaining >= cost)
if allowed then
  if limit >= 0 then
    used = used + 1
    redis.call('HSET', KEYS[1], 'start', string.format('%d', start), 'used', used)
    redis.call('PEXPIRE', KEYS[1], math.floor((start + window - now) * 1000) + tonumber(ARGV[8]))
  end
  if remaining then remaining, dirty = remaining - cost, true end
end
if dirty then
  redis.call('HSET', KEYS[2], 'remaining', string.format('%d', remaining))
  if refilled_at then
    redis.call('HSET', KEYS[2], 'refilled_at', string.format('%.17g', refilled_at))
  end
end
local state = 0
if missing then state = -1 elseif remaining then state = 1 end
return {allowed and 1 or 0, rate_ok and 1 or 0, used, state, remaining or 0,
        string.format('%.6f', now)}
"""

# KEYS[1] quota hash; ARGV[1] remaining, ARGV[2] refill cadence start.
# Creates the counter only when absent; returns 1 when it did.
CREATE_QUOTA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'remaining', ARGV[1], 'refilled_at', ARGV[2])
return 1
"""

# KEYS[1] last-use time; ARGV[1] a time. Keeps the later of the two.
TOUCH = """
local current = tonumber(redis.call('GET', KEYS[1]))
if not current or current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""

# KEYS[1] meta hash; ARGV[1] name, ARGV[2] value. Sets it only when absent;
# returns the stored value.
ENSURE_META = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
"""
