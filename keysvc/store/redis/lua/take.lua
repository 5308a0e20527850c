-- The rules of keysvc.core.limits.plan_take, in Lua; keep the two in step.
-- KEYS[1] the rate window hash {start, used}, KEYS[2] quota hash {remaining, refilled_at}.
-- ARGV: cost, limit (-1: no rate limit), window s, quota ('1'/'0'),
--   refill amount (-1: no refill), refill interval s, now ('': Redis's TIME),
--   window slack ms.
-- Time comes from the server (TIME) so sidecars with skewed clocks share one
-- window and one refill cadence; Redis 7 replicates a script's effects, so a
-- non-deterministic command is safe here (older servers are asked for it).
-- The window's start lives in its hash, not its name, so KEYS need no clock.
-- Returns {allowed, rate ok, used in window, quota state (1 counted, 0 none,
--   -1 missing), quota remaining, the time used}.
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
