-- KEYS[1] event stream, KEYS[2] index of all key_ids, KEYS[3] deadline index
-- (zset key_id -> next unannounced deadline), then 7 per record:
--   record, new hash index, old hash index, new owner index, old owner index,
--   new policy index, old policy index (old == new when creating).
-- ARGV[1] stream retention, ARGV[2] event JSON, then 4 per record:
--   key_id, expected revision (0: must not exist yet), record JSON,
--   next deadline ('' when none).
-- Then optionally the request mark (see mark_check.lua).
-- Returns {status} or {'OK', event id}.
local n = math.floor((#KEYS - 3) / 7)
-- @mark_check 3 + n * 7
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
-- @mark_write
return {'OK', redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])}
